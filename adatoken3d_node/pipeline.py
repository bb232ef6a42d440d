"""From a queued query to an answer and its report: a snapshot of the scene memory, then LLaVA-3D. ROS-free."""
import time

from .model.gating import GatingPolicy
from .model.scene_qa import SceneAnswerer
from .perception.frontend import SceneFrontEnd
from .queries import QueryJob, QueryOutcome, QueryReport


class AnswerPipeline:
    def __init__(self, answerer: SceneAnswerer, frontend: SceneFrontEnd, policy: GatingPolicy,
                 temperature: float = 0.0, top_p: float = 1.0):
        self.answerer = answerer
        self.frontend = frontend
        self.policy = policy
        self.temperature = temperature
        self.top_p = top_p

    def answer(self, job: QueryJob) -> QueryOutcome:
        start = time.perf_counter()
        scene = self.frontend.scene()   # a consistent snapshot: sensors keep writing meanwhile
        scene_ms = (time.perf_counter() - start) * 1e3
        result = self.answerer.answer(job.question, scene, self.policy, job.max_new_tokens,
                                      on_token=job.on_token, should_stop=job.should_stop,
                                      temperature=self.temperature, top_p=self.top_p, seed=job.seq)
        report = QueryReport(
            scene_ms=scene_ms,
            vision_ms=result.vision_ms,
            prefill_ms=result.prefill_ms,
            decode_ms=result.decode_ms,
            num_views=scene.num_views,
            spatial_tokens=result.spatial_tokens,
            spatial_tokens_kept=result.spatial_tokens_kept,
            text_tokens=result.text_tokens,
            generated_tokens=len(result.token_ids),
            prefill_flops_dense=result.prefill_flops_dense,
            prefill_flops=result.prefill_flops,
            flops_reduction=1.0 - result.prefill_flops / result.prefill_flops_dense if result.prefill_flops_dense else 0.0,
            gating=result.gating,
            scene_stamp_ns=scene.newest_stamp_ns,
        )
        if result.stop_reason == 'cancelled':
            return QueryOutcome(False, answer=result.text, error='cancelled', cancelled=True, report=report)
        return QueryOutcome(True, answer=result.text, report=report)
