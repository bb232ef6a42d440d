"""Query round trip through the node over real DDS: where the time goes for the tiny model.

    make bench        (or: .venv/bin/python -m benchmarks.bench_query [--queries N])

Starts the node in its own process (tiny random-weight model, CPU), asks N
questions through ~/query and N through ~/ask, and reports medians of the
client-measured round trip next to the node's own split (queue, prefill,
decode), so the ROS/DDS overhead is the difference. Also times building the
interface packages from source with the wheels. Writes
benchmarks/results/query.json.
"""

import argparse
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

from adatoken3d_node import parameters
from adatoken3d_lab.dds_env import apply_loopback_environment

from .common import RESULTS, machine, write_results

QUESTION = 'What is on the table next to the red chair?'


def median(values):
    return round(statistics.median(values), 3)


def interface_build_seconds() -> float:
    with tempfile.TemporaryDirectory() as build_dir:
        start = time.monotonic()
        subprocess.run(
            [
                sys.executable,
                str(RESULTS.parent.parent / 'tools' / 'pip_ros_env.py'),
                'build-interfaces',
                '--build-dir',
                build_dir,
            ],
            check=True,
            capture_output=True,
        )
        return round(time.monotonic() - start, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--queries', type=int, default=40)
    parser.add_argument('--max-new-tokens', type=int, default=16)
    args = parser.parse_args()
    apply_loopback_environment()
    from adatoken3d_node.client import NodeProcess, QueryClient

    build_s = interface_build_seconds()
    log = tempfile.NamedTemporaryFile(prefix='bench-node-', suffix='.log', delete=False).name
    params = pathlib.Path(tempfile.mkdtemp()) / 'params.yaml'  # no sensors: answer without a scene
    values = parameters.defaults()
    values['require_scene'] = False
    params.write_text(yaml.safe_dump({'/**': {'ros__parameters': values}}))
    # The random checkpoint: what is measured is the ROS and decoding path, not a model.
    from adatoken3d_lab.random_checkpoint import create_random_llava3d

    model = create_random_llava3d(params.parent / 'random-llava3d', params.parent / 'random-llava3d-clip', seed=0)
    with (
        NodeProcess(['device:=cpu', f'model_path:={model}', f'params_file:={params}'], log_path=log) as node,
        QueryClient() as client,
    ):
        start = time.monotonic()
        client.wait_for_node(timeout=180)
        ready_s = time.monotonic() - start
        client.query(QUESTION, max_new_tokens=args.max_new_tokens)  # first call: discovery of the response path
        service = []
        for _ in range(args.queries):
            t0 = time.perf_counter()
            response = client.query(QUESTION, max_new_tokens=args.max_new_tokens)
            service.append(((time.perf_counter() - t0) * 1e3, response.metrics))
        action = []
        for _ in range(args.queries):
            first = []
            t0 = time.perf_counter()
            _, result = client.ask(
                QUESTION,
                max_new_tokens=args.max_new_tokens,
                on_feedback=lambda f: first.append(time.perf_counter()) if not first else None,
            )
            action.append(((time.perf_counter() - t0) * 1e3, (first[0] - t0) * 1e3, result.metrics))
        node_log = node.log()

    def split(rows):
        metrics = [row[-1] for row in rows]
        return {
            'round_trip_ms_median': median([row[0] for row in rows]),
            'node_total_ms_median': median([m.total_ms for m in metrics]),
            'queue_ms_median': median([m.queue_ms for m in metrics]),
            'prefill_ms_median': median([m.prefill_ms for m in metrics]),
            'decode_ms_median': median([m.decode_ms for m in metrics]),
            'ros_overhead_ms_median': median([row[0] - row[-1].total_ms for row in rows]),
            'text_tokens': metrics[0].text_tokens,
            'generated_tokens_median': median([m.generated_tokens for m in metrics]),
            'prefill_flops': metrics[0].prefill_flops,
        }

    results = {
        'benchmark': 'query round trip, tiny random-weight model, node and client in separate processes',
        'command': 'make bench',
        'machine': machine(),
        'queries_per_path': args.queries,
        'max_new_tokens': args.max_new_tokens,
        'interface_build_s': build_s,
        'node_start_to_ready_s': round(ready_s, 1),
        'service': split(service),
        'action': {**split([(r[0], r[2]) for r in action]), 'first_feedback_ms_median': median([r[1] for r in action])},
        'untrained_model': 'UNTRAINED' in node_log,
    }
    write_results('query', results)
    print(
        f"service: round trip {results['service']['round_trip_ms_median']} ms median "
        f"(node {results['service']['node_total_ms_median']} ms, ROS overhead "
        f"{results['service']['ros_overhead_ms_median']} ms); action first feedback "
        f"{results['action']['first_feedback_ms_median']} ms; interfaces build {build_s} s"
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
