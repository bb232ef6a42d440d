"""What pruning costs in answers: held-out accuracy per question family vs prefill-FLOPs reduction. ROS-free.

    .venv/bin/python -m benchmarks.bench_accuracy            (make bench; the shipped scene model, CPU)
    python -m benchmarks.bench_accuracy --model DIR --scenes 200 --device cuda

The shipped model (models/scene-llava3d-tiny, trained by adatoken3d-train-tiny) answers the
questions of held-out test scenes (seeds the training and validation never saw), under every
policy side by side: the same scenes, the same spatial tokens, the same questions, through the
node's own answer path (SceneAnswerer: gated prefill, greedy decoding). Exact match after
lower-casing. FLOPs are the prefill's, counted exactly (scoring included), summed over questions.
Every scored policy but two FastV points also runs with the question's tokens as raters
(`~question`, gating.py), labelled `<label>_question`.

The same for two held-out splits drawn differently (training/dataset.SPLIT_KINDS): `shifted`, rooms
in styles the training never saw (synthetic.sample_style), and `clutter`, 12-25 small objects and
1500+ spatial tokens a scene; they go under "splits" in the JSON.

Writes benchmarks/results/accuracy.json and benchmarks/results/accuracy.png.
"""

import argparse
import pathlib
import sys
import time

from adatoken3d_node.model.profiles import profile_candidates, resolve_gating
from adatoken3d_node.model.scene_qa import SceneAnswerer
from adatoken3d_node.perception.frontend import FrontEndConfig
from adatoken3d_node.share import default_model_dir
from adatoken3d_lab.training import questions
from adatoken3d_lab.training.dataset import render_split
from adatoken3d_lab.training.evaluate import evaluate

from .common import RESULTS, machine, write_results

MASS_P = (0.3, 0.5, 0.7, 0.8, 0.9)
QUESTION = '_question'  # label suffix of a policy scored by the question's tokens


def policies(num_layers: int, model_path) -> dict:
    """label -> gating text. Cuts at L/4, L/2, 3L/4 as AdaToken-3D's 8/16/24 of 32 layers."""
    q, h, t = max(1, num_layers // 4), num_layers // 2, 3 * num_layers // 4
    schedule = f'schedule:{q}:0.5,{h}:0.25,{t}:0.125'
    out = {'dense': 'none', 'adatoken_schedule': schedule}
    if any(p.is_file() for p in profile_candidates(model_path)):
        out['calibrated_auto'] = resolve_gating('auto', model_path)
    for p in MASS_P:
        out[f'mass_p{p}'] = f'mass:{p}@1,{h},{t}[min=0.02]'
    out['fastv_k2_50'] = 'fastv:2:0.5'
    out['fastv_k2_25'] = 'fastv:2:0.25'
    out['fastv_k1_15'] = 'fastv:1:0.15'
    out['random_schedule'] = 'random' + schedule[len('schedule') :]
    out['random_k1_15'] = 'random:1:0.15'
    # Two or three spatial tokens left from layer 1 on: what layer 0 alone reads of the scene. Where this
    # scores like dense, no cut at layer 1 or later can tell a good policy from a bad one.
    out['random_k1_min'] = 'random:1:0.005'
    # The same scored policies with the question's tokens as raters (gating.py, "~question").
    for label in [label for label in out if label.startswith(('adatoken', 'calibrated', 'mass', 'fastv_k1'))]:
        out[f'{label}{QUESTION}'] = f'{out[label]}~question'
    return out


def run_split(answerer, config, texts: dict, split: str, count: int):
    """Every policy on `count` scenes of a split: (records, the dense Accuracy, label -> JSON row)."""
    records = render_split(split, count, config)
    results = evaluate(answerer, records, config, {label: answerer.policy(text) for label, text in texts.items()})
    dense = results['dense']
    rows = {}
    for label, acc in results.items():
        rows[label] = {'gating': texts[label], **acc.summary()}
        rows[label]['overall_delta_points'] = round(100 * (acc.overall - dense.overall), 2)
        print(
            f'{split:8s} {label:27s} FLOPs -{acc.flops_reduction:6.1%}  overall {acc.overall:6.1%}  '
            + '  '.join(f'{f[:5]} {acc.family(f):5.1%}' for f in questions.FAMILIES),
            flush=True,
        )
    return records, dense, rows


def plot(results: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = results['policies']
    kinds = {
        'dense': ('k', 'o'),
        'adatoken': ('C0', 's'),
        'calibrated': ('C0', '*'),
        'mass': ('C2', 'D'),
        'fastv': ('C1', '^'),
        'random': ('C3', 'x'),
    }
    panels = ['overall', *questions.FAMILIES]
    fig, axes = plt.subplots(2, 4, figsize=(15, 7), sharex=True, sharey=True)
    for ax, panel in zip(axes.flat, panels):
        for label, row in rows.items():
            kind = next(k for k in kinds if label.startswith(k))
            colour, marker = kinds[kind]
            if label.endswith(QUESTION):
                colour = 'C4'
            acc = row['overall'] if panel == 'overall' else row['families'][panel]['accuracy']
            ax.scatter(100 * row['flops_reduction'], 100 * acc, c=colour, marker=marker, s=40)
        ax.axvline(63, color='0.7', ls=':', lw=1)
        ax.set_title(panel)
        ax.grid(alpha=0.3)
    axes.flat[-1].axis('off')
    names = {
        'dense': 'dense',
        'adatoken': 'fixed schedule (L/4, L/2, 3L/4)',
        'calibrated': 'calibrated (gating: auto)',
        'mass': 'adaptive mass gate, p = 0.3-0.9',
        'fastv': 'FastV',
        'random': 'random pruning',
    }
    for kind, (colour, marker) in kinds.items():
        axes.flat[-1].scatter([], [], c=colour, marker=marker, s=40, label=names[kind])
    axes.flat[-1].scatter([], [], c='C4', marker='D', s=40, label='the same, scored by the question (~question)')
    axes.flat[-1].legend(loc='center', title='policy (dotted line: 63% reduction)')
    for ax in axes[-1]:
        ax.set_xlabel('prefill FLOPs reduction vs dense (%)')
    for ax in axes[:, 0]:
        ax.set_ylabel('exact-match accuracy (%)')
    fig.suptitle(
        f'{results["model"]["name"]}: held-out accuracy vs prefill FLOPs reduction '
        f'({results["questions"]} questions, {results["scenes"]} scenes)'
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='bench_accuracy', description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', type=pathlib.Path, default=None, help='default: the shipped scene model')
    parser.add_argument('--scenes', type=int, default=60, help='held-out test scenes')
    parser.add_argument('--shifted-scenes', type=int, default=30, help='scenes of the shifted split (0: none)')
    parser.add_argument('--clutter-scenes', type=int, default=15, help='scenes of the clutter split (0: none)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument(
        '--policies', default='', help='comma-separated labels to run (e.g. dense, for a quick look at a model)'
    )
    parser.add_argument('--output', type=pathlib.Path, default=None, help='default: benchmarks/results/accuracy.json')
    args = parser.parse_args(argv)
    model_path = args.model or default_model_dir()
    answerer = SceneAnswerer.load(model_path, device=args.device)
    model = answerer.model
    config = FrontEndConfig.for_model(model)
    texts = policies(answerer.num_layers, model_path)
    if args.policies:
        texts = {label: texts[label] for label in args.policies.split(',')}
    start = time.monotonic()
    records, dense, rows = run_split(answerer, config, texts, 'test', args.scenes)
    seconds = round(time.monotonic() - start, 1)
    spatial = [record.geometry(config).num_tokens for record in records]
    splits = {}
    for split, count in (('shifted', args.shifted_scenes), ('clutter', args.clutter_scenes)):
        if count:
            split_start = time.monotonic()
            split_records, _, split_rows = run_split(answerer, config, texts, split, count)
            tokens = [record.geometry(config).num_tokens for record in split_records]
            splits[split] = {
                'scenes': len(split_records),
                'seeds': [split_records[0].seed, split_records[-1].seed],
                'questions': split_rows['dense']['questions'],
                'mean_spatial_tokens': round(sum(tokens) / len(tokens), 1),
                'min_spatial_tokens': min(tokens),
                'seconds': round(time.monotonic() - split_start, 1),
                'policies': split_rows,
            }
    out = {
        'benchmark': 'accuracy',
        'machine': machine(),
        'command': 'python -m benchmarks.bench_accuracy'
        + ''.join(
            f' --{name.replace("_", "-")} {value}'
            for name, value in vars(args).items()
            if (name.endswith('scenes') or name == 'policies') and value != parser.get_default(name)
        ),
        'model': {'name': pathlib.Path(model_path).name, 'path': str(model_path), 'layers': answerer.num_layers},
        'scenes': len(records),
        'test_seeds': [records[0].seed, records[-1].seed],
        'questions': sum(dense.asked.values()),
        'mean_spatial_tokens': round(sum(spatial) / len(spatial), 1),
        'seconds': seconds,
        'policies': rows,
        'dense_mistakes': [dict(zip(('scene_seed', 'question', 'truth', 'answer'), w)) for w in dense.wrong],
        'splits': splits,
    }
    path = write_results('accuracy', out) if args.output is None else args.output
    if args.output is not None:
        import json

        args.output.write_text(json.dumps(out, indent=2) + '\n')
    plot(out, (RESULTS if args.output is None else args.output.parent) / f'{pathlib.Path(path).stem}.png')
    return 0


if __name__ == '__main__':
    sys.exit(main())
