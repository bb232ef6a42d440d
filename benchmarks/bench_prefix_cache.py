"""The scene prefix cache beside recomputing every prompt: time to first token, prefill FLOPs, and the
throughput of batched questions. ROS-free.

    .venv/bin/python -m benchmarks.bench_prefix_cache                    (make bench; CPU)
    python -m benchmarks.bench_prefix_cache --device cuda --wide-shape llava-7b   (a GPU machine)

Two models, through the node's answer path (SceneAnswerer):
  shipped  the shipped scene model on held-out clutter scenes (about 1600 spatial tokens);
  wide     a random-weight LLaVA-3D (seeded) of the widest LLaMA shape this CPU runs in minutes
           (--wide-shape), on a scene of random RGB-D views pooled into 2560 spatial tokens (the
           node's max_spatial_tokens).
Per question, side by side, with one new token (time to first token, wall clock; the views' CLIP
features already cached, as the node has them for a scene it has seen):
  dense    the whole prompt's prefill (what every question cost before the cache);
  pruned   the best pruned policy of the README (fastv:0:0.08[near=0.5]~question);
  hit      the question's own tokens against the cached scene prefix (built once per scene, its
           time reported apart).
Throughput: Q = 1, 4, 16 questions on one snapshot, answered in one batch on the prefix
(answer_batch), one at a time on the prefix, and one at a time recomputed densely; answers/s from
the median of 3 interleaved runs, the same max_new_tokens for all (answers are the same tokens
either way).

Writes benchmarks/results/prefix_cache.json.
"""

import argparse
import statistics
import sys
import tempfile
import time

import numpy as np

from adatoken3d_node.model.gating import DecodeRow
from adatoken3d_node.model.scene_qa import SceneAnswerer
from adatoken3d_node.perception.frontend import FrontEndConfig, SceneFrontEnd
from adatoken3d_node.perception.keyframes import KeyframePolicy
from adatoken3d_node.share import default_model_dir

from .common import machine, write_results

PRUNED = 'fastv:0:0.08[near=0.5]~question'
WIDE_SHAPES = {
    # name: LLaMA sizes of the random LLaVA-3D
    'cpu': dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8),
    'llava-7b': dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
}
BATCHES = (1, 4, 16)
REPEATS = 3


def wall_ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def first_token(answerer, scene, questions, prefix) -> dict:
    """Median time to first token and mean prefill FLOPs per mode, over the questions."""
    modes = {
        'dense': lambda q: answerer.answer(q, scene, answerer.policy('none'), 1),
        'pruned': lambda q: answerer.answer(q, scene, answerer.policy(PRUNED), 1),
        'hit': lambda q: answerer.answer_on_prefix(q, prefix, 1),
    }
    out = {}
    for name, run in modes.items():
        run(questions[0])  # warm
        times, flops = [], []
        for question in questions:
            box = []
            times.append(wall_ms(lambda: box.append(run(question))))
            flops.append(box[0].prefill_flops)
        out[name] = {'ttft_ms_median': round(statistics.median(times), 2), 'prefill_flops_mean': float(np.mean(flops))}
    dense, hit, pruned = out['dense'], out['hit'], out['pruned']
    out['hit_vs_dense'] = {
        'ttft_speedup': round(dense['ttft_ms_median'] / hit['ttft_ms_median'], 2),
        'prefill_flops_ratio': round(dense['prefill_flops_mean'] / hit['prefill_flops_mean'], 1),
    }
    out['hit_vs_pruned'] = {
        'ttft_speedup': round(pruned['ttft_ms_median'] / hit['ttft_ms_median'], 2),
        'prefill_flops_ratio': round(pruned['prefill_flops_mean'] / hit['prefill_flops_mean'], 1),
    }
    return out


def throughput(answerer, scene, questions, prefix, max_new_tokens: int) -> dict:
    """answers/s for Q questions on one snapshot: batched on the prefix, one at a time on it, recomputed."""
    out = {}
    for q in BATCHES:
        asked = [questions[i % len(questions)] for i in range(q)]
        answers = {}

        def batched():
            rows = [DecodeRow(max_new_tokens) for _ in asked]
            answerer.answer_batch(asked, prefix, rows, lambda b, a: answers.__setitem__(b, a))

        one_at_a_time = [None] * q

        def on_prefix():
            for i, question in enumerate(asked):
                one_at_a_time[i] = answerer.answer_on_prefix(question, prefix, max_new_tokens)

        def recomputed():
            for question in asked:
                answerer.answer(question, scene, answerer.policy('none'), max_new_tokens)

        batched()  # warm this batch size
        runs = {'batched': batched, 'one_at_a_time_on_prefix': on_prefix, 'one_at_a_time_recomputed': recomputed}
        # interleaved repeats, median: a burst of load on the machine falls on every mode alike
        times = {name: [] for name in runs}
        for _ in range(REPEATS):
            for name, run in runs.items():
                times[name].append(wall_ms(run))
        ms = {name: statistics.median(t) for name, t in times.items()}
        same = all(answers[i].token_ids == one_at_a_time[i].token_ids for i in range(q))
        tokens = sum(len(a.token_ids) for a in one_at_a_time)
        out[str(q)] = {
            'answers_per_s': {name: round(q / (t / 1e3), 2) for name, t in ms.items()},
            'batched_vs_one_at_a_time_on_prefix': round(ms['one_at_a_time_on_prefix'] / ms['batched'], 2),
            'batched_vs_recomputed': round(ms['one_at_a_time_recomputed'] / ms['batched'], 2),
            'generated_tokens': tokens,
            'batched_equals_one_at_a_time': same,
        }
        print(f'  Q={q:2d} {out[str(q)]}', flush=True)
    return out


def measure(answerer, scenes, questions_of, max_new_tokens: int) -> dict:
    """scenes: SceneGeometry list; questions_of(i) -> the questions about scene i."""
    per_scene, builds = [], []
    for i, scene in enumerate(scenes):
        answerer.answer('What is in the scene?', scene, answerer.policy('none'), 1)  # CLIP features cached
        box = []
        builds.append(wall_ms(lambda: box.append(answerer.build_prefix(scene, answerer.policy('none'), 256))))
        prefix = box[0]
        print(f' scene {i}: {scene.num_tokens} spatial tokens, prefix {prefix.num_tokens} tokens', flush=True)
        per_scene.append((scene, prefix, first_token(answerer, scene, questions_of(i), prefix)))
    scene, prefix, _ = per_scene[0]
    out = {
        'scenes': len(scenes),
        'spatial_tokens_mean': round(float(np.mean([s.num_tokens for s, _, _ in per_scene])), 1),
        'prefix_build_ms_median': round(statistics.median(builds), 2),
        'prefix_memory_mb': round(prefix.nbytes / 2**20, 2),
    }
    for mode in ('dense', 'pruned', 'hit', 'hit_vs_dense', 'hit_vs_pruned'):
        keys = per_scene[0][2][mode].keys()
        out[mode] = {k: round(float(np.median([r[mode][k] for _, _, r in per_scene])), 2) for k in keys}
    print(f' first token: {out}', flush=True)
    out['throughput'] = throughput(answerer, scene, questions_of(0), prefix, max_new_tokens)
    out['throughput_max_new_tokens'] = max_new_tokens
    return out


def shipped(device: str, scenes: int, questions: int, max_new_tokens: int) -> dict:
    from adatoken3d_lab.training.dataset import render_split
    from adatoken3d_lab.training.evaluate import scene_questions

    answerer = SceneAnswerer.load(default_model_dir(), device=device)
    config = FrontEndConfig.for_model(answerer.model)
    records = render_split('clutter', scenes, config)
    geometries = [record.geometry(config) for record in records]
    asked = [[qa.question for qa in scene_questions(record)][:questions] for record in records]
    print('shipped model, clutter scenes', flush=True)
    return {
        'model': default_model_dir().name,
        'split': 'clutter',
        **measure(answerer, geometries, asked.__getitem__, max_new_tokens),
    }


def random_scene(answerer, tokens: int, views: int):
    """Random RGB-D views turning about a room's centre, pooled into `tokens` spatial tokens."""
    model = answerer.model
    frontend = SceneFrontEnd(
        FrontEndConfig.for_model(
            model,
            voxel_size=0.05,
            max_spatial_tokens=tokens,
            keyframes=KeyframePolicy(max_views=views, min_translation_m=0.0, min_rotation_deg=0.0),
        )
    )
    rng = np.random.default_rng(0)
    K = np.array([[200.0, 0.0, 159.5], [0.0, 200.0, 119.5], [0.0, 0.0, 1.0]])
    for i in range(views):
        angle = 2 * np.pi * i / views
        c, s = np.cos(angle), np.sin(angle)
        pose = np.eye(4)
        pose[:3, :3] = [[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]]
        rgb = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
        depth = rng.uniform(1.0, 4.0, (240, 320)).astype(np.float32)
        frontend.add_view(rgb, depth, K, pose, i + 1)
    return frontend.scene()


def wide(device: str, shape: str, questions: int, max_new_tokens: int) -> dict:
    from adatoken3d_lab.random_checkpoint import create_random_llava3d

    llama = dict(WIDE_SHAPES[shape], max_position_embeddings=4096)
    llama['num_key_value_heads'] = llama['num_attention_heads']
    with tempfile.TemporaryDirectory() as root:
        path = create_random_llava3d(f'{root}/model', f'{root}/clip', seed=0, llama=llama)
        answerer = SceneAnswerer.load(path, device=device)
        scene = random_scene(answerer, 2560, 8)
        centres = scene.tokens.centres.numpy()
        points = [centres[i] for i in np.random.default_rng(1).choice(len(centres), questions, replace=False)]
        asked = [
            f'What is at [{x:.2f}, {y:.2f}, {z:.2f}]?' if i % 2 else f'How many objects are there near the table {i}?'
            for i, (x, y, z) in enumerate(points)
        ]
        print(f'wide random model {shape}: {answerer.gated.shape}', flush=True)
        result = measure(answerer, [scene], lambda i: asked, max_new_tokens)
    sizes = WIDE_SHAPES[shape]
    label = f'random LLaVA-3D, {sizes["num_hidden_layers"]} layers x {sizes["hidden_size"]} wide'
    return {'model': label, 'shape': str(answerer.gated.shape), **result}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='bench_prefix_cache', description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--wide-shape', default='cpu', choices=sorted(WIDE_SHAPES))
    parser.add_argument('--scenes', type=int, default=4, help='clutter scenes for the shipped model')
    parser.add_argument('--questions', type=int, default=8, help='questions per scene')
    parser.add_argument('--max-new-tokens', type=int, default=16, help='for the throughput runs')
    args = parser.parse_args(argv)
    start = time.monotonic()
    models = {
        'shipped': shipped(args.device, args.scenes, args.questions, args.max_new_tokens),
        'wide': wide(args.device, args.wide_shape, args.questions, args.max_new_tokens),
    }
    command = 'python -m benchmarks.bench_prefix_cache'
    if args.device != 'cpu' or args.wide_shape != 'cpu':
        command += f' --device {args.device} --wide-shape {args.wide_shape}'
    write_results(
        'prefix_cache',
        {
            'benchmark': 'prefix_cache',
            'machine': machine(),
            'command': command,
            'pruned_policy': PRUNED,
            'seconds': round(time.monotonic() - start, 1),
            'targets': {
                'hit_prefill_flops_ratio_at_2000_tokens': 10,
                'hit_ttft_speedup_at_2000_tokens': 5,
                'batched_16_vs_one_at_a_time': 3,
            },
            'models': models,
        },
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
