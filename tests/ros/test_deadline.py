"""The product's defaults over DDS: the node launched with no parameters but the replay's QoS runs the shipped
model under `gating: auto` and the default latency budget, and budgets below the dense time are met by the
calibrated frontier's policies or the cached scene prefix (adatoken3d_lab.deadline, one room, in small)."""

import pytest

from adatoken3d_lab.deadline import REFERENCE, DeadlineConfig, run_deadline
from adatoken3d_node import parameters
from adatoken3d_node.model.profiles import frontier_gatings, load_profile, resolve_gating
from adatoken3d_node.share import default_model_dir


@pytest.fixture(scope='module')
def deadline_run(tmp_path_factory):
    config = DeadlineConfig(rooms=1, calibration_rooms=1, laps=2, repeats=2, levels=(0.3, 0.6), namespace='deadline_t')
    return run_deadline(config, tmp_path_factory.mktemp('deadline'), load_processes=(0,), log=lambda _: None)


def test_the_default_launch_runs_the_calibrated_gate_under_the_default_budget(deadline_run):
    shipped = default_model_dir()
    assert deadline_run['node']['gating'] == resolve_gating('auto', shipped) != 'none'
    assert deadline_run['node']['gating_note'] == ''  # the shipped model is calibrated
    reference = deadline_run['conditions']['idle']['levels'][REFERENCE]
    # a request's 0 is the node's default budget, which the shipped model meets densely
    assert reference['node_budget_ms'] == parameters.defaults()['latency_budget_ms'] > 0
    assert reference['dense_share'] == 1.0 and reference['met_default_budget'] == 1.0
    assert deadline_run['dense']['all_dense']


def test_budgets_below_the_dense_time_pick_from_the_calibrated_frontier(deadline_run):
    frontier = set(frontier_gatings(load_profile(default_model_dir())))
    levels = {k: v for k, v in deadline_run['conditions']['idle']['levels'].items() if k != REFERENCE}
    assert sorted(levels) == ['0.3', '0.6']
    recomputed = set()
    for level, row in levels.items():
        assert row['queries'] == 2 * deadline_run['questions_per_room'][0]
        assert row['budget_ms'] == deadline_run['budgets_ms'][level] < deadline_run['dense']['median_ms']
        assert 0 <= row['hit_rate_all'] <= 1 and 0 < row['keep_ratio_mean'] <= 1
        recomputed |= set(row['policies'])
    # what was not answered on the cached prefix ran a frontier policy, or densely where that was predicted to fit
    assert recomputed and recomputed <= frontier | {'none'}
    assert recomputed & frontier, f'no frontier policy ran: {recomputed}'
