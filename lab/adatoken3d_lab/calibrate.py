"""Attention pattern mining: measure where a LLaVA-3D checkpoint's attention goes and fit its gating schedule.

    adatoken3d-calibrate MODEL_DIR [--vision-tower DIR] --dataset redwood:DIR [--dataset tum:DIR ...]
                         [--questions FILE] [--target-flops-reduction 0.63] [--output PROFILE.json]

For every calibration scene and question, one dense prefill is scored at every layer
(the same one-row score the gate uses: the last prompt token's attention, averaged
over heads), and per layer we record

  * spatial_mass_share: the share of that attention that goes to spatial tokens;
  * keep_for_95: the fraction of spatial tokens that together hold 95% of the spatial mass;
  * low_mass_share = 1 - keep_for_95: the share of spatial tokens that together carry < 5%
    (the AdaToken-3D paper's "over 60% of spatial tokens contribute less than 5%").

The schedule is fitted offline, as AdaToken-3D's adaptive part is: among a small family of
three-stage cut layouts, and ratios scaled down from the measured keep_for_95 curve until the
predicted prefill FLOPs reduction reaches the target, it picks the one that keeps the most
attention mass (measured on the calibration prompts).

Then the frontier: the fitted schedule and the selections before the language model (k-centre, layer-0
query scores and the query-seeded k-centre, with and without merging, at 50/25/10/5% of the spatial
tokens, and a hybrid)
answer every calibration prompt, and each is scored by a proxy that needs no labels, so it means the
same for LLaVA-3D-7B on a robot's own frames as for the shipped model on rendered rooms:

    agreement = the share of prompts whose greedy answer (its first MAX_NEW_TOKENS tokens) is the
                dense answer, word for word

against its prefill FLOPs reduction (counted exactly, selection included). The profile keeps every
point measured and the Pareto frontier; `gating: auto` runs the frontier point with the largest FLOPs
reduction whose agreement is at least --auto-agreement (0.97), and the budget controller picks among
the frontier's points the least pruned that fits the time a query has left. Random selections are
not candidates: they are what the others must beat (benchmarks/bench_accuracy.py).

The profile goes next to the checkpoint (MODEL_DIR/adatoken3d_gating.json) unless --output says
otherwise; profiles shipped with the package live in models/gating_profiles/<checkpoint id>.json.
The node's `gating: auto` looks in both places for the loaded checkpoint. ROS-free.
"""

import argparse
import json
import math
import pathlib
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np
import torch

from adatoken3d_node.model.flops import LlamaShape, prefill_flops
from adatoken3d_node.model.gating import GatedLlama
from adatoken3d_node.model.gating_policy import parse_gating
from adatoken3d_node.model.profiles import PROFILE_NAME, SHIPPED_PROFILES, checkpoint_id

MASS = 0.95
MAX_NEW_TOKENS = 8  # of the greedy answers compared with dense
AUTO_AGREEMENT = 0.97
FRONTIER_RATIOS = (0.5, 0.25, 0.1, 0.08, 0.05)
FRONTIER_SELECTIONS = (
    'kcentre:{r}',
    'kcentre:{r}[merge]',
    'fastv:0:{r}~question',
    'fastv:0:{r}[merge]~question',
    'fastv:0:{r}[near=0.5]~question',  # the tokens within 0.5 m of a point the question names first
    'kcentre:{r}~question',
    'kcentre:{r}[merge]~question',
)
FRONTIER_HYBRIDS = ('kcentre:0.25[merge]+fastv:1:0.2~question',)
PROXY = (
    f'agreement: the share of calibration prompts whose greedy answer (first {MAX_NEW_TOKENS} tokens) equals '
    'the dense answer; needs no labelled answers'
)
DEFAULT_QUESTIONS = (
    'What is on the table?',
    'Where is the chair?',
    'How many chairs are in the room?',
    'What color is the sofa?',
    'Which object is closest to the door?',
    'Is there a lamp next to the bed?',
    'What is in front of the window?',
    'Describe the room.',
    'Where can I put a cup?',
    'What is at [1.0, 0.5, 2.0]?',
)


@dataclass
class LayerStats:
    spatial_mass_share: List[float]  # per prompt
    keep_for_95: List[float]  # per prompt
    mass_curve: List[np.ndarray]  # per prompt: cumulative share of spatial mass of the top-k, k = 1..N


def with_questions(scenes, questions: Sequence[str]):
    """scenes: SceneGeometry, or (SceneGeometry, its own questions) pairs -> (scene, its questions) pairs,
    `questions` for a scene that has none of its own."""
    for scene in scenes:
        scene, own = scene if isinstance(scene, tuple) else (scene, None)
        yield scene, own or questions


def mine(model, tokenizer, scenes, questions: Sequence[str]):
    """Dense prefill of every (scene, question), scored at layers 1..L-1 (nothing is pruned).
    scenes: SceneGeometry, or (SceneGeometry, its own questions) pairs that replace `questions`.

    Returns ({layer: LayerStats}, [(prompt tokens, spatial tokens) per prompt]).
    """
    lm = model.language_model
    num_layers = lm.config.num_hidden_layers
    gated = GatedLlama(lm)
    probe = parse_gating(
        f'mass:1.0@{",".join(str(layer) for layer in range(1, num_layers))}[min=1.0,max=1.0]', num_layers
    )
    stats = {layer: LayerStats([], [], []) for layer in range(1, num_layers)}
    token_counts = []
    with torch.inference_mode():
        for scene, scene_questions in with_questions(scenes, questions):
            spatial = model.spatial_embeddings(scene)
            for question in scene_questions:
                inputs = model.build_inputs(question, spatial, tokenizer)
                result = gated.prefill(inputs.inputs_embeds, inputs.spatial_mask, probe)
                mask = inputs.spatial_mask.cpu()
                token_counts.append((int(mask.numel()), int(mask.sum())))
                for layer, scores in result.scores.items():
                    scores = scores.float().cpu()
                    spatial_scores = torch.sort(scores[mask], descending=True).values
                    total = float(scores.sum())
                    spatial_total = float(spatial_scores.sum())
                    curve = (torch.cumsum(spatial_scores, 0) / max(spatial_total, 1e-30)).numpy()
                    needed = int(np.searchsorted(curve, MASS - 1e-9) + 1)
                    stats[layer].spatial_mass_share.append(spatial_total / max(total, 1e-30))
                    stats[layer].keep_for_95.append(needed / len(spatial_scores))
                    stats[layer].mass_curve.append(curve)
    return stats, token_counts


def retained_mass(stats: Dict[int, LayerStats], layer: int, ratio: float) -> float:
    """Mean share of a layer's spatial attention mass held by its top `ratio` spatial tokens."""
    held = [curve[max(0, min(len(curve), math.ceil(ratio * len(curve))) - 1)] for curve in stats[layer].mass_curve]
    return float(np.mean(held))


def fit_schedule(stats: Dict[int, LayerStats], shape: LlamaShape, tokens: int, spatial: int, target: float) -> dict:
    """The three-stage schedule that reaches `target` FLOPs reduction keeping the most attention mass."""
    L = shape.num_layers
    keep95 = {layer: float(np.mean(s.keep_for_95)) for layer, s in stats.items()}
    layouts = {
        tuple(sorted(set(max(1, min(L - 1, x)) for x in layout)))
        for layout in (
            (L // 8, L // 4, L // 2),
            (L // 4, L // 2, 3 * L // 4),
            (2, L // 4, L // 2),
            (2, L // 2, 3 * L // 4),
            (1, L // 4, L // 2),
            (L // 8, 3 * L // 8, 5 * L // 8),
        )
    }
    dense = prefill_flops(shape, [tokens] * L)
    best, strongest = None, None
    for layers in sorted(layouts):
        curve = np.minimum.accumulate([keep95[layer] for layer in layers])  # never grow back
        for alpha in np.linspace(1.0, 0.02, 99):  # shrink until the target
            ratios = [max(min(1.0, alpha * r), 1.0 / spatial) for r in curve]
            counts, n = [], tokens
            for layer in range(L):
                if layer in layers:
                    n = tokens - spatial + math.ceil(ratios[layers.index(layer)] * spatial)
                counts.append(n)
            reduction = 1 - prefill_flops(shape, counts) / dense
            mass = float(np.prod([retained_mass(stats, layer, r) for layer, r in zip(layers, ratios)]))
            candidate = {
                'schedule': 'schedule:' + ','.join(f'{layer}:{r:.3f}' for layer, r in zip(layers, ratios)),
                'predicted_flops_reduction': round(reduction, 4),
                'predicted_mass_retained': round(mass, 4),
            }
            if strongest is None or reduction > strongest['predicted_flops_reduction']:
                strongest = candidate
            if reduction >= target:
                if best is None or mass > best['predicted_mass_retained']:
                    best = candidate
                break
    # Few spatial tokens next to many text tokens (a tiny model, a small scene) can make the
    # target unreachable: then the strongest schedule is kept and the profile says so.
    return {**(best or strongest), 'target_met': best is not None}


def frontier_candidates(schedule: str) -> List[str]:
    """The policies the frontier is measured over: the fitted schedule, the selections, the hybrids."""
    selections = [text.format(r=r) for r in FRONTIER_RATIOS for text in FRONTIER_SELECTIONS]
    return [schedule, *selections, *FRONTIER_HYBRIDS]


def measure_agreement(answerer, prompts, candidates: Sequence[str]) -> List[dict]:
    """Every candidate on every (scene, question) prompt -> one point each: gating, FLOPs reduction (summed
    over prompts), mean share of spatial tokens kept, agreement with the dense answer."""
    from .training.evaluate import normalise

    none = answerer.policy('none')
    dense = [answerer.answer(q, scene, none, MAX_NEW_TOKENS) for scene, q in prompts]
    points = []
    for text in candidates:
        policy = answerer.policy(text)
        answers = [answerer.answer(q, scene, policy, MAX_NEW_TOKENS) for scene, q in prompts]
        flops = sum(a.prefill_flops for a in answers)
        flops_dense = sum(a.prefill_flops_dense for a in answers)
        points.append(
            {
                'gating': str(policy),
                'flops_reduction': round(1 - flops / flops_dense, 4),
                'spatial_kept_share': round(
                    float(np.mean([a.spatial_tokens_kept / max(a.spatial_tokens, 1) for a in answers])), 4
                ),
                'agreement': round(
                    float(np.mean([normalise(a.text) == normalise(d.text) for a, d in zip(answers, dense)])), 4
                ),
            }
        )
    return points


def pareto_frontier(points: Sequence[dict]) -> List[dict]:
    """The points no other beats on both FLOPs reduction and agreement, by increasing reduction."""
    frontier, best = [], -1.0
    for point in sorted(points, key=lambda p: (-p['flops_reduction'], -p['agreement'])):
        if point['agreement'] > best:
            frontier.append(point)
            best = point['agreement']
    return frontier[::-1]


def pick_auto(frontier: Sequence[dict], min_agreement: float) -> dict | None:
    """The frontier point with the largest FLOPs reduction whose agreement reaches min_agreement."""
    good = [p for p in frontier if p['agreement'] >= min_agreement]
    return max(good, key=lambda p: p['flops_reduction']) if good else None


def calibrate(
    model,
    tokenizer,
    model_path,
    scenes,
    questions,
    target: float,
    frontier: bool = True,
    min_agreement: float = AUTO_AGREEMENT,
) -> dict:
    start = time.monotonic()
    stats, token_counts = mine(model, tokenizer, scenes, questions)
    n_questions = len({q for scene in scenes if isinstance(scene, tuple) for q in scene[1]} or questions)
    tokens = int(np.median([t for t, _ in token_counts]))
    spatial = int(np.median([s for _, s in token_counts]))
    shape = LlamaShape.from_config(model.language_model.config)
    fit = fit_schedule(stats, shape, tokens, spatial, target)
    layers = [
        {
            'layer': layer,
            'spatial_mass_share': round(float(np.mean(s.spatial_mass_share)), 4),
            'keep_for_95': round(float(np.mean(s.keep_for_95)), 4),
            'low_mass_share': round(1 - float(np.mean(s.keep_for_95)), 4),
        }
        for layer, s in stats.items()
    ]
    return {
        'checkpoint_id': checkpoint_id(model_path),
        'model_path': str(model_path),
        'untrained_model': bool(getattr(model, 'is_untrained', False)),
        'calibration': {
            'scenes': len(scenes),
            'questions': n_questions,
            'prompts': len(token_counts),
            'median_tokens': tokens,
            'median_spatial_tokens': spatial,
            'seconds': round(time.monotonic() - start, 1),
        },
        'layers': layers,
        # averaged over layers 1..L-1: the share of spatial tokens that together carry < 5% of the mass
        'low_mass_share_mean': round(float(np.mean([row['low_mass_share'] for row in layers])), 4),
        'target_flops_reduction': target,
        **fit,
        **(
            measure_frontier(model, tokenizer, model_path, scenes, questions, fit['schedule'], min_agreement)
            if frontier
            else {}
        ),
    }


def measure_frontier(model, tokenizer, model_path, scenes, questions, schedule: str, min_agreement: float) -> dict:
    """The profile's frontier part: every candidate measured, the frontier, what `auto` runs and why."""
    from adatoken3d_node.model.scene_qa import SceneAnswerer

    answerer = SceneAnswerer(model, tokenizer, model_path)
    prompts = [(scene, q) for scene, scene_questions in with_questions(scenes, questions) for q in scene_questions]
    start = time.monotonic()
    points = measure_agreement(answerer, prompts, frontier_candidates(schedule))
    frontier = pareto_frontier(points)
    auto = pick_auto(frontier, min_agreement)
    reason = f'the largest FLOPs reduction with agreement >= {min_agreement}'
    if auto is None:
        auto = next(p for p in points if p['gating'] == str(answerer.policy(schedule)))
        reason = f'no candidate reached agreement {min_agreement}: the fitted schedule'
    return {
        'proxy': PROXY,
        'candidates': points,
        'frontier': frontier,
        'auto': {**auto, 'min_agreement': min_agreement, 'reason': reason},
        'frontier_seconds': round(time.monotonic() - start, 1),
    }


def synthetic_scenes(split: str, count: int, model) -> list:
    """(SceneGeometry, its questions) of `count` rendered scenes of a training.dataset split."""
    from adatoken3d_node.perception.frontend import FrontEndConfig
    from .training.dataset import render_split
    from .training.evaluate import scene_questions

    config = FrontEndConfig.for_model(model)
    return [
        (record.geometry(config), [qa.question for qa in scene_questions(record)])
        for record in render_split(split, count, config)
    ]


def scenes_from_datasets(specs: Sequence[str], model) -> list:
    """'redwood:DIR' / 'tum:DIR' -> one SceneGeometry per dataset, every frame kept;
    'synthetic:SPLIT:COUNT' -> COUNT rendered scenes, each with its own generated questions."""
    from .datasets import load_redwood, load_tum_single
    from adatoken3d_node.perception.frontend import FrontEndConfig, SceneFrontEnd
    from adatoken3d_node.perception.keyframes import KeyframePolicy

    loaders = {'redwood': load_redwood, 'tum': load_tum_single}
    scenes = []
    for spec in specs:
        kind, _, directory = spec.partition(':')
        if kind == 'synthetic':
            split, _, count = directory.partition(':')
            scenes += synthetic_scenes(split, int(count or 40), model)
            continue
        if kind not in loaders:
            raise ValueError(f'--dataset {spec!r}: kind must be one of {sorted(loaders) + ["synthetic"]}')
        frontend = SceneFrontEnd(
            FrontEndConfig.for_model(model, keyframes=KeyframePolicy(min_translation_m=0.0, min_rotation_deg=0.0))
        )
        for frame in loaders[kind](directory):
            depth = frame.depth.astype(np.float32) * (0.001 if frame.depth.dtype == np.uint16 else 1.0)
            frontend.add_view(
                frame.rgb, depth, frame.K, frame.pose if frame.pose is not None else np.eye(4), frame.stamp_ns
            )
        scenes.append(frontend.scene())
    return scenes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='adatoken3d-calibrate', description=__doc__.split('\n\n')[0])
    parser.add_argument('model_path')
    parser.add_argument('--vision-tower', default=None, help='local CLIP directory (default: config.json)')
    parser.add_argument(
        '--dataset',
        action='append',
        required=True,
        metavar='KIND:DIR',
        help='calibration scenes, e.g. redwood:../shared/data/redwood_livingroom_5, or '
        'synthetic:val:40 (rendered scenes with their own questions); repeatable',
    )
    parser.add_argument('--questions', default=None, help='text file, one question per line')
    parser.add_argument('--target-flops-reduction', type=float, default=0.63, help='of the fitted schedule')
    parser.add_argument(
        '--auto-agreement',
        type=float,
        default=AUTO_AGREEMENT,
        help='gating: auto runs the most pruning frontier point whose answers agree with dense this often',
    )
    parser.add_argument('--no-frontier', action='store_true', help='fit the schedule only (no answers generated)')
    parser.add_argument('--device', default='auto')
    parser.add_argument('--dtype', default='auto')
    parser.add_argument(
        '--output',
        default=None,
        help=f'default: MODEL_DIR/{PROFILE_NAME}; to ship it: {SHIPPED_PROFILES}/<checkpoint id>.json',
    )
    parser.add_argument(
        '--ship',
        action='store_true',
        help=f'write to the source tree\'s {SHIPPED_PROFILES}/<checkpoint id>.json (overrides --output)',
    )
    args = parser.parse_args(argv)
    from adatoken3d_node.model.loader import load_llava3d

    model, tokenizer, _ = load_llava3d(args.model_path, args.vision_tower, args.device, args.dtype)
    questions = pathlib.Path(args.questions).read_text().splitlines() if args.questions else DEFAULT_QUESTIONS
    questions = [q for q in questions if q.strip()]
    profile = calibrate(
        model,
        tokenizer,
        args.model_path,
        scenes_from_datasets(args.dataset, model),
        questions,
        args.target_flops_reduction,
        frontier=not args.no_frontier,
        min_agreement=args.auto_agreement,
    )
    output = pathlib.Path(args.output) if args.output else pathlib.Path(args.model_path) / PROFILE_NAME
    if args.ship:
        from adatoken3d_node.share import SOURCE_TREE

        output = SOURCE_TREE / SHIPPED_PROFILES / f'{profile["checkpoint_id"]}.json'
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(profile, indent=2) + '\n')
    if not profile['target_met']:
        print(
            f'the target of {args.target_flops_reduction:.0%} cannot be reached with '
            f'{profile["calibration"]["median_spatial_tokens"]} spatial of {profile["calibration"]["median_tokens"]} '
            'tokens; keeping the strongest schedule'
        )
    print(
        f'{profile["schedule"]}: predicted FLOPs reduction {profile["predicted_flops_reduction"]:.1%}, '
        f'attention mass kept {profile["predicted_mass_retained"]:.1%}; '
        f'{profile["low_mass_share_mean"]:.0%} of spatial tokens carry < 5% of the mass (mean over layers)'
    )
    if 'auto' in profile:
        auto = profile['auto']
        print(
            f'gating auto: {auto["gating"]} (FLOPs reduction {auto["flops_reduction"]:.1%}, agreement with dense '
            f'{auto["agreement"]:.1%}: {auto["reason"]}); frontier of {len(profile["frontier"])} points'
        )
    print(f'wrote {output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
