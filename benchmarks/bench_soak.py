"""The soak run (adatoken3d_lab.soak): the node for --minutes on a looped bag replay, a question every 2 s
and a flood of 100 every 5 minutes; its memory, descriptors, threads and latency sampled every 10 s.

    .venv/bin/python -m benchmarks.bench_soak --minutes 30     (make soak; not in make bench)

Targets: no growth beyond the warm-up (resident memory slope under 1 MB per 10 minutes, descriptors and
threads constant), no lost query, no crash. Writes benchmarks/results/soak.json.
"""

import argparse
import pathlib
import sys
import tempfile
import time

from adatoken3d_lab.soak import SoakConfig, run_soak

from .common import machine, write_results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='bench_soak', description=__doc__.split('\n\n')[0])
    parser.add_argument('--minutes', type=float, default=30.0)
    parser.add_argument('--model', default='', help='default: the shipped scene model')
    args = parser.parse_args(argv)
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as root:
        result = run_soak(SoakConfig(minutes=args.minutes, model_path=args.model), pathlib.Path(root))
    growth = result['after_warmup']
    targets = {
        'rss_mb_slope_per_10_min_below': 1.0,
        'met': result['lost'] == 0
        and result['node_alive']
        and growth['rss_mb_slope_per_10_min'] < 1.0
        and growth['fds_range'][0] == growth['fds_range'][1]
        and growth['threads_range'][0] == growth['threads_range'][1],
    }
    write_results(
        'soak',
        {
            'benchmark': 'soak',
            'machine': machine(),
            'command': f'python -m benchmarks.bench_soak --minutes {args.minutes:g}',
            'seconds': round(time.monotonic() - start, 1),
            'targets': targets,
            **result,
        },
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
