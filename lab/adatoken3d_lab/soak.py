"""A soak run of the node: a looped bag replay with questions all along, the node's process sampled.

    python -m benchmarks.bench_soak --minutes 30      (make soak: writes benchmarks/results/soak.json)
    tests/ros/test_soak.py                             (the 2-minute version, in make test)

The node runs in its own process (adatoken3d-bringup, the shipped model unless model_path is given) on
the project's loopback DDS profile. A rendered room, recorded as a bag, is replayed in a loop; its
stamps start again at each loop, so time jumps back and the node clears its scene memory every loop,
as it does for a looped bag on a robot. A question is asked every `question_period_s` and a flood of
`flood_size` questions every `flood_period_s`; every request must get a response (an answer, or a
refusal with its reason: a flood overflows the queue). Every `sample_period_s` the node's resident
memory, open file descriptors and threads are read from /proc, with the latency of the answers of that
period. Growth is judged after a warm-up (the first `warmup_share` of the run): the slope of resident
memory (least squares, MB per 10 minutes) and the spread of descriptors and threads.
"""

import os
import pathlib
import threading
import time
from dataclasses import dataclass
from typing import List

import numpy as np

from adatoken3d_lab.bags import LOSSLESS_REPLAY_PARAMETERS, BagPlayer, CameraTopics, write_rgbd_bag
from adatoken3d_lab.synthetic import make_scene, orbit_frames
from adatoken3d_node import parameters
from adatoken3d_node.client import NodeProcess, QueryClient

QUESTIONS = ('What is in the room?', 'Where is the red box?', 'How many objects are there?', 'What colour is it?')


@dataclass
class SoakConfig:
    minutes: float = 30.0
    question_period_s: float = 2.0
    flood_period_s: float = 300.0
    flood_size: int = 100
    sample_period_s: float = 10.0
    warmup_share: float = 0.2
    model_path: str = ''  # empty: the shipped model
    namespace: str = 'soak'


def process_sample(pid: int) -> dict:
    """Resident memory (MB), open file descriptors and threads of a live process, from /proc."""
    status = pathlib.Path(f'/proc/{pid}/status').read_text().splitlines()
    fields = dict(line.split(':', 1) for line in status if ':' in line)
    return {
        'rss_mb': int(fields['VmRSS'].split()[0]) / 1024,
        'fds': len(os.listdir(f'/proc/{pid}/fd')),
        'threads': int(fields['Threads']),
    }


def slope_per_10_min(times_s: List[float], values: List[float]) -> float:
    """Least-squares slope of values over time, per 10 minutes (0 with fewer than 2 samples)."""
    if len(times_s) < 2:
        return 0.0
    return float(np.polyfit(np.array(times_s) / 600.0, np.array(values), 1)[0])


def run_soak(config: SoakConfig, workdir: pathlib.Path, log=print) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    topics = CameraTopics()
    frames = orbit_frames(make_scene(seed=11), n_views=8, width=160, height=120)
    bag = write_rgbd_bag(workdir / 'room', frames, topics, storage='mcap')
    values = parameters.defaults()
    values.update(keyframe_min_translation_m=0.0, keyframe_min_rotation_deg=0.0, **LOSSLESS_REPLAY_PARAMETERS)
    import yaml

    params = workdir / 'params.yaml'
    params.write_text(yaml.safe_dump({'/**': {'ros__parameters': values}}))
    model = [f'model_path:={config.model_path}'] if config.model_path else []
    node = NodeProcess(
        [f'namespace:={config.namespace}', *model, f'params_file:={params}', *topics.remap_arguments()],
        log_path=str(workdir / 'node.log'),
    ).start()
    client = QueryClient(namespace=config.namespace, name=f'{config.namespace}_client')
    stop = threading.Event()
    loops = [0]
    try:
        client.wait_for_node(timeout=300)
        player = BagPlayer(bag, context=client.context)
        player.wait_until_heard(client, topics, 120)

        def replay():
            while not stop.is_set():
                player.play()  # the stamps start again: the node sees time jump back and clears its memory
                loops[0] += 1

        replayer = threading.Thread(target=replay, name='soak-replay', daemon=True)
        replayer.start()
        client.wait_until(lambda: int(client.latest_diagnostics().get('views_in_memory', 0)) > 0, 120, 'a view')

        start = time.monotonic()
        end = start + config.minutes * 60
        pending, done, samples = [], [], []
        next_question = next_flood = start
        next_sample = start + config.sample_period_s
        asked = 0
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_question:
                pending.append((now, client.query_async(QUESTIONS[asked % len(QUESTIONS)])))
                asked += 1
                next_question += config.question_period_s
            if now >= next_flood and now > start:
                for i in range(config.flood_size):
                    pending.append((now, client.query_async(f'Flood {i}: {QUESTIONS[i % len(QUESTIONS)]}')))
                asked += config.flood_size
                next_flood += config.flood_period_s
            elif now >= next_flood:
                next_flood += config.flood_period_s  # the first flood one period in
            still = []
            for sent, future in pending:
                (done if future.done() else still).append((sent, future))
            pending = still
            if now >= next_sample:
                if not node.alive():
                    raise RuntimeError(f'the node exited during the soak; its log: {workdir / "node.log"}')
                answered = [f.result() for _, f in done if f.result().success]
                window = [r.metrics.total_ms for r in answered if r.metrics.total_ms > 0][-50:]
                sample = {'t_s': round(now - start, 1), **process_sample(node.process.pid), 'loops': loops[0]}
                sample['latency_p50_ms'] = round(float(np.median(window)), 1) if window else None
                samples.append(sample)
                log(f'soak {sample}')
                next_sample += config.sample_period_s
            time.sleep(0.05)  # pacing the question schedule, not a wait for a condition
        deadline = time.monotonic() + 300
        while pending and time.monotonic() < deadline:  # every request must get its response
            done += [(sent, future) for sent, future in pending if future.done()]
            pending = [(sent, future) for sent, future in pending if not future.done()]
            time.sleep(0.05)
        stop.set()
        responses = [f.result() for _, f in done]
        refused = [r for r in responses if not r.success]
        after = [s for s in samples if s['t_s'] >= config.warmup_share * config.minutes * 60]
        latencies = [r.metrics.total_ms for r in responses if r.success]
        result = {
            'minutes': config.minutes,
            'asked': asked,
            'answered': len(responses) - len(refused),
            'refused': len(refused),
            'refusal_reasons': sorted({r.error for r in refused}),
            'lost': asked - len(responses),
            'node_alive': node.alive(),
            'loops': loops[0],
            'latency_ms': {
                'p50': round(float(np.percentile(latencies, 50)), 1) if latencies else None,
                'p95': round(float(np.percentile(latencies, 95)), 1) if latencies else None,
                'max': round(float(np.max(latencies)), 1) if latencies else None,
            },
            'after_warmup': {
                'samples': len(after),
                'rss_mb_slope_per_10_min': round(
                    slope_per_10_min([s['t_s'] for s in after], [s['rss_mb'] for s in after]), 3
                ),
                'rss_mb_range': [round(min(s['rss_mb'] for s in after), 1), round(max(s['rss_mb'] for s in after), 1)]
                if after
                else None,
                'fds_range': [min(s['fds'] for s in after), max(s['fds'] for s in after)] if after else None,
                'threads_range': [min(s['threads'] for s in after), max(s['threads'] for s in after)]
                if after
                else None,
            },
            'samples': samples,
        }
        replayer.join(60)
        player.close()
        return result
    finally:
        stop.set()
        client.close()
        node.stop()
