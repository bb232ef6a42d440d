"""From a queued query to an answer and its report: a snapshot of the scene memory, then LLaVA-3D. ROS-free.

    build_engine(config)    what the node's configure transition builds from its parameters: the model,
                            the scene front end, the pipeline, the query worker (warmed up), or one
                            ConfigureError saying why not
    AnswerPipeline          admission checks against the scene memory, then one query's answer and report

With a latency budget the pruning is chosen per query by the budget controller (budget.py): the
least pruning predicted to finish in the time the budget has left once the query leaves the queue
and the scene snapshot is taken. Every answered query, budgeted or not, updates the cost model.

With the scene prefix cache (scene_cache.py) a question about a scene whose prefix is cached (and not
older than max_scene_age_ms) prefills only its own tokens against it: the dense answer for a fraction
of the work. A miss that runs densely leaves its prefix behind for the next question; while no question
waits, the prefix of a changed scene is prefilled in the background (refresh). Questions waiting
together are answered together on one prefix (answer_batch).
"""

import gc
import time
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import torch

from . import parameters
from .budget import (
    BudgetController,
    CostModel,
    Observation,
    budget_schedule,
    extend_features,
    planned_tokens_per_layer,
    prefill_features,
)
from .model.device import now
from .model.gating import DecodeRow
from .model.gating_policy import GatingPolicy, parse_gating
from .model.llava3d import parse_locations
from .model.loader import ModelLoadError
from .model.profiles import frontier_gatings, gating_under, is_auto, load_profile, uncalibrated_note
from .model.scene_qa import SceneAnswerer
from .perception.frontend import FrontEndConfig, SceneFrontEnd
from .perception.keyframes import KeyframePolicy
from .queries import NOT_ACCEPTING, QueryJob, QueryLimits, QueryOutcome, QueryReport, QueryWorker, resolve_request
from .scene_cache import PrefixCacheConfig, ScenePrefixCache
from .share import default_model_dir


@dataclass(frozen=True)
class Admission:
    """What the scene memory must hold before a question is answered (node parameters)."""

    require_scene: bool = True
    max_point_distance_m: float = 1.0
    fixed_frame: str = 'map'


class AnswerPipeline:
    def __init__(
        self,
        answerer: SceneAnswerer,
        frontend: SceneFrontEnd,
        policy: GatingPolicy,
        temperature: float = 0.0,
        top_p: float = 1.0,
        budget: Optional[BudgetController] = None,
        admission: Admission = Admission(),
        prefix_cache: Optional[PrefixCacheConfig] = None,
    ):
        """prefix_cache: None (or enabled False) answers every question from scratch."""
        self.answerer = answerer
        self.frontend = frontend
        self.policy = policy
        self.temperature = temperature
        self.top_p = top_p
        self.budget = budget
        self.admission = admission
        self.last_keep_ratio: Optional[float] = None
        self.cache = ScenePrefixCache(answerer, frontend, policy, prefix_cache or PrefixCacheConfig(enabled=False))

    def admission_problem(self, question: str) -> Optional[str]:
        """Why the scene memory cannot answer this question yet, or None."""
        rules = self.admission
        if len(self.frontend.memory) == 0:
            if rules.require_scene:
                return (
                    'no usable view of the scene yet (0 views in memory): check the camera topics, '
                    'camera_info and TF in /diagnostics (views.*, problems.*, tf_frames)'
                )
            return None
        _, points = parse_locations(question)
        if points:
            centres = self.frontend.scene().tokens.centres.numpy()
            for point in points:
                distance = float(np.linalg.norm(centres - np.array(point), axis=1).min()) if len(centres) else np.inf
                if distance > rules.max_point_distance_m:
                    return (
                        f'the point {list(point)} is {distance:.1f} m from anything in the scene memory '
                        f'(max_point_distance_m={rules.max_point_distance_m}); is it in '
                        f'{rules.fixed_frame} coordinates?'
                    )
        return None

    def answer(self, job: QueryJob) -> QueryOutcome:
        start = time.perf_counter()
        revision, scene = self.cache.snapshot()  # a consistent snapshot: sensors keep writing meanwhile
        scene_ms = (time.perf_counter() - start) * 1e3
        cached = self.cache.usable(scene)
        policy, decision, label = self.policy, None, None
        if job.latency_budget_ms > 0 and self.budget is not None:
            decided_at = time.monotonic()
            spent_ms = (decided_at - job.accepted_at) * 1e3  # queue + scene snapshot
            decision = self.budget.decide(
                job.latency_budget_ms - spent_ms,
                self.answerer.text_tokens(job.question),
                scene.num_tokens,
                job.max_new_tokens,
                cached_tokens=cached[0].num_tokens if cached else None,
                question_tokens=self.answerer.question_inputs(job.question)[0].shape[1] if cached else 0,
            )
            policy = self.answerer.policy(decision.policy_text)
            self.last_keep_ratio = decision.keep_ratio
            what = 'cached scene prefix' if decision.reuse_prefix else f'keep {decision.keep_ratio:.2f}'
            label = (
                f'budget {job.latency_budget_ms:.0f} ms: {what}, predicted {spent_ms + decision.predicted_ms:.0f} ms'
                + ('' if decision.fits else ' (floor; the budget is predicted to be missed)')
            )
        kwargs = dict(
            on_token=job.on_token,
            should_stop=job.should_stop,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=job.seq,
        )
        age_ms = 0.0
        if cached is not None and (decision is None or decision.reuse_prefix):  # a hit
            prefix, age_ms = cached
            scene = prefix.scene
            self.cache.hits += 1
            result = self.answerer.answer_on_prefix(job.question, prefix, job.max_new_tokens, **kwargs)
        elif self.cache.enabled and scene.num_tokens and str(policy) == str(self.cache.policy):
            # a miss that runs the cached policy anyway: prefill the prefix, then the question on it
            self.cache.misses += 1
            prefix = self.cache.build(revision, scene)
            result = self.answerer.answer_on_prefix(job.question, prefix, job.max_new_tokens, built_now=True, **kwargs)
        else:
            self.cache.misses += self.cache.enabled
            result = self.answerer.answer(job.question, scene, policy, job.max_new_tokens, **kwargs)
        outcome = self._outcome(result, scene, scene_ms, age_ms, label)
        self._learn(result, decision, policy, (time.monotonic() - decided_at) * 1e3 if decision else 0.0)
        return outcome

    def _outcome(self, result, scene, scene_ms: float, age_ms: float, label: Optional[str] = None) -> QueryOutcome:
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
            flops_reduction=1.0 - result.prefill_flops / result.prefill_flops_dense
            if result.prefill_flops_dense
            else 0.0,
            gating=f'{label}, {result.gating}' if label else result.gating,
            scene_stamp_ns=scene.newest_stamp_ns,
            prefix_reused=result.prefix_reused,
            scene_age_ms=age_ms,
        )
        if result.stop_reason == 'cancelled':
            return QueryOutcome(False, answer=result.text, error='cancelled', cancelled=True, report=report)
        return QueryOutcome(True, answer=result.text, report=report)

    def answer_batch(self, jobs, finish) -> None:
        """Answer queries that waited together (QueryWorker's answer_batch): on the cached prefix of the
        current scene, their questions prefilled as one batch and decoded together. Without one, the first
        question is answered alone (by its own budget; a dense answer leaves the prefix behind) and the rest
        are batched on what it left. Whatever is not finished here is answered one at a time."""
        start = time.perf_counter()
        _, scene = self.cache.snapshot()
        if not self.cache.enabled or scene.num_tokens == 0:
            return
        if self.cache.usable(scene) is None:
            first, jobs = jobs[0], jobs[1:]
            finish(first, self.answer(first))
            start = time.perf_counter()
            _, scene = self.cache.snapshot()
        cached = self.cache.usable(scene)
        scene_ms = (time.perf_counter() - start) * 1e3
        if cached is None or len(jobs) < 2:
            return
        prefix, age_ms = cached
        rows = [DecodeRow(job.max_new_tokens, self.temperature, job.seq, should_stop=job.should_stop) for job in jobs]
        label = f'batch of {len(jobs)}'

        def on_answer(b: int, result) -> None:
            self.cache.hits += 1
            if self.budget is not None and result.stop_reason != 'cancelled':
                self.budget.cost.add_answer_length(len(result.token_ids), result.stop_reason == 'max_new_tokens')
            finish(jobs[b], self._outcome(result, prefix.scene, scene_ms, age_ms, label))

        self.answerer.answer_batch(
            [job.question for job in jobs], prefix, rows, on_answer, self.top_p, [job.on_token for job in jobs]
        )

    def refresh(self, next_waiting) -> None:
        """While the worker is idle (QueryWorker's on_idle): prefill the prefix of a scene that changed
        since the cached one, at most every prefix_refresh_min_interval_ms. A question arriving meanwhile
        does not wait for it when it need not: the refresh is abandoned between layers when the old prefix
        may still answer that question (max_scene_age_ms), or when the cost model predicts that the question
        answered from scratch (by its budget, or the node's gating) ends sooner than the rest of the refresh
        and an answer on its prefix; otherwise it finishes and the question is answered on it."""
        cache = self.cache
        config = cache.config
        if not (cache.enabled and config.refresh):
            return
        if (time.monotonic() - cache.last_refresh) * 1e3 < config.refresh_min_interval_ms:
            return
        revision, scene = cache.snapshot()
        if scene.num_tokens == 0 or cache.is_current(scene) or next_waiting() is not None:
            return
        cache.last_refresh = time.monotonic()
        L = self.answerer.num_layers
        cost = self.budget.cost if self.budget is not None else None
        prefix_tokens = self.answerer.prompt_head_tokens + scene.num_tokens  # before any selection
        whole_ms = cost.prefill_ms([prefix_tokens] * L) if cost is not None else 0.0
        plans = {}  # job seq -> (ms to answer it on this prefix once built, ms to answer it from scratch)

        def plan(job: QueryJob):
            if job.seq not in plans:
                question = self.answerer.question_inputs(job.question)[0].shape[1]
                hit_ms = self.budget.predict_hit(question, prefix_tokens, job.max_new_tokens).total_ms
                plans[job.seq] = (hit_ms, self._predict_recompute_ms(job, scene, whole_ms, hit_ms))
            return plans[job.seq]

        def abandon(layers_done: int) -> bool:
            job = next_waiting()
            if not isinstance(job, QueryJob):
                return job is not None  # a call or the stop: never held up by a refresh
            if cache.usable(self.frontend.scene()) is not None:
                return True  # the old prefix answers it now
            if cost is None:
                return False
            hit_ms, recompute_ms = plan(job)
            return whole_ms * (L - layers_done) / L + hit_ms > recompute_ms  # abandoning is sooner

        if cache.build(revision, scene, abandon) is not None:
            cache.refreshes += 1
        else:
            cache.abandoned += 1

    def _predict_recompute_ms(self, job: QueryJob, scene, prefix_ms: float, hit_ms: float) -> float:
        """The cost model's time for answering this query from scratch instead (by its budget's decision,
        or by the node's gating), the views' features already computed by the refresh. When that runs
        the cached policy it builds the same prefix: prefix_ms + hit_ms."""
        text, spatial = self.answerer.text_tokens(job.question), scene.num_tokens
        L, policy = self.answerer.num_layers, self.policy
        if job.latency_budget_ms > 0:
            spent_ms = (time.monotonic() - job.accepted_at) * 1e3
            decision = self.budget.decide(job.latency_budget_ms - spent_ms, text, spatial, job.max_new_tokens)
            policy = self.answerer.policy(decision.policy_text)
        if str(policy) == str(self.cache.policy):
            return prefix_ms + hit_ms
        counts = planned_tokens_per_layer(policy, L, text, spatial) or [text + spatial] * L
        return self.budget.predict_counts(counts, job.max_new_tokens, policy.pre and policy.pre.method).model_ms

    def _learn(self, result, decision, policy: GatingPolicy, elapsed_ms: float) -> None:
        """Every answer refines the cost model; a budgeted one also scores the prediction (elapsed_ms: from
        its decision to its answer being ready)."""
        if self.budget is None or not result.token_ids:
            return
        cost = self.budget.cost
        generated = len(result.token_ids)
        if result.prefix_reused:  # the question's tokens against the cached prefix
            m = result.text_tokens + result.spatial_tokens_kept - result.prefix_tokens
            features, prompt = extend_features(cost.shape, m, result.prefix_tokens), result.prefix_tokens + m
        else:
            features, prompt = prefill_features(cost.shape, result.tokens_per_layer), np.mean(result.tokens_per_layer)
        cost.add(
            Observation(features, result.prefill_ms, max(generated - 1, 0), prompt + generated / 2, result.decode_ms)
        )
        if not result.prefix_reused:  # a hit runs neither vision nor a selection
            cost.add_vision_time(result.vision_ms)
            if policy.pre is not None:
                cost.add_selection_time(policy.pre.method, result.selection_ms)
        if result.stop_reason != 'cancelled':
            cost.add_answer_length(generated, result.stop_reason == 'max_new_tokens')
        if decision is not None:
            prefill_ms = result.prefill_ms + result.selection_ms
            cost.record_error(decision.prediction, result.vision_ms, prefill_ms, result.decode_ms, elapsed_ms)


def warmup_sweep(
    answerer, cost: CostModel, max_spatial: int, text_tokens: int = 100, new_tokens: int = 4, points: int = 4
) -> None:
    """Measure the loaded model on this device: dense and pruned prefills of synthetic prompts of a few
    lengths up to max_spatial spatial tokens, a few decode steps each, and the vision tower on 1 and 2
    views; fill `cost` from what was measured (configure time, so the first query is predicted too)."""
    model, gated = answerer.model, answerer.gated
    L = cost.shape.num_layers
    hidden = model.language_model.config.hidden_size
    generator = torch.Generator().manual_seed(0)
    lengths = sorted({max(1, int(max_spatial * (i + 1) / points)) for i in range(points)})
    with torch.inference_mode():
        for spatial in lengths:
            embeds = (torch.randn(1, text_tokens + spatial, hidden, generator=generator) * 0.02).to(
                device=model.device, dtype=model.dtype
            )
            mask = torch.zeros(text_tokens + spatial, dtype=torch.bool, device=model.device)
            mask[text_tokens // 2 : text_tokens // 2 + spatial] = True
            for ratio in (1.0, 0.5, 0.25, 0.1):
                policy = parse_gating('none' if ratio == 1.0 else budget_schedule(L, ratio), L)
                ids, pre, decode_ms = gated.generate(embeds, mask, policy, new_tokens)
                if ratio == 1.0:
                    dense_caches = pre.caches
                cost.add(
                    Observation(
                        prefill_features(cost.shape, pre.tokens_per_layer),
                        pre.prefill_ms,
                        len(ids) - 1,
                        float(np.mean(pre.tokens_per_layer)) + len(ids) / 2,
                        decode_ms,
                    )
                )
            # the cache-hit path: a question's tokens against the dense prompt's cache
            question = embeds[:, : text_tokens // 4]  # [1, m, d]
            cached = dense_caches[0].n
            start = now(model.device)
            gated.extend(question, dense_caches)
            extend_ms = (now(model.device) - start) * 1e3
            cost.add(Observation(extend_features(cost.shape, question.shape[1], cached), extend_ms, 0, 0.0, 0.0))
        # the typical query sees one new keyframe: the vision tower on one view
        images = torch.zeros(1, model.image_size, model.image_size, 3, dtype=torch.uint8)
        start = now(model.device)
        model.image_features(images)
        cost.add_vision_time((now(model.device) - start) * 1e3)


class ConfigureError(Exception):
    """The node cannot be configured with these parameters; the message says why and what to change."""


@dataclass
class QueryEngine:
    """What configure builds: answers queries on its worker thread until released."""

    pipeline: AnswerPipeline
    worker: QueryWorker
    model_path: str  # the checkpoint loaded (model_path, or the shipped model)
    gating: str  # the policy run when a query has no budget, canonical text
    limits: QueryLimits
    gating_note: str = ''  # why `gating: auto` runs uncalibrated (profiles.uncalibrated_note), logged at configure

    def submit(
        self,
        question: str,
        latency_budget_ms: float,
        max_new_tokens: int,
        on_done,
        on_token=None,
        should_stop=lambda: False,
    ) -> str:
        """Check a request (its limits, the lifecycle state, the scene memory) and queue it; '' when queued,
        otherwise why it was refused (on_done is then not called)."""
        error, text, budget, max_new = resolve_request(question, latency_budget_ms, max_new_tokens, self.limits)
        if error is None and not self.worker.is_open:
            error = NOT_ACCEPTING
        if error is None:
            error = self.pipeline.admission_problem(text)
        if error is None:
            _, error = self.worker.submit(text, budget, max_new, on_done, on_token, should_stop)
        return error or ''

    @property
    def answerer(self) -> SceneAnswerer:
        return self.pipeline.answerer

    @property
    def frontend(self) -> SceneFrontEnd:
        return self.pipeline.frontend

    def release(self) -> None:
        """Stop the worker (after the queued queries) and free the model, and GPU memory."""
        self.worker.stop()
        on_cuda = self.answerer.device.type == 'cuda'
        self.pipeline.cache.clear()
        self.pipeline = None
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()


def build_engine(config: Dict[str, object]) -> QueryEngine:
    """Check the parameters, load the model, build the front end, pipeline and worker, and warm them up.

    config: every parameter in parameters.PARAMETERS by name. Raises ConfigureError.
    """
    problems = [p for p in (parameters.BY_NAME[n].validate(v) for n, v in config.items()) if p]
    if problems:
        raise ConfigureError('invalid parameters: ' + '; '.join(problems))
    model_path = config['model_path'] or str(default_model_dir())
    try:
        answerer = SceneAnswerer.load(
            model_path,
            config['vision_tower_path'],
            device=config['device'],
            dtype=config['dtype'],
            allow_pickle=config['allow_pickle'],
        )
    except (ModelLoadError, ValueError, OSError) as error:
        raise ConfigureError(f'the model did not load: {error}') from None
    auto = is_auto(config['gating'])
    profile = load_profile(model_path) if auto else None  # read once: the policy, the frontier and the note
    try:
        policy = answerer.policy(gating_under(config['gating'], profile) if auto else config['gating'])
    except ValueError as error:
        raise ConfigureError(str(error)) from None
    model = answerer.model
    frontend = SceneFrontEnd(
        FrontEndConfig.for_model(
            model,
            patch_xyz=model.patch_xyz if config['patch_xyz'] == 'auto' else config['patch_xyz'],
            voxel_size=config['voxel_size'],
            max_spatial_tokens=config['max_spatial_tokens'],
            keyframes=KeyframePolicy(
                max_views=config['max_views'],
                min_translation_m=config['keyframe_min_translation_m'],
                min_rotation_deg=config['keyframe_min_rotation_deg'],
                max_interval_s=config['keyframe_max_interval_s'],
            ),
        )
    )
    cost = CostModel(answerer.gated.shape)
    pipeline = AnswerPipeline(
        answerer,
        frontend,
        policy,
        config['temperature'],
        config['top_p'],
        BudgetController(
            cost,
            config['budget_min_keep_ratio'],
            policy.raters,
            frontier_gatings(profile),  # with gating auto, budgets pick among the calibrated frontier's policies
        ),
        Admission(config['require_scene'], config['max_point_distance_m'], config['fixed_frame']),
        PrefixCacheConfig.from_parameters(config, policy),
    )
    worker = QueryWorker(
        pipeline.answer,
        capacity=config['queue_size'],
        answer_batch=pipeline.answer_batch,
        max_batch=config['max_batch_size'],
        on_idle=lambda: pipeline.refresh(worker.next_waiting),
    )
    note = uncalibrated_note(model_path) if auto and profile is None else ''
    engine = QueryEngine(pipeline, worker, model_path, str(policy), QueryLimits.from_parameters(config), note)
    if config['warmup']:
        frontend.warmup()

        def warm_up() -> None:
            answerer.warmup(frontend.scene())
            warmup_sweep(answerer, cost, config['max_spatial_tokens'])

        try:
            engine.worker.call(warm_up)  # on the thread that will answer, so the timings are its own
        except Exception as error:  # e.g. out of GPU memory on the first real forward
            engine.release()
            raise ConfigureError(f'the model did not run: {type(error).__name__}: {error}') from None
    return engine
