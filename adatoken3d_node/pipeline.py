"""From a queued query to an answer and its report. ROS-free.

This version has no scene memory yet: the language model answers from the
question alone, so the scene/vision times and spatial token counts are truly
zero and the prefill is dense (gating `none`).
"""
from .model.engine import TextEngine
from .queries import QueryJob, QueryOutcome, QueryReport


class AnswerPipeline:
    def __init__(self, engine: TextEngine, gating: str = 'none'):
        if gating != 'none':
            raise ValueError(f'gating {gating!r} is not implemented in this version (only none)')
        self.engine = engine
        self.gating = gating

    def answer(self, job: QueryJob) -> QueryOutcome:
        result = self.engine.generate(job.question, job.max_new_tokens,
                                      on_token=job.on_token, should_stop=job.should_stop)
        report = QueryReport(
            prefill_ms=result.prefill_ms,
            decode_ms=result.decode_ms,
            text_tokens=result.text_tokens,
            generated_tokens=result.generated_tokens,
            prefill_flops_dense=result.prefill_flops_dense,
            prefill_flops=result.prefill_flops,
            flops_reduction=1.0 - result.prefill_flops / result.prefill_flops_dense,
            gating=self.gating,
        )
        if result.stop_reason == 'cancelled':
            return QueryOutcome(False, answer=result.text, error='cancelled', cancelled=True, report=report)
        return QueryOutcome(True, answer=result.text, report=report)
