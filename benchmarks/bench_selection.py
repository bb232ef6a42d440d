"""What a selection before the language model costs in time, beside the dense prefill it saves on. ROS-free.

    .venv/bin/python -m benchmarks.bench_selection            (make bench; the shipped scene model, CPU)
    python -m benchmarks.bench_selection --model DIR --device cuda

On held-out test scenes (about 350 spatial tokens) and clutter scenes (about 1600), every question is
answered densely and under each selection, side by side, through the node's answer path
(SceneAnswerer, one new token): the selection's own time (SceneAnswer.selection_ms: the coarser
pooling, the layer-0 score with the whole prompt it needs, picking and merging; not the pooling,
projector and prompt a dense answer builds too) against the dense prefill of the same question, as
medians, and the selection's FLOPs against the dense prefill's, as counted.

Writes benchmarks/results/selection.json.
"""

import argparse
import statistics
import sys
import time

from adatoken3d_node.model.scene_qa import SceneAnswerer
from adatoken3d_node.perception.frontend import FrontEndConfig
from adatoken3d_node.share import default_model_dir
from adatoken3d_lab.training.dataset import render_split
from adatoken3d_lab.training.evaluate import scene_questions

from .common import machine, write_results

POLICIES = (
    'random:0:0.1',
    'random:0:0.1[merge]',
    'kcentre:0.1',
    'kcentre:0.1[merge]',
    'kcentre:0.5[merge]',
    'fastv:0:0.1~question',
    'fastv:0:0.1[merge]~question',
    'fastv:0:0.08[near=0.5]~question',
    'kcentre:0.1~question',
    'kcentre:0.1[merge]~question',
    'voxel:0.6',
    'kcentre:0.25[merge]+fastv:1:0.2~question',
)


def measure(answerer, config, split: str, scenes: int, questions: int) -> dict:
    """Every policy and dense on the first `questions` questions of each scene: medians and FLOPs shares."""
    dense_ms, rows = [], {text: {'selection_ms': [], 'flops': 0.0, 'dense_flops': 0.0} for text in POLICIES}
    tokens = []
    for record in render_split(split, scenes, config):
        scene = record.geometry(config)
        tokens.append(scene.num_tokens)
        answerer.answer('What is in the scene?', scene, answerer.policy('none'), 1)  # CLIP features cached
        for qa in scene_questions(record)[:questions]:
            dense_ms.append(answerer.answer(qa.question, scene, answerer.policy('none'), 1).prefill_ms)
            for text in POLICIES:
                answer = answerer.answer(qa.question, scene, answerer.policy(text), 1)
                rows[text]['selection_ms'].append(answer.selection_ms)
                rows[text]['flops'] += answer.selection_flops
                rows[text]['dense_flops'] += answer.prefill_flops_dense
    dense = statistics.median(dense_ms)
    out = {}
    for text, row in rows.items():
        ms = statistics.median(row['selection_ms'])
        out[text] = {
            'selection_ms_median': round(ms, 3),
            'time_share_of_dense_prefill': round(ms / dense, 4),
            'flops_share_of_dense_prefill': round(row['flops'] / row['dense_flops'], 5),
        }
        print(
            f'{split:8s} {text:45s} {ms:7.2f} ms  {ms / dense:6.1%} of dense prefill  '
            f'FLOPs {row["flops"] / row["dense_flops"]:.2%}',
            flush=True,
        )
    return {
        'scenes': scenes,
        'questions': len(dense_ms),
        'mean_spatial_tokens': round(sum(tokens) / len(tokens), 1),
        'dense_prefill_ms_median': round(dense, 3),
        'policies': out,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='bench_selection', description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default=None, help='default: the shipped scene model')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--scenes', type=int, default=6, help='scenes of each split')
    parser.add_argument('--questions', type=int, default=6, help='questions of each scene')
    args = parser.parse_args(argv)
    answerer = SceneAnswerer.load(args.model or default_model_dir(), device=args.device)
    config = FrontEndConfig.for_model(answerer.model)
    start = time.monotonic()
    splits = {split: measure(answerer, config, split, args.scenes, args.questions) for split in ('test', 'clutter')}
    write_results(
        'selection',
        {
            'benchmark': 'selection',
            'machine': machine(),
            'command': 'python -m benchmarks.bench_selection'
            + (f' --device {args.device}' if args.device != 'cpu' else ''),
            'model': str(args.model or default_model_dir().name),
            'seconds': round(time.monotonic() - start, 1),
            'splits': splits,
        },
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
