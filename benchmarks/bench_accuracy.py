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

Selections before the language model (model/selection.py) run at matched keep ratios (50, 25, 10, 5
and 2% of the spatial tokens): random, k-centre, layer-0 query scores (the question's rows) and the
query-seeded k-centre, each with and without merging, beside coarser voxel pooling (0.3-0.8 m) and two
hybrids. Every row carries paired cluster-bootstrap 95% intervals (lab/stats.py: scenes
resampled, every policy scored on the same draw) of its accuracy, of its difference to dense and to
the random policy nearest in FLOPs (same questions, same scenes), and of its accuracy relative to dense.

The same for two held-out splits drawn differently (training/dataset.SPLIT_KINDS): `shifted`, rooms
in styles the training never saw (synthetic.sample_style), and `clutter`, 12-25 small objects and
1500+ spatial tokens a scene; they go under "splits" in the JSON.

Writes benchmarks/results/accuracy.json and benchmarks/results/accuracy.png.
"""

import argparse
import pathlib
import sys
import time

from adatoken3d_node.model.profiles import frontier_gatings, load_profile, profile_candidates, resolve_gating
from adatoken3d_node.model.scene_qa import SceneAnswerer
from adatoken3d_node.perception.frontend import FrontEndConfig
from adatoken3d_node.share import default_model_dir
from adatoken3d_lab.training import questions
from adatoken3d_lab.training.dataset import render_split
from adatoken3d_lab.training.evaluate import evaluate
from adatoken3d_lab.stats import PairedBootstrap

from .common import RESULTS, machine, write_results

MASS_P = (0.3, 0.5, 0.7, 0.8, 0.9)
NEAR_M = 0.5  # near=R of the location-aware query selection (chosen on the validation split, not on these)
QUESTION = '_question'  # label suffix of a policy scored by the question's tokens
# matched keep ratios of the selections before the LM; 8%: 90% fewer tokens and 85% fewer FLOPs on standard rooms
KEEP_RATIOS = (0.5, 0.25, 0.1, 0.08, 0.05, 0.02)
SELECTIONS = {  # label prefix -> gating text at keep ratio r
    'random_pre': 'random:0:{r}',
    'random_pre_merge': 'random:0:{r}[merge]',
    'kcentre': 'kcentre:{r}',
    'kcentre_merge': 'kcentre:{r}[merge]',
    'query': 'fastv:0:{r}~question',
    'query_merge': 'fastv:0:{r}[merge]~question',
    'query_near': f'fastv:0:{{r}}[near={NEAR_M}]~question',
    'kcentre_query': 'kcentre:{r}~question',
    'kcentre_query_merge': 'kcentre:{r}[merge]~question',
}
VOXEL_SIZES = (0.3, 0.4, 0.6, 0.8)
HYBRIDS = {  # a selection to a coarse count, then an in-LM cut at layer 1 (5% and 2% of the tokens left)
    'hybrid_kcentre_merge_25_query_5': 'kcentre:0.25[merge]+fastv:1:0.2~question',
    'hybrid_kcentre_merge_10_query_2': 'kcentre:0.1[merge]+fastv:1:0.2~question',
}


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
    for prefix, text in SELECTIONS.items():
        for r in KEEP_RATIOS:
            out[f'{prefix}_{round(100 * r)}'] = text.format(r=r)
    for size in VOXEL_SIZES:
        out[f'voxel_{round(100 * size)}cm'] = f'voxel:{size}'
    out.update(HYBRIDS)
    return out


def random_reference(label: str, rows: dict) -> str:
    """The random policy at the same cost: a selection's random twin at its keep ratio (merged if it merges:
    only the choice of tokens differs; random with merging against random without), else the unmerged
    random policy nearest in FLOPs reduction."""
    for prefix in sorted(SELECTIONS, key=len, reverse=True):
        if label.startswith(prefix + '_') and label[len(prefix) + 1 :].isdigit():
            twin = ('random_pre_merge_' if prefix.endswith('_merge') else 'random_pre_') + label[len(prefix) + 1 :]
            if twin == label:  # random with merging: against random without it
                twin = 'random_pre_' + label[len(prefix) + 1 :]
            if twin != label and twin in rows:
                return twin
            break
    randoms = [key for key in rows if key.startswith('random') and 'merge' not in key and key != label]
    return min(randoms, key=lambda key: abs(rows[key]['flops_reduction'] - rows[label]['flops_reduction']))


def add_intervals(rows: dict, results: dict) -> None:
    """Paired bootstrap intervals (stats.PairedBootstrap) into every row: accuracy, vs dense, vs random."""
    labels = list(results)
    boot = PairedBootstrap({label: results[label].outcomes for label in labels}, results['dense'].scenes)
    for label in labels:
        row = rows[label]
        row['overall_ci95'] = boot.accuracy(label).as_json()['ci95']
        row['vs_dense_points'] = boot.difference(label, 'dense').as_json(100, 2)
        row['relative_to_dense'] = boot.ratio(label, 'dense').as_json()
        if label == 'dense' or (label.startswith('random') and 'merge' not in label):
            row['vs_random_points'] = None  # dense, or random itself
            continue
        reference = random_reference(label, rows)
        row['vs_random_points'] = {
            'reference': reference,
            'reference_flops_reduction': rows[reference]['flops_reduction'],
            **boot.difference(label, reference).as_json(100, 2),
        }


def run_split(answerer, config, texts: dict, split: str, count: int):
    """Every policy on `count` scenes of a split: (records, the dense Accuracy, label -> JSON row)."""
    records = render_split(split, count, config)
    results = evaluate(answerer, records, config, {label: answerer.policy(text) for label, text in texts.items()})
    dense = results['dense']
    rows = {}
    for label, acc in results.items():
        rows[label] = {'gating': texts[label], **acc.summary()}
        rows[label]['overall_delta_points'] = round(100 * (acc.overall - dense.overall), 2)
    add_intervals(rows, results)
    for label, row in rows.items():
        acc = results[label]
        print(
            f'{split:8s} {label:32s} FLOPs -{acc.flops_reduction:6.1%}  overall {acc.overall:6.1%} '
            + (
                f'{row["overall_ci95"]}  vs {row["vs_random_points"]["reference"]} '
                f'{row["vs_random_points"]["value"]:+.1f} {row["vs_random_points"]["ci95"]}  '
                if row['vs_random_points']
                else f'{row["overall_ci95"]}  '
            )
            + '  '.join(f'{f[:5]} {acc.family(f):5.1%}' for f in questions.FAMILIES),
            flush=True,
        )
    return records, dense, rows


PLOT_KINDS = (  # (label prefix, colour, marker, legend), first match wins
    ('dense', 'k', 'o', 'dense'),
    ('random_pre_merge', 'C3', 'P', 'random + merge (before the LM)'),
    ('random_pre', 'C3', 'x', 'random (before the LM)'),
    ('random', 'salmon', 'x', 'random (in the LM, from layer 1)'),
    ('voxel', 'C5', 's', 'coarser voxels (0.3-0.8 m)'),
    ('kcentre_query_merge', 'C9', 'D', 'query-seeded k-centre + merge'),
    ('kcentre_query', 'C9', 'd', 'query-seeded k-centre'),
    ('kcentre_merge', 'C2', 'D', 'k-centre + merge'),
    ('kcentre', 'C2', 'd', 'k-centre'),
    ('query_merge', 'C4', '*', 'layer-0 query score + merge'),
    ('query_near', 'C6', '^', 'layer-0 query score, near=0.5 m of the question\'s point first'),
    ('query', 'C4', 'v', 'layer-0 query score'),
    ('hybrid', 'C1', 'h', 'k-centre + merge, then a layer-1 cut'),
    ('', '0.6', '.', 'in-LM cuts from layer 1 (schedule, mass, FastV)'),
)


def plot(results: dict, path: pathlib.Path) -> None:
    """Accuracy vs prefill FLOPs reduction per split, 95% bootstrap intervals as bars."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    panels = [('test', results['policies'], results['questions'])]
    panels += [(name, split['policies'], split['questions']) for name, split in results['splits'].items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5.5), sharey=True, squeeze=False)
    for ax, (name, rows, n) in zip(axes[0], panels):
        for label, row in rows.items():
            _, colour, marker, _ = next(kind for kind in PLOT_KINDS if label.startswith(kind[0]))
            x, y = 100 * row['flops_reduction'], 100 * row['overall']
            low, high = (100 * v for v in row['overall_ci95'])
            ax.errorbar(x, y, yerr=[[y - low], [high - y]], color=colour, marker=marker, ms=6, lw=0.8, capsize=2)
        ax.axhline(100 * 0.97 * rows['dense']['overall'], color='k', ls=':', lw=1)
        ax.axvline(85, color='0.7', ls=':', lw=1)
        ax.set_xlim(-2, 100)
        ax.set_title(f'{name} ({n} questions)')
        ax.set_xlabel('prefill FLOPs reduction vs dense (%)')
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel('exact-match accuracy (%), 95% bootstrap interval')
    for _, colour, marker, legend in PLOT_KINDS:
        axes[0][0].errorbar([], [], color=colour, marker=marker, ls='', label=legend)
    axes[0][0].legend(loc='lower left', fontsize=7, title='dotted: 97% of dense, 85% reduction', title_fontsize=7)
    fig.suptitle(f'{results["model"]["name"]}: held-out accuracy vs prefill FLOPs reduction')
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
        # what gating: auto and the budget controller can pick for this checkpoint (its calibrated profile)
        'calibrated_frontier': frontier_gatings(load_profile(model_path)),
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
