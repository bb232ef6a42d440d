"""How often the node meets its latency budgets: a moving camera replayed, budgeted questions over DDS.

    python -m benchmarks.bench_deadline                 (make bench: benchmarks/results/deadline.json)
    tests/ros/test_deadline.py                          (one room, in make test)

The node runs in its own process (adatoken3d-bringup) with its default parameters (the shipped model,
`gating: auto`, the default budget), on the project's loopback DDS profile, reliable sensor QoS so that
no view is lost to the replay. Each room of the held-out test split (seeds training never saw) is
recorded as a bag of a camera walking `laps` times around it, each lap from other poses, and replayed
at its recorded rate: views enter the memory while questions are asked, and once it holds max_views
the oldest leave. Each room's bag starts its stamps again, so the node clears its memory between rooms.

First the dense time is measured: a node without the prefix cache answers the first rooms' questions
(evaluate.scene_questions) with no budget of their own (the node's default, which the shipped model
meets densely), spread over the replay; the median sets the budget levels, `levels` x that median.
Then, while each room replays, the node with its defaults is asked its questions one at a time, spread
evenly over the replay, each `repeats` times at every level and once more with the node's default
budget (the dense reference, asked at the same moments: accuracy is compared on the same questions
about the same memory), the levels of a question in a seeded order. Every
answer's metrics give its latency, whether it met the deadline, the share of spatial tokens kept,
whether it reused the cached scene prefix, and, from its `gating` label, the controller's prediction
and whether it had predicted a miss even at its floor. A miss predicted at the floor counts apart
from the hit rate: the budget was out of reach.

Run once on an idle machine and once beside `load_processes` busy processes (a competing CPU load):
the budgets stay the same milliseconds, as a robot's deadlines do.
"""

import collections
import contextlib
import multiprocessing
import pathlib
import re
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np

from adatoken3d_lab.bags import LOSSLESS_REPLAY_PARAMETERS, BagPlayer, CameraTopics, write_rgbd_bag
from adatoken3d_lab.stats import PairedBootstrap
from adatoken3d_lab.synthetic import room_frames
from adatoken3d_lab.training import questions
from adatoken3d_lab.training.dataset import RENDER_SIZES, SPLITS, STANDARD_KIND, scene_objects
from adatoken3d_lab.training.evaluate import EVAL_QUESTIONS_PER_FAMILY, is_correct
from adatoken3d_node import parameters
from adatoken3d_node.client import NodeProcess, QueryClient

REFERENCE = 'reference'  # the questions asked with the node's default budget, answered densely
NO_VIEW = 'no usable view'  # the refusal before the room's first view is in memory: asked again
PREDICTED = re.compile(r'predicted (\d+) ms')
TERMS_MS = ('queue_ms', 'scene_ms', 'vision_ms', 'prefill_ms', 'decode_ms')  # of total_ms, from the metrics
FLOOR = 'floor; the budget is predicted to be missed'  # in the gating label (pipeline.AnswerPipeline.answer)


@dataclass
class DeadlineConfig:
    rooms: int = 13  # x 12 questions x repeats: >= 300 queries a level
    calibration_rooms: int = 2  # whose questions measure the dense time first
    laps: int = 4  # camera walks around each room; views per lap: 8
    view_period_s: float = 0.35
    levels: Sequence[float] = (0.3, 0.5, 0.8)  # budgets as shares of the dense reference's median
    questions_per_family: int = EVAL_QUESTIONS_PER_FAMILY
    repeats: int = 2  # each question asked this many times at each level
    model_path: str = ''  # empty: the shipped model
    namespace: str = 'deadline'

    @property
    def replay_s(self) -> float:
        """How long a room's replay lasts: its questions are spread over it."""
        return self.laps * STANDARD_KIND.views * self.view_period_s


@dataclass
class Room:
    seed: int
    bag: pathlib.Path
    qas: List[questions.QA]


def make_rooms(config: DeadlineConfig, workdir: pathlib.Path) -> List[Room]:
    """The test split's first `rooms` rooms, each as a bag of `laps` walks around it and its questions."""
    kind = STANDARD_KIND
    rooms = []
    for i in range(config.rooms):
        seed = SPLITS['test'] + i
        objects = scene_objects(seed, kind)
        width, height = RENDER_SIZES[seed % len(RENDER_SIZES)]
        period_ns = int(config.view_period_s * 1e9)
        frames = []
        for lap in range(config.laps):  # lap 0 is the test split's own walk; later laps from other poses
            frames += room_frames(
                objects,
                n_views=kind.views,
                width=width,
                height=height,
                seed=seed if lap == 0 else seed * 100 + lap,
                max_range_m=kind.max_range_m,
                room_half_m=kind.room_half_m,
                start_ns=1_000_000_000 + lap * kind.views * period_ns,
                period_s=config.view_period_s,
            )
        bag = write_rgbd_bag(workdir / f'room_{seed}', frames, CameraTopics(), storage='mcap')
        qas = questions.sample(objects, np.random.default_rng(seed), config.questions_per_family)
        rooms.append(Room(seed, bag, qas))
    return rooms


def busy(stop) -> None:
    """A competing CPU load: matrix products until stop is set (one process per core)."""
    a = np.random.default_rng(0).standard_normal((256, 256))
    while not stop.is_set():
        a = np.tanh(a @ a)


class CompetingLoad:
    """`processes` busy processes while in the with-block."""

    def __init__(self, processes: int):
        context = multiprocessing.get_context('spawn')
        self._stop = context.Event()
        self._workers = [context.Process(target=busy, args=(self._stop,), daemon=True) for _ in range(processes)]

    def __enter__(self):
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for worker in self._workers:
            worker.join(10)


def answer_record(response, qa: questions.QA, level: str, repeat: int, seed: int, budget_ms: float) -> dict:
    m = response.metrics
    predicted = PREDICTED.search(m.gating)
    return {
        'level': level,
        'room': seed,
        'question': qa.question,
        'repeat': repeat,
        'correct': bool(is_correct(response.answer, qa.answer)),
        'budget_ms': budget_ms,
        'node_budget_ms': float(m.latency_budget_ms),
        'total_ms': float(m.total_ms),
        **{term: round(float(getattr(m, term)), 1) for term in TERMS_MS},
        'generated_tokens': int(m.generated_tokens),
        'met': bool(m.deadline_met),
        'floor': FLOOR in m.gating,
        'predicted_ms': float(predicted.group(1)) if predicted else None,
        'kept': m.spatial_tokens_kept / m.spatial_tokens if m.spatial_tokens else 1.0,
        'prefix_reused': bool(m.prefix_reused),
        'views': int(m.num_views),
        'gating': m.gating,
        'policy': m.gating.rsplit(', ', 1)[-1],  # what ran, after the controller's own words
    }


def ask(client: QueryClient, question: str, budget_ms: float, timeout_s: float = 120.0):
    """A query's response; asked again while the room's first view is not in memory yet."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.query(question, budget_ms, timeout=timeout_s)
        if response.success or NO_VIEW not in response.error or time.monotonic() > deadline:
            return response
        time.sleep(0.02)  # the replay's first view is on its way: ask again shortly


def run_room(client: QueryClient, player: BagPlayer, room: Room, plan, duration_s: float, log) -> List[dict]:
    """Replay the room while asking its plan, (qa, level label, repeat, budget ms), in order and spread
    evenly over the replay's duration_s: the i-th question is asked at i x duration_s / len(plan), or
    when the one before is answered if that is later (one at a time: no question waits in the queue)."""
    stop = threading.Event()
    replay = threading.Thread(target=player.play, kwargs={'should_stop': stop.is_set}, daemon=True)
    replay.start()
    records = []
    start, interval = time.monotonic(), duration_s / max(len(plan), 1)
    try:
        for i, (qa, level, repeat, budget_ms) in enumerate(plan):
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the questions along the replay, not a wait for a condition
            response = ask(client, qa.question, budget_ms)
            if not response.success:
                raise RuntimeError(f'room {room.seed}: {qa.question!r} at {level} refused: {response.error}')
            records.append(answer_record(response, qa, level, repeat, room.seed, budget_ms))
            records[-1]['replaying'] = replay.is_alive()
    finally:
        stop.set()
        replay.join(60)
    log(f'room {room.seed}: {len(records)} answered')
    return records


def start_node(config: DeadlineConfig, workdir: pathlib.Path, topics: CameraTopics, **overrides):
    import yaml

    values = parameters.defaults()  # the product's defaults: gating auto under the default budget
    values.update(LOSSLESS_REPLAY_PARAMETERS, **overrides)
    params = workdir / f'params_{len(overrides)}.yaml'
    params.write_text(yaml.safe_dump({'/**': {'ros__parameters': values}}))
    model = [f'model_path:={config.model_path}'] if config.model_path else []
    return NodeProcess(
        [f'namespace:={config.namespace}', *model, f'params_file:={params}', *topics.remap_arguments()],
        log_path=str(workdir / f'node_{len(overrides)}.log'),
    ).start()


def budget_plan(rooms: Sequence[Room], budgets: Dict[str, float], repeats: int, seed: int = 0) -> Dict[int, list]:
    """Per room: (qa, level, repeat, budget ms), each question at each level `repeats` times, the levels
    of one question in a seeded order (so no level always comes first after a new view). budgets: level
    label -> ms, 0 for the node's default (REFERENCE)."""
    rng = np.random.default_rng(seed)
    plans = {}
    for room in rooms:
        plan = []
        for repeat in range(repeats):
            for qa in room.qas:
                for level in rng.permutation(list(budgets)):
                    plan.append((qa, str(level), repeat, budgets[str(level)]))
        plans[room.seed] = plan
    return plans


def run_pass(client, player_for, rooms, plans, duration_s: float, log) -> List[dict]:
    records = []
    for room in rooms:
        player = player_for(room)
        try:
            records += run_room(client, player, room, plans[room.seed], duration_s, log)
        finally:
            player.close()
    return records


def dense_reference_ms(records: Sequence[dict]) -> float:
    """The median time of the dense answers that recomputed the prompt: what the budget levels are
    shares of."""
    recomputed = [r['total_ms'] for r in records if r['kept'] == 1.0 and not r['prefix_reused']]
    if not recomputed:
        raise RuntimeError('no answer recomputed its prompt densely: no dense time to set the budgets by')
    return float(np.median(recomputed))


def key(record: dict) -> tuple:
    return record['room'], record['question'], record['repeat']


def summarise(records: Sequence[dict]) -> dict:
    """Per level: hit rate (the floor's predicted misses apart), latency percentiles, keep ratio, prefix
    reuse, prediction error, and accuracy beside the dense reference's on the same questions asked at
    the same moments (paired cluster bootstrap over rooms)."""
    reference = {key(r): r for r in records if r['level'] == REFERENCE}
    out = {}
    for level in sorted({r['level'] for r in records} - {REFERENCE}, key=float):
        rows = [r for r in records if r['level'] == level]
        reachable = [r for r in rows if not r['floor']]
        errors = [r['total_ms'] - r['predicted_ms'] for r in rows if r['predicted_ms'] is not None]
        latency = [r['total_ms'] for r in rows]
        paired = PairedBootstrap(
            {'level': [r['correct'] for r in rows], 'dense': [reference[key(r)]['correct'] for r in rows]},
            [r['room'] for r in rows],
        )
        out[level] = {
            'budget_ms': round(rows[0]['budget_ms'], 1),
            'queries': len(rows),
            'floor_predicted_misses': len(rows) - len(reachable),
            'hit_rate_where_floor_fits': round(float(np.mean([r['met'] for r in reachable])), 4) if reachable else None,
            'hit_rate_all': round(float(np.mean([r['met'] for r in rows])), 4),
            'missed_where_floor_fits': sum(not r['met'] for r in reachable),
            'misses_where_floor_fits': [
                {
                    k: r[k]
                    for k in ('room', 'total_ms', 'predicted_ms', *TERMS_MS, 'generated_tokens', 'views', 'gating')
                }
                for r in reachable
                if not r['met']
            ],
            'latency_ms': {q: round(float(np.percentile(latency, int(q[1:]))), 1) for q in ('p50', 'p95', 'p99')},
            'keep_ratio_mean': round(float(np.mean([r['kept'] for r in rows])), 3),
            'policies': dict(collections.Counter(r['policy'] for r in rows if not r['prefix_reused'])),
            'prefix_reused_share': round(float(np.mean([r['prefix_reused'] for r in rows])), 3),
            'asked_while_replaying_share': round(float(np.mean([r['replaying'] for r in rows])), 3),
            'prediction_error_ms': {
                'mean': round(float(np.mean(errors)), 1),
                'mean_abs': round(float(np.mean(np.abs(errors))), 1),
                'p95_late': round(float(np.percentile(errors, 95)), 1),
            }
            if errors
            else None,
            'accuracy': paired.accuracy('level').as_json(100, 1),  # percent
            'accuracy_dense_same_questions': paired.accuracy('dense').as_json(100, 1),
            'accuracy_minus_dense_points': paired.difference('level', 'dense').as_json(100, 1),
        }
    rows = list(reference.values())
    out[REFERENCE] = {
        'queries': len(rows),
        'node_budget_ms': rows[0]['node_budget_ms'] if rows else None,
        'dense_share': round(float(np.mean([r['kept'] == 1.0 for r in rows])), 3),
        'met_default_budget': round(float(np.mean([r['met'] for r in rows])), 4),
        'latency_ms': {
            q: round(float(np.percentile([r['total_ms'] for r in rows], int(q[1:]))), 1) for q in ('p50', 'p95')
        },
        'prefix_reused_share': round(float(np.mean([r['prefix_reused'] for r in rows])), 3),
    }
    return out


@contextlib.contextmanager
def running_node(config: DeadlineConfig, workdir: pathlib.Path, topics: CameraTopics, **overrides):
    """The node (defaults, but for overrides) and a client to it; yields (node, client, player_for)."""
    node = start_node(config, workdir, topics, **overrides)
    client = QueryClient(namespace=config.namespace, name=f'{config.namespace}_client')
    try:
        client.wait_for_node(timeout=300)
        client.wait_until(lambda: 'gating' in client.latest_diagnostics(), 60, 'the node\'s diagnostics')

        def player_for(room: Room) -> BagPlayer:
            player = BagPlayer(room.bag, context=client.context, node_name=f'deadline_player_{room.seed}')
            player.wait_until_heard(client, topics, 120)
            return player

        yield node, client, player_for
        if not node.alive():
            raise RuntimeError(f'the node exited; its log: {node.log_path}')
    finally:
        client.close()
        node.stop()


def run_deadline(
    config: DeadlineConfig, workdir: pathlib.Path, load_processes: Sequence[int] = (0,), log=print
) -> dict:
    """The dense time (a node without the prefix cache, so that every answer recomputes its prompt), then
    the node with its defaults: the budgeted pass once per entry of load_processes (0: idle)."""
    workdir.mkdir(parents=True, exist_ok=True)
    topics = CameraTopics()
    rooms = make_rooms(config, workdir)
    log(f'{len(rooms)} rooms, {sum(len(r.qas) for r in rooms)} questions')
    calibration = rooms[: config.calibration_rooms]
    with running_node(config, workdir, topics, prefix_cache=False) as (_, client, player_for):
        plans = budget_plan(calibration, {REFERENCE: 0.0}, config.repeats * (len(config.levels) + 1))
        dense = run_pass(client, player_for, calibration, plans, config.replay_s, log)
    dense_ms = dense_reference_ms(dense)
    budgets = {f'{level:g}': level * dense_ms for level in config.levels}
    log(f'dense {dense_ms:.1f} ms; budgets {budgets}')
    plans = budget_plan(rooms, {**budgets, REFERENCE: 0.0}, config.repeats)
    conditions = {}
    with running_node(config, workdir, topics) as (_, client, player_for):
        diagnostics = client.latest_diagnostics()
        for processes in load_processes:
            label = 'idle' if processes == 0 else f'load_{processes}'
            with CompetingLoad(processes):
                records = run_pass(client, player_for, rooms, plans, config.replay_s, log)
            conditions[label] = {'competing_processes': processes, 'levels': summarise(records)}
            log(f'{label}: {conditions[label]["levels"]}')
    return {
        'rooms': [room.seed for room in rooms],
        'questions_per_room': [len(room.qas) for room in rooms],
        'node': {
            'gating': diagnostics.get('gating'),
            'gating_note': diagnostics.get('gating_note'),
            'default_budget_ms': parameters.defaults()['latency_budget_ms'],
        },
        'dense': {
            'queries': len(dense),
            'median_ms': round(dense_ms, 1),
            'p95_ms': round(float(np.percentile([r['total_ms'] for r in dense], 95)), 1),
            'all_dense': all(r['kept'] == 1.0 for r in dense),
            'accuracy': round(float(np.mean([r['correct'] for r in dense])), 4),
        },
        'budgets_ms': {k: round(v, 1) for k, v in budgets.items()},
        'conditions': conditions,
    }
