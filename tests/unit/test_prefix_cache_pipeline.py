"""The query engine's scene prefix cache without ROS (the random checkpoint on the CPU): hits answer as
dense, a new view invalidates, max_scene_age_ms, the background refresh and its abandoning, batches."""

import dataclasses
import threading
import time

import numpy as np
import pytest

from adatoken3d_node import diagnostics
from adatoken3d_node.pipeline import build_engine
from adatoken3d_node.queries import QueryJob
from adatoken3d_node.stats import LatencyStats
from test_pipeline import add_floor_view, config

QUESTIONS = ('Where is the chair?', 'What is at [0.1, 0.2, 0.0]?', 'How many boxes?', 'Colour of the floor?')


@pytest.fixture(scope='module')
def engine(random_model):
    built = build_engine(config(model_path=str(random_model), max_new_tokens=4, prefix_refresh=False))
    built.worker.open()
    yield built
    built.release()


def set_cache(engine, **changes):
    cache = engine.pipeline.cache
    cache.config = dataclasses.replace(cache.config, **changes)


def ask(engine, question, budget_ms=0.0):
    done, box = threading.Event(), []
    assert engine.submit(question, budget_ms, 0, lambda outcome: (box.append(outcome), done.set())) == ''
    assert done.wait(60)
    assert box[0].success, box[0].error
    return box[0]


def dense(engine, question):
    """The answer from scratch, nothing cached (the worker's thread is idle: the test holds no query)."""
    answerer = engine.answerer
    return answerer.answer(question, engine.frontend.scene(), answerer.policy('none'), 4).text


def add_view(engine, stamp_ns, x=0.0):
    pose = np.eye(4)
    pose[:3, 3] = [x, 0.0, 2.0]
    pose[:3, :3] = np.diag([1.0, -1.0, -1.0])
    rgb = np.random.default_rng(stamp_ns).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    depth = np.full((120, 160), 2.0, np.float32)
    assert engine.frontend.add_view(rgb, depth, engine.frontend_K, pose, stamp_ns).startswith('kept')


@pytest.fixture
def fresh(engine):
    """An empty memory and cache, then one view; refresh off, max_scene_age_ms 0."""
    engine.frontend.memory.clear()
    engine.pipeline.cache.clear()
    set_cache(engine, refresh=False, max_scene_age_ms=0.0, refresh_min_interval_ms=0.0)
    add_floor_view(engine.frontend)
    engine.frontend_K = np.array([[100.0, 0.0, 79.5], [0.0, 100.0, 59.5], [0.0, 0.0, 1.0]])
    return engine


def test_repeated_questions_hit_the_cache_and_answer_as_dense(fresh):
    engine, cache = fresh, fresh.pipeline.cache
    hits, misses = cache.hits, cache.misses
    first = ask(engine, QUESTIONS[0])
    again = ask(engine, QUESTIONS[0])
    other = ask(engine, QUESTIONS[1])
    assert not first.report.prefix_reused and again.report.prefix_reused and other.report.prefix_reused
    assert (cache.hits - hits, cache.misses - misses) == (2, 1)
    assert first.answer == again.answer == dense(engine, QUESTIONS[0]) and other.answer == dense(engine, QUESTIONS[1])
    assert again.report.scene_age_ms == 0.0 and again.report.vision_ms == 0.0
    # a miss prefills the prefix then the question against it: no more than the whole prompt at once
    assert again.report.prefill_flops * 5 < first.report.prefill_flops <= first.report.prefill_flops_dense
    assert again.report.prefill_flops_dense == first.report.prefill_flops_dense
    assert again.report.spatial_tokens_kept == again.report.spatial_tokens == first.report.spatial_tokens > 0

    status = diagnostics.engine_status(engine, None, {}, '', {}, LatencyStats(), 10)
    values = status.values
    assert values['prefix_cache.hits'] == str(cache.hits) and values['prefix_cache.misses'] == str(cache.misses)
    assert int(values['prefix_cache.tokens']) > first.report.spatial_tokens and values['prefix_cache.views'] == '1'
    assert float(values['prefix_cache.memory_mb']) > 0 and values['prefix_cache.gating'] == 'none'


def test_a_new_view_invalidates_the_prefix(fresh):
    engine = fresh
    ask(engine, QUESTIONS[0])
    add_view(engine, 2, x=0.6)
    after = ask(engine, QUESTIONS[0])
    assert not after.report.prefix_reused and after.report.num_views == 2
    assert after.answer == dense(engine, QUESTIONS[0])
    assert ask(engine, QUESTIONS[2]).report.prefix_reused


def test_max_scene_age_lets_a_question_use_the_older_scene_and_says_how_old(fresh):
    engine = fresh
    set_cache(engine, max_scene_age_ms=60_000.0)
    ask(engine, QUESTIONS[0])
    add_view(engine, 2, x=0.6)
    time.sleep(0.02)  # an age to measure, not a wait for a condition
    older = ask(engine, QUESTIONS[0])
    assert older.report.prefix_reused and older.report.num_views == 1 and older.report.scene_age_ms >= 20.0
    set_cache(engine, max_scene_age_ms=1.0)  # now too old: the newest views are used
    newest = ask(engine, QUESTIONS[0])
    assert not newest.report.prefix_reused and newest.report.num_views == 2 and newest.report.scene_age_ms == 0.0


def test_the_background_refresh_prefills_a_changed_scene_while_idle(fresh):
    engine, cache = fresh, fresh.pipeline.cache
    refreshes = cache.refreshes
    set_cache(engine, refresh=True)
    add_view(engine, 2, x=0.6)
    deadline = time.monotonic() + 30
    while not cache.is_current(engine.frontend.scene()) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert cache.is_current(engine.frontend.scene()) and cache.refreshes == refreshes + 1
    answered = ask(engine, QUESTIONS[3])
    assert answered.report.prefix_reused and answered.report.num_views == 2
    assert answered.answer == dense(engine, QUESTIONS[3])


def test_a_refresh_is_abandoned_for_a_question_the_old_prefix_can_answer(fresh):
    engine, cache = fresh, fresh.pipeline.cache
    ask(engine, QUESTIONS[0])
    old = cache.prefix
    set_cache(engine, refresh=True, max_scene_age_ms=60_000.0)
    add_view(engine, 2, x=0.6)
    waiting = QueryJob(99, QUESTIONS[1], 0.0, 4, time.monotonic(), lambda outcome: None)
    layers = []

    def next_waiting():
        layers.append(1)
        return waiting if len(layers) > 2 else None  # arrives while layer 1 is computed

    abandoned = cache.abandoned
    engine.worker.call(lambda: engine.pipeline.refresh(next_waiting))
    assert cache.abandoned == abandoned + 1 and cache.prefix is old


def test_a_refresh_finishes_for_a_question_that_needs_it(fresh):
    engine, cache = fresh, fresh.pipeline.cache
    set_cache(engine, refresh=True)
    waiting = QueryJob(99, QUESTIONS[1], 0.0, 4, time.monotonic(), lambda outcome: None)
    calls = []

    def next_waiting():
        calls.append(1)
        return waiting if len(calls) > 1 else None  # arrives as soon as the refresh started

    refreshes = cache.refreshes
    engine.worker.call(lambda: engine.pipeline.refresh(next_waiting))
    # no older prefix, and finishing (part of a dense prefill) then a hit beats a dense answer from scratch
    assert cache.refreshes == refreshes + 1 and cache.is_current(engine.frontend.scene())


def test_questions_waiting_together_are_answered_in_one_batch_as_one_at_a_time(fresh):
    engine = fresh
    ask(engine, QUESTIONS[0])  # the prefix of this scene
    alone = [ask(engine, question).answer for question in QUESTIONS]
    gate, outcomes, done = threading.Event(), {}, threading.Condition()
    holder = threading.Thread(target=lambda: engine.worker.call(lambda: gate.wait(30)))
    holder.start()
    deadline = time.monotonic() + 10
    while engine.worker.next_waiting() is not None and time.monotonic() < deadline:
        time.sleep(0.001)  # the worker has taken the call and sits in it

    def on_done(i):
        def record(outcome):
            with done:
                outcomes[i] = outcome
                done.notify_all()

        return record

    for i, question in enumerate(QUESTIONS):
        assert engine.submit(question, 0.0, 0, on_done(i)) == ''
    gate.set()
    with done:
        assert done.wait_for(lambda: len(outcomes) == len(QUESTIONS), 60)
    holder.join(10)
    assert [outcomes[i].answer for i in range(len(QUESTIONS))] == alone
    for outcome in outcomes.values():
        assert outcome.success and outcome.report.prefix_reused and 'batch of 4' in outcome.report.gating
    assert [outcomes[i].report.query_id for i in range(4)] == sorted(o.report.query_id for o in outcomes.values())


def test_a_budget_takes_the_cached_prefix_when_it_fits(fresh):
    engine = fresh
    ask(engine, QUESTIONS[0])
    budgeted = ask(engine, QUESTIONS[1], budget_ms=10_000.0)
    assert budgeted.report.prefix_reused and 'cached scene prefix' in budgeted.report.gating
    assert budgeted.report.deadline_met and budgeted.answer == dense(engine, QUESTIONS[1])


@pytest.mark.parametrize(
    'gating, budget_ms, enabled',
    [
        ('none', 0.0, True),
        ('kcentre:0.5[merge]', 0.0, True),
        ('voxel:0.4', 0.0, True),
        ('schedule:1:0.5', 0.0, False),  # question-guided: run as it says, uncached
        ('fastv:0:0.1~question', 0.0, False),
        ('random:0:0.2[near=0.5]', 0.0, False),
        ('schedule:1:0.5', 500.0, True),  # a default budget may take the dense prefix
    ],
)
def test_the_cache_is_on_where_something_can_use_it(engine, gating, budget_ms, enabled):
    from adatoken3d_node.scene_cache import PrefixCacheConfig

    policy = engine.answerer.policy(gating)
    values = config(gating=gating, latency_budget_ms=budget_ms)
    assert PrefixCacheConfig.from_parameters(values, policy).enabled is enabled
    assert not PrefixCacheConfig.from_parameters(config(gating=gating, prefix_cache=False), policy).enabled


def test_cleanup_frees_the_cached_prefix(random_model):
    built = build_engine(config(model_path=str(random_model), warmup=False, prefix_refresh=False))
    add_floor_view(built.frontend)
    built.worker.open()
    ask(built, QUESTIONS[0])
    cache = built.pipeline.cache
    assert cache.prefix is not None and cache.prefix.nbytes > 0
    built.release()
    assert cache.prefix is None
