"""Deadline hit rate (adatoken3d_lab.deadline): the node with its defaults on a replayed moving camera,
budgeted questions at 3 levels that the dense answer misses, on an idle machine and beside a CPU load.

    .venv/bin/python -m benchmarks.bench_deadline        (make bench; about 15 minutes on 2 cores)

Target: at every level, >= 99% of the budgeted queries whose floor was predicted to fit meet their
deadline (the floor's predicted misses are counted apart). Writes benchmarks/results/deadline.json.
"""

import argparse
import os
import pathlib
import sys
import tempfile
import time

from adatoken3d_lab.deadline import REFERENCE, DeadlineConfig, run_deadline

from .common import machine, write_results

TARGET_HIT_RATE = 0.99


def targets_met(conditions: dict) -> dict:
    """Per condition and level: whether the hit rate where the floor fits reaches TARGET_HIT_RATE."""
    return {
        condition: {
            level: bool(row['hit_rate_where_floor_fits'] is None or row['hit_rate_where_floor_fits'] >= TARGET_HIT_RATE)
            for level, row in result['levels'].items()
            if level != REFERENCE
        }
        for condition, result in conditions.items()
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='bench_deadline', description=__doc__.split('\n\n')[0])
    parser.add_argument('--rooms', type=int, default=DeadlineConfig.rooms)
    parser.add_argument('--repeats', type=int, default=DeadlineConfig.repeats)
    parser.add_argument('--load', type=int, default=os.cpu_count() or 2, help='busy processes in the loaded run')
    parser.add_argument('--model', default='', help='default: the shipped scene model')
    args = parser.parse_args(argv)
    start = time.monotonic()
    config = DeadlineConfig(rooms=args.rooms, repeats=args.repeats, model_path=args.model)
    with tempfile.TemporaryDirectory() as root:
        result = run_deadline(config, pathlib.Path(root), load_processes=(0, args.load))
    met = targets_met(result['conditions'])
    write_results(
        'deadline',
        {
            'benchmark': 'deadline',
            'machine': machine(),
            'command': f'python -m benchmarks.bench_deadline --rooms {args.rooms} --repeats {args.repeats} '
            f'--load {args.load}',
            'seconds': round(time.monotonic() - start, 1),
            'targets': {
                'hit_rate_where_floor_fits': TARGET_HIT_RATE,
                'met': all(all(levels.values()) for levels in met.values()),
                'by_condition': met,
            },
            'config': {
                'laps': config.laps,
                'view_period_s': config.view_period_s,
                'levels': list(config.levels),
                'questions_per_family': config.questions_per_family,
            },
            **result,
        },
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
