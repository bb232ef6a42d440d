"""From a queued query to an answer and its report: a snapshot of the scene memory, then LLaVA-3D. ROS-free.

With a latency budget the pruning is chosen per query by the budget controller (budget.py): the
least pruning predicted to finish in the time the budget has left once the query leaves the queue
and the scene snapshot is taken. Every answered query, budgeted or not, updates the cost model.
"""
import time
from typing import Optional

import numpy as np

from .budget import BudgetController, Observation, prefill_features
from .model.gating import GatingPolicy
from .model.scene_qa import SceneAnswerer
from .perception.frontend import SceneFrontEnd
from .queries import QueryJob, QueryOutcome, QueryReport


class AnswerPipeline:
    def __init__(self, answerer: SceneAnswerer, frontend: SceneFrontEnd, policy: GatingPolicy,
                 temperature: float = 0.0, top_p: float = 1.0, budget: Optional[BudgetController] = None):
        self.answerer = answerer
        self.frontend = frontend
        self.policy = policy
        self.temperature = temperature
        self.top_p = top_p
        self.budget = budget
        self.last_keep_ratio: Optional[float] = None

    def answer(self, job: QueryJob) -> QueryOutcome:
        start = time.perf_counter()
        scene = self.frontend.scene()   # a consistent snapshot: sensors keep writing meanwhile
        scene_ms = (time.perf_counter() - start) * 1e3
        policy, decision, label = self.policy, None, None
        if job.latency_budget_ms > 0 and self.budget is not None:
            spent_ms = (time.monotonic() - job.accepted_at) * 1e3          # queue + scene snapshot
            decision = self.budget.decide(job.latency_budget_ms - spent_ms, self.answerer.text_tokens(job.question),
                                          scene.num_tokens, job.max_new_tokens)
            policy = self.answerer.policy(decision.policy_text)
            self.last_keep_ratio = decision.keep_ratio
            label = (f'budget {job.latency_budget_ms:.0f} ms: keep {decision.keep_ratio:.2f}, predicted '
                     f'{spent_ms + decision.predicted_ms:.0f} ms'
                     + ('' if decision.fits else ' (floor; the budget is predicted to be missed)'))
        result = self.answerer.answer(job.question, scene, policy, job.max_new_tokens,
                                      on_token=job.on_token, should_stop=job.should_stop,
                                      temperature=self.temperature, top_p=self.top_p, seed=job.seq)
        self._learn(result, decision)
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
            gating=f'{label}, {result.gating}' if label else result.gating,
            scene_stamp_ns=scene.newest_stamp_ns,
        )
        if result.stop_reason == 'cancelled':
            return QueryOutcome(False, answer=result.text, error='cancelled', cancelled=True, report=report)
        return QueryOutcome(True, answer=result.text, report=report)

    def _learn(self, result, decision) -> None:
        """Every answer refines the cost model; a budgeted one also scores the prediction."""
        if self.budget is None or not result.tokens_per_layer:
            return
        cost = self.budget.cost
        generated = len(result.token_ids)
        cost.add(Observation(prefill_features(cost.shape, result.tokens_per_layer), result.prefill_ms,
                             max(generated - 1, 0), float(np.mean(result.tokens_per_layer)) + generated / 2,
                             result.decode_ms))
        cost.add_vision_time(result.vision_ms)
        if decision is not None:
            cost.record_error(decision.predicted_model_ms, result.prefill_ms + result.decode_ms)
