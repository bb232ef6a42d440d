"""What the node's configure builds (pipeline.build_engine), its admission checks and answers, and the
diagnostics it reports, without ROS: the random checkpoint on the CPU."""

import threading

import numpy as np
import pytest

from adatoken3d_node import diagnostics, parameters
from adatoken3d_node.pipeline import ConfigureError, build_engine
from adatoken3d_node.queries import NOT_ACCEPTING
from adatoken3d_node.stats import LatencyStats

K = np.array([[100.0, 0.0, 79.5], [0.0, 100.0, 59.5], [0.0, 0.0, 1.0]])


def config(**overrides) -> dict:
    values = parameters.defaults()
    # no default budget: these tests run the gating they name (the budget's own choices: test_budget*)
    values.update({'device': 'cpu', 'dtype': 'float32', 'max_new_tokens': 3, 'latency_budget_ms': 0.0, **overrides})
    return values


@pytest.fixture(scope='module')
def engine(random_model):
    built = build_engine(config(model_path=str(random_model), gating='schedule:1:0.5,2:0.25', warmup=True))
    yield built
    built.release()


def add_floor_view(frontend, stamp_ns: int = 1) -> None:
    """A camera 2 m above a floor, looking down: every pixel 2 m deep, points near (0, 0, 0)."""
    pose = np.eye(4)
    pose[2, 3] = 2.0
    pose[:3, :3] = np.diag([1.0, -1.0, -1.0])  # optical z points down, towards z = 0
    rgb = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    assert frontend.add_view(rgb, np.full((120, 160), 2.0, np.float32), K, pose, stamp_ns).startswith('kept')


@pytest.mark.parametrize(
    'overrides, message',
    [
        (dict(dtype='float64'), "invalid parameters: dtype='float64' is not one of"),
        (dict(queue_size=0), 'invalid parameters: queue_size=0 is below the minimum'),
        (dict(model_path='/nonexistent/model'), 'the model did not load: '),
        (dict(gating='schedule:9:0.5'), "bad gating 'schedule:9:0.5'"),
    ],
)
def test_configure_errors_say_why(random_model, overrides, message):
    with pytest.raises(ConfigureError, match=message.replace('(', r'\(')):
        build_engine(config(**{'model_path': str(random_model), **overrides}))


def test_the_engine_is_what_the_parameters_say(engine, random_model):
    assert engine.model_path == str(random_model) and engine.gating == 'schedule:1:0.5,2:0.25'
    assert engine.answerer.is_untrained and engine.answerer.device.type == 'cpu'
    assert not engine.worker.is_open  # configured is not active
    assert engine.pipeline.budget.cost.vision_ms() > 0  # the warm-up measured the model


def test_the_defaults_run_auto_under_a_budget(random_model):
    assert parameters.defaults()['gating'] == 'auto' and parameters.defaults()['latency_budget_ms'] > 0
    defaults = parameters.defaults()
    engine = build_engine(
        config(model_path=str(random_model), warmup=False, latency_budget_ms=defaults['latency_budget_ms'])
    )
    try:  # the random checkpoint has no calibrated profile: dense, and the node says why
        assert engine.gating == 'none' and 'adatoken3d-calibrate' in engine.gating_note
        assert engine.limits.latency_budget_ms == defaults['latency_budget_ms']
        assert engine.pipeline.budget.frontier == [] and engine.pipeline.cache.enabled
    finally:
        engine.release()


def test_admission_needs_a_scene_and_points_near_it(engine):
    engine.frontend.memory.clear()
    assert 'no usable view of the scene yet' in engine.pipeline.admission_problem('Where is the chair?')
    add_floor_view(engine.frontend)
    assert engine.pipeline.admission_problem('Where is the chair?') is None
    assert engine.pipeline.admission_problem('What is at [0.1, 0.2, 0.0]?') is None
    far = engine.pipeline.admission_problem('What is at [0.0, 9.0, 0.0]?')
    assert far.startswith('the point [0.0, 9.0, 0.0] is') and 'max_point_distance_m=1.0' in far and 'map' in far


def test_requests_are_checked_then_answered_through_the_pipeline_and_diagnostics_report_it(engine):
    engine.frontend.memory.clear()
    add_floor_view(engine.frontend)
    done, outcomes = threading.Event(), []

    def on_done(outcome):
        outcomes.append(outcome)
        done.set()

    assert engine.submit('Where is the chair?', 0.0, 0, on_done) == NOT_ACCEPTING  # configured, not active
    engine.worker.open()
    try:
        assert engine.submit('   ', 0.0, 0, on_done) == 'the question is empty'
        assert 'max_new_tokens_limit' in engine.submit('Where is the chair?', 0.0, 10_000, on_done)
        assert 'm from anything in the scene memory' in engine.submit('What is at [0.0, 9.0, 0.0]?', 0.0, 0, on_done)
        assert engine.submit('  Where is the chair?  ', 0.0, 0, on_done) == ''
        assert done.wait(60)
    finally:
        engine.worker.close()
    report = outcomes[0].report
    assert len(outcomes) == 1 and outcomes[0].success and report.query_id == 'q000001'
    assert 0 < report.spatial_tokens_kept < report.spatial_tokens and report.generated_tokens <= 3
    assert 0 < report.prefill_flops < report.prefill_flops_dense and report.num_views == 1

    latency = LatencyStats()
    latency.add(report.total_ms, report.deadline_met, True)
    status = diagnostics.engine_status(
        engine, None, {}, '', diagnostics.scene_values(engine.frontend.scene()), latency, 10
    )
    assert status.level == diagnostics.WARN and 'untrained' in status.message and status.hardware_id == 'cpu'
    values = status.values
    assert values['state'] == 'inactive' and values['gating'] == engine.gating and values['queue_depth'] == '0'
    assert values['views_in_memory'] == '1' == values['scene.views'] and values['queries_answered'] == '1'
    assert values['scene.spatial_tokens'] == str(report.spatial_tokens) and values['model_untrained'] == 'true'
    assert float(values['budget.decode_ms_per_token']) > 0 and 'process_max_rss_mb' in values
