"""LLaVA-3D-7B on a CUDA GPU: every pruning policy's time to first token, prefill, decode, peak GPU memory
and end-to-end time, and how often a latency budget is met. ROS-free.

    .venv/bin/python -m benchmarks.bench_gpu            (make bench-gpu; make bench runs it where CUDA is
                                                         available; a few minutes on an H100, estimated)

What runs is the node's own answer path (SceneAnswerer, SceneFrontEnd, AnswerPipeline, BudgetController),
on the model class the node loads (llava3d.Llava3D), at LLaVA-3D-7B's shape:
  - LLaMA 32 layers x 4096 (32 heads, MLP 11008, vocab 32000) and CLIP ViT-L/14-336 (24 layers x 1024,
    336 px, 14 px patches), 2-layer MLP projector to 4096; random weights (seeded), created in bfloat16
    directly in GPU memory: no checkpoint is written or read and nothing is downloaded. Answers are noise;
    times and memory are the 7B model's. EOS is ignored, so every answer is exactly 32 tokens long;
  - a synthetic room seen from 20 posed RGB-D views through the node's front end, pooled into 5 cm
    voxels and capped at max_spatial_tokens (2560), so the prompt has 2560 spatial tokens and CLIP-L
    runs on 20 views;
  - per policy (dense; the AdaToken-3D schedule budget_schedule(32, r) for r = 0.5, 0.25, 0.1; the
    layer-0 selection fastv:0:0.08[near=0.5]~question; kcentre:0.25[merge]; a scene prefix-cache hit),
    medians of --repeats answers after one warm-up: time to first token (vision + selection + prefill;
    the views' CLIP features cached, as for a scene the node has seen, and ttft_new_scene_ms with CLIP
    run on all 20 views), prefill, decode per token, end to end (wall clock of the answer), peak GPU
    memory (weights included) and the exact prefill FLOPs;
  - the deadline hit rate: the node's pipeline with its budget controller and cost model (fitted by
    warmup_sweep, as at configure; no frontier, since no calibrated profile exists for random weights),
    --queries budgeted queries of 8-token answers at each of 0.3, 0.5 and 0.8 x the measured dense
    end-to-end time of such a query, interleaved; per level the share meeting the deadline (of all, and
    of those whose floor was predicted to fit), p50/p95 latency, the mean keep ratio and how many the
    controller predicted to miss even at its floor. Short answers, because pruning shortens the prefill
    only: with long ones decoding alone outlasts a tight budget. The prefix cache is off there: a hit
    answers densely in a fraction of the time whatever the budget (it is timed above).

Without CUDA it refuses (exit status 2) and writes nothing. Writes benchmarks/results/gpu.json.
"""

import argparse
import contextlib
import dataclasses
import itertools
import json
import pathlib
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from adatoken3d_node import parameters
from adatoken3d_node.budget import BudgetController, CostModel, budget_schedule
from adatoken3d_node.model.device import now
from adatoken3d_node.model.llava3d import Llava3D, Llava3DConfig
from adatoken3d_node.model.scene_qa import SceneAnswerer
from adatoken3d_node.perception.frontend import FrontEndConfig, SceneFrontEnd
from adatoken3d_node.perception.keyframes import KeyframePolicy
from adatoken3d_node.pipeline import AnswerPipeline, warmup_sweep
from adatoken3d_node.queries import QueryJob
from adatoken3d_node.scene_cache import PrefixCacheConfig

from .common import CLIP_VIT_L_14_336, LLAVA_3D_7B, machine, write_results

SEED = 0
KEEP_RATIOS = (0.5, 0.25, 0.1)  # the AdaToken-3D schedule's final keep ratios
SELECTIONS = ('fastv:0:0.08[near=0.5]~question', 'kcentre:0.25[merge]')  # before the language model
BUDGET_FRACTIONS = (0.3, 0.5, 0.8)  # of the dense end-to-end time
DENSE_REFERENCE = 5  # unbudgeted queries whose median end-to-end time the budgets are fractions of
QUESTIONS = (
    'What is at [{:.2f}, {:.2f}, {:.2f}]?',
    'What colour is the object nearest to [{:.2f}, {:.2f}, {:.2f}]?',
    'How far is the wall from [{:.2f}, {:.2f}, {:.2f}]?',
    'How many objects are within a metre of [{:.2f}, {:.2f}, {:.2f}]?',
)
REFUSAL = (
    'bench_gpu needs a CUDA GPU: torch.cuda.is_available() is False here (torch {torch}, built for CUDA {cuda}). '
    'It builds LLaVA-3D-7B with random bfloat16 weights in GPU memory (about 14 GB) and times the node on it; '
    'nothing is measured and nothing is written on a CPU. make bench skips it on such a machine; run '
    'make bench-gpu on a machine with a CUDA GPU.'
)


@dataclass(frozen=True)
class Setup:
    """What is built and how much of it runs."""

    name: str
    llama: dict  # LLaMA sizes, config.json keys (released_config)
    clip: dict  # CLIPVisionConfig keys
    views: int
    image: tuple  # rendered (width, height) of each view
    voxel_size: float  # metres; small enough that the views give more than max_spatial_tokens voxels
    max_spatial_tokens: int
    new_tokens: int  # per answer in the policy rows
    repeats: int
    deadline_queries: int  # per budget level
    deadline_new_tokens: int  # per budgeted answer: a short one (pruning shortens the prefill, not decoding)


LLAVA_3D_7B = Setup(
    name='llava-3d-7b',
    llama=dict(
        hidden_size=LLAVA_3D_7B['hidden'],
        intermediate_size=LLAVA_3D_7B['intermediate'],
        num_hidden_layers=LLAVA_3D_7B['layers'],
        num_attention_heads=LLAVA_3D_7B['heads'],
        num_key_value_heads=LLAVA_3D_7B['heads'],
        max_position_embeddings=4096,
        vocab_size=LLAVA_3D_7B['vocab'],
    ),
    clip=CLIP_VIT_L_14_336,
    views=20,
    image=(320, 240),
    voxel_size=0.05,  # the 20 views give about 6500 voxels of 5 cm: capped to 2560
    max_spatial_tokens=2560,
    new_tokens=32,
    repeats=5,
    deadline_queries=50,
    deadline_new_tokens=8,
)
# The same code at the random checkpoint's tiny sizes, on the CPU: for the unit test (--allow-cpu --tiny).
TINY = Setup(
    name='tiny',
    llama=dict(
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=4,  # the schedule's cuts at 1, 2, 3 as at 8, 16, 24 of 32
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
    ),
    clip=dict(
        hidden_size=32,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=336,
        patch_size=14,
        projection_dim=32,
    ),
    views=2,
    image=(160, 120),
    voxel_size=0.05,
    max_spatial_tokens=256,
    new_tokens=4,
    repeats=1,
    deadline_queries=3,
    deadline_new_tokens=3,
)


# ---- the model ------------------------------------------------------------------------------


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def build_answerer(setup: Setup, device: torch.device, dtype: torch.dtype) -> SceneAnswerer:
    """The node's SceneAnswerer on a Llava3D of this shape with random weights (seeded), each tensor
    created on `device` in `dtype` by the modules' own initialisers: no float32 copy, no checkpoint."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from adatoken3d_lab.random_checkpoint import released_config
    from adatoken3d_lab.tokenizer_files import build_tokenizer

    tokenizer = build_tokenizer()  # 512 tokens: ids above them (vocab 32000) decode to nothing
    clip_config = CLIPVisionConfig(**setup.clip)
    tower_name = f'random CLIP {setup.name} (built in place)'  # config.json's mm_vision_tower, never read
    config = Llava3DConfig.from_dict(released_config(tokenizer, tower_name, clip_config.hidden_size, setup.llama))
    torch.manual_seed(SEED)  # seeds the CUDA generators too
    with torch.device(device), default_dtype(dtype):
        model = Llava3D(config, CLIPVisionModel(clip_config))
    model.provenance = {'kind': 'random-llava3d', 'seed': SEED, 'trained': False}
    model.eval().requires_grad_(False)  # as the loader leaves it
    answerer = SceneAnswerer(model, tokenizer, f'random LLaVA-3D {setup.name} (built in place)')
    # Random weights may pick EOS at any step: ignoring it makes every answer the same length, so decode
    # times compare like with like and the cost model plans for the length that runs.
    answerer.eos_token_ids = frozenset()
    return answerer


def parameter_counts(model: Llava3D) -> dict:
    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    return {
        'language_model': count(model.language_model),
        'vision_tower': count(model.vision_tower),
        'total': count(model),
    }


# ---- the scene ------------------------------------------------------------------------------


def scene_front_end(model: Llava3D, setup: Setup) -> SceneFrontEnd:
    """The node's front end (as build_engine makes it) holding `views` rendered views of a synthetic room."""
    from adatoken3d_lab.synthetic import make_scene, room_frames

    frontend = SceneFrontEnd(
        FrontEndConfig.for_model(
            model,
            voxel_size=setup.voxel_size,
            max_spatial_tokens=setup.max_spatial_tokens,
            keyframes=KeyframePolicy(max_views=setup.views, min_translation_m=0.0, min_rotation_deg=0.0),
        )
    )
    objects = make_scene(SEED, n_objects=8, unique=True)
    width, height = setup.image
    for frame in room_frames(objects, n_views=setup.views, width=width, height=height, seed=SEED):
        depth = frame.depth.astype(np.float32) / 1000.0  # millimetres -> metres
        frontend.add_view(frame.rgb, depth, frame.K, frame.pose, frame.stamp_ns, 'camera_optical')
    return frontend


def questions(scene, count: int) -> list:
    """Questions naming points on the scene's tokens ([near=R] keeps what is around them)."""
    centres = scene.tokens.centres.numpy()  # (M, 3)
    picks = np.random.default_rng(SEED).choice(len(centres), count, replace=count > len(centres))
    return [QUESTIONS[i % len(QUESTIONS)].format(*centres[j]) for i, j in enumerate(picks)]


def renewer(start_ns: int = 10**15):
    """scene -> the same scene under new view stamps: the answerer's CLIP feature cache (keyed by stamp)
    misses every view, as for a scene seen for the first time."""
    offsets = itertools.count(start_ns, start_ns)

    def renew(scene):
        offset = next(offsets)
        return dataclasses.replace(scene, stamps_ns=tuple(stamp + offset for stamp in scene.stamps_ns))

    return renew


# ---- per policy -----------------------------------------------------------------------------


def reset_peak_memory(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> Optional[float]:
    """Peak allocated since the last reset (weights included); None off CUDA."""
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == 'cuda' else None


def ttft_ms(answer) -> float:
    """Time to the first token: vision (CLIP on the views not cached, pooling, projector), the selection's
    own work, prefill (whose last logits give the first token)."""
    return answer.vision_ms + answer.selection_ms + answer.prefill_ms


def median(values) -> Optional[float]:
    return round(statistics.median(values), 2) if values else None


def time_policy(answerer: SceneAnswerer, run, scene, setup: Setup, renew=None) -> dict:
    """run(scene, max_new_tokens) -> SceneAnswer, timed over setup.repeats after one warm-up.
    renew: also time the first token of a scene whose views are all new (None: not meaningful here)."""
    device = answerer.device
    run(scene, setup.new_tokens)  # warm-up: this policy's shapes and kernels
    reset_peak_memory(device)
    answers, end_to_end, new_scene = [], [], []
    for _ in range(setup.repeats):
        if renew is not None:
            scene = renew(scene)
            new_scene.append(run(scene, 1))  # CLIP on every view; then the answer below finds them cached
        start = now(device)
        answers.append(run(scene, setup.new_tokens))
        end_to_end.append((now(device) - start) * 1e3)
    first = answers[0]
    return {
        'spatial_tokens': first.spatial_tokens,
        'spatial_tokens_kept': first.spatial_tokens_kept,
        'text_tokens': first.text_tokens,
        'ttft_ms': median([ttft_ms(a) for a in answers]),
        'ttft_new_scene_ms': median([ttft_ms(a) for a in new_scene]),
        'vision_ms': median([a.vision_ms for a in answers]),
        'vision_new_scene_ms': median([a.vision_ms for a in new_scene]),
        'selection_ms': median([a.selection_ms for a in answers]),
        'prefill_ms': median([a.prefill_ms for a in answers]),
        # the first token comes from the prefill's logits: decoding made the others
        'decode_ms_per_token': median([a.decode_ms / (len(a.token_ids) - 1) for a in answers if len(a.token_ids) > 1]),
        'generated_tokens': [len(a.token_ids) for a in answers],
        'stop_reasons': sorted({a.stop_reason for a in answers}),
        'end_to_end_ms': median(end_to_end),
        'peak_gpu_memory_mb': peak_memory_mb(device),
        'prefill_flops': first.prefill_flops,
        'prefill_flops_dense': first.prefill_flops_dense,
        'flops_saved': round(1 - first.prefill_flops / first.prefill_flops_dense, 4),
    }


def policy_rows(answerer: SceneAnswerer, scene, question: str, setup: Setup) -> dict:
    L = answerer.num_layers
    texts = {'dense': 'none'}
    texts.update({f'schedule keep {r}': budget_schedule(L, r) for r in KEEP_RATIOS})
    texts.update({text: text for text in SELECTIONS})
    renew = renewer()
    rows = {}
    for name, text in texts.items():
        policy = answerer.policy(text)

        def run(s, max_new_tokens, policy=policy):
            return answerer.answer(question, s, policy, max_new_tokens)

        rows[name] = {'gating': str(policy), **time_policy(answerer, run, scene, setup, renew)}
        print(f'{name:34s} {summary(rows[name])}', flush=True)
    rows['prefix-cache hit'] = prefix_hit_row(answerer, scene, question, setup)
    return rows


def prefix_hit_row(answerer: SceneAnswerer, scene, question: str, setup: Setup) -> dict:
    """The question's own tokens against the scene's dense prefix, built once (views' features cached)."""
    device = answerer.device
    reserve = 64 + setup.new_tokens  # the node's reserve_tokens (scene_cache.PrefixCacheConfig)
    answerer.answer(question, scene, answerer.policy('none'), 1)  # this scene's CLIP features cached
    start = now(device)
    prefix = answerer.build_prefix(scene, answerer.policy('none'), reserve)
    build_ms = (now(device) - start) * 1e3

    def run(_, max_new_tokens):
        return answerer.answer_on_prefix(question, prefix, max_new_tokens)

    row = {
        'gating': f'{prefix.gating} on a cached prefix',
        'prefix_tokens': prefix.num_tokens,
        'prefix_build_ms': round(build_ms, 2),
        'prefix_memory_mb': round(prefix.nbytes / 2**20, 1),
        **time_policy(answerer, run, scene, setup),
    }
    print(f'{"prefix-cache hit":34s} {summary(row)}', flush=True)
    return row


def summary(row: dict) -> str:
    keys = (
        'spatial_tokens_kept',
        'ttft_ms',
        'prefill_ms',
        'decode_ms_per_token',
        'end_to_end_ms',
        'peak_gpu_memory_mb',
    )
    return ', '.join(f'{k} {row[k]}' for k in keys)


def clip_ms(answerer: SceneAnswerer, scene, views: int, repeats: int) -> float:
    """The vision tower alone on `views` views (the answerer's feature cache bypassed), median ms."""
    device, images = answerer.device, scene.images[:views]
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            start = now(device)
            answerer.model.image_features(images)
            times.append((now(device) - start) * 1e3)
    return median(times[1:])  # the first one warms this batch size


# ---- deadlines ------------------------------------------------------------------------------


class RecordingController(BudgetController):
    """The node's budget controller, keeping its last decision for the report (keep ratio, fits)."""

    last = None

    def decide(self, *args, **kwargs):
        self.last = super().decide(*args, **kwargs)
        return self.last


def ask(pipeline: AnswerPipeline, seq: int, question: str, budget_ms: float, max_new_tokens: int):
    """One query through the pipeline as the node's worker runs it, accepted now -> (outcome, total ms)."""
    job = QueryJob(seq, question, budget_ms, max_new_tokens, time.monotonic(), on_done=lambda outcome: None)
    outcome = pipeline.answer(job)
    return outcome, (time.monotonic() - job.accepted_at) * 1e3


def deadline_hit_rates(answerer: SceneAnswerer, frontend: SceneFrontEnd, asked: list, setup: Setup) -> dict:
    node = parameters.defaults()
    # what `gating: auto` runs for a checkpoint without a calibrated profile: dense, the budget prunes
    policy = answerer.policy('none')
    cost = CostModel(answerer.gated.shape)
    # no calibrated profile for random weights, so no frontier: the controller picks budget_schedule(L, r)
    controller = RecordingController(cost, node['budget_min_keep_ratio'], policy.raters)
    pipeline = AnswerPipeline(
        answerer,
        frontend,
        policy,
        node['temperature'],
        node['top_p'],
        controller,
        prefix_cache=PrefixCacheConfig(enabled=False),
    )
    start = time.monotonic()
    warmup_sweep(answerer, cost, setup.max_spatial_tokens)
    sweep_s = time.monotonic() - start
    seq, n = itertools.count(1), setup.deadline_new_tokens
    dense = [ask(pipeline, next(seq), asked[i % len(asked)], 0.0, n)[1] for i in range(DENSE_REFERENCE)]
    dense_ms = statistics.median(dense)
    print(f'deadlines: warm-up sweep {sweep_s:.1f} s, dense end to end {dense_ms:.1f} ms ({n} tokens)', flush=True)
    runs = {fraction: [] for fraction in BUDGET_FRACTIONS}  # fraction -> [(total ms, met, decision)]
    for i in range(setup.deadline_queries):
        for fraction, done in runs.items():  # interleaved: drift in clocks or load falls on every level alike
            budget_ms = fraction * dense_ms
            outcome, total_ms = ask(pipeline, next(seq), asked[i % len(asked)], budget_ms, n)
            if not outcome.success:
                raise RuntimeError(f'a budgeted query failed: {outcome.error}')
            done.append((total_ms, total_ms <= budget_ms, controller.last))
    levels = [deadline_level(fraction, fraction * dense_ms, done) for fraction, done in runs.items()]
    for level in levels:
        print(f'  {level}', flush=True)
    return {
        'max_new_tokens': n,
        'min_keep_ratio': node['budget_min_keep_ratio'],
        'frontier': [],
        'prefix_cache': False,
        'warmup_sweep_s': round(sweep_s, 1),
        'dense_end_to_end_ms': round(dense_ms, 2),
        'levels': levels,
        'cost_model_mean_relative_error': cost.mean_relative_error(),
    }


def deadline_level(fraction: float, budget_ms: float, done: list) -> dict:
    totals = np.array([total for total, _, _ in done])
    decisions = [decision for _, _, decision in done]
    reachable = [met for _, met, decision in done if decision.fits]
    return {
        'fraction_of_dense': fraction,
        'budget_ms': round(budget_ms, 2),
        'queries': len(done),
        'hit_rate': round(sum(met for _, met, _ in done) / len(done), 4),
        'latency_ms_p50': round(float(np.percentile(totals, 50)), 2),
        'latency_ms_p95': round(float(np.percentile(totals, 95)), 2),
        'hit_rate_where_floor_fits': round(float(np.mean(reachable)), 4) if reachable else None,
        'floor_predicted_misses': len(done) - len(reachable),  # out of reach even at min_keep_ratio
        'keep_ratio_mean': round(float(np.mean([d.keep_ratio for d in decisions])), 4),
        'predicted_ms_mean': round(float(np.mean([d.predicted_ms for d in decisions])), 2),
    }


# ---- main -----------------------------------------------------------------------------------


def gpu_facts(device: torch.device) -> Optional[dict]:
    if device.type != 'cuda':
        return None
    props = torch.cuda.get_device_properties(device)
    return {
        'name': torch.cuda.get_device_name(device),
        'memory_gb': round(props.total_memory / 2**30, 1),
        'torch': torch.__version__,
        'cuda': torch.version.cuda,
        'cudnn': torch.backends.cudnn.version(),
    }


def parse_args(argv):
    parser = argparse.ArgumentParser(prog='bench_gpu', description=__doc__.split('\n\n')[0])
    parser.add_argument('--repeats', type=int, default=None, help='answers timed per policy (default 5)')
    parser.add_argument('--queries', type=int, default=None, help='budgeted queries per budget level (default 50)')
    parser.add_argument('--out', type=pathlib.Path, default=None, help='write the JSON here, not in benchmarks/results')
    # For the unit test: the same code on the CPU at the tiny shape, written to --out only.
    parser.add_argument('--allow-cpu', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--tiny', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if (args.allow_cpu or args.tiny) and args.out is None:
        parser.error('--allow-cpu and --tiny write to --out only (benchmarks/results holds the real run)')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print(REFUSAL.format(torch=torch.__version__, cuda=torch.version.cuda), file=sys.stderr)
        return 2
    start_all = time.monotonic()
    setup = TINY if args.tiny else LLAVA_3D_7B
    setup = dataclasses.replace(
        setup, repeats=args.repeats or setup.repeats, deadline_queries=args.queries or setup.deadline_queries
    )
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    dtype = torch.bfloat16 if device.type == 'cuda' else torch.float32  # this CPU has no bfloat16 arithmetic

    start = time.monotonic()
    answerer = build_answerer(setup, device, dtype)
    weights_mb = round(torch.cuda.memory_allocated(device) / 2**20, 1) if device.type == 'cuda' else None
    build_s = time.monotonic() - start
    print(f'built {answerer.path} on {device} ({dtype}) in {build_s:.1f} s: {answerer.gated.shape}', flush=True)

    frontend = scene_front_end(answerer.model, setup)
    scene = frontend.scene()
    asked = questions(scene, 8)
    print(f'scene: {scene.num_views} views, {scene.num_tokens} spatial tokens', flush=True)
    answerer.warmup(scene)
    clip_one = clip_ms(answerer, scene, 1, setup.repeats)
    clip_all = clip_ms(answerer, scene, scene.num_views, setup.repeats)
    print(f'CLIP: {clip_one} ms for 1 view, {clip_all} ms for {scene.num_views}', flush=True)

    rows = policy_rows(answerer, scene, asked[0], setup)
    deadlines = deadline_hit_rates(answerer, frontend, asked, setup)

    command = 'python -m benchmarks.bench_gpu' + ''.join(f' {a}' for a in (argv if argv is not None else sys.argv[1:]))
    results = {
        'benchmark': 'gpu',
        'machine': machine(),
        'command': command,
        'seconds': round(time.monotonic() - start_all, 1),
        'gpu': gpu_facts(device),
        'model': {
            'setup': setup.name,
            'llama': setup.llama,
            'clip': setup.clip,
            'parameters': parameter_counts(answerer.model),
            'dtype': str(dtype).removeprefix('torch.'),
            'weights': f'random, seed {SEED}, created in place (untrained: answers are noise)',
            'build_s': round(build_s, 1),
            'weights_gpu_memory_mb': weights_mb,
        },
        'scene': {
            'views': scene.num_views,
            'spatial_tokens': scene.num_tokens,
            'voxel_size_m': setup.voxel_size,
            'max_spatial_tokens': setup.max_spatial_tokens,
            'rendered': f'synthetic room, {setup.image[0]}x{setup.image[1]} RGB-D, seed {SEED}',
        },
        'question': asked[0],
        'max_new_tokens': setup.new_tokens,
        'repeats': setup.repeats,
        'clip_ms_one_view': clip_one,
        'clip_ms_all_views': clip_all,
        'policies': rows,
        'deadline': deadlines,
    }
    if args.out is None:
        write_results('gpu', results)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + '\n')
        print(f'wrote {args.out}', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
