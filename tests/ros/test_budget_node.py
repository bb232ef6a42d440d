"""The real-time budget: a bigger random LLaVA-3D (dense prefill takes measurable time on this CPU, no
artificial slow-down), a scene of ~1500 spatial tokens published live over DDS, and queries with budgets
that dense inference misses."""

import contextlib
import json
import math
import statistics

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy', reason='needs rclpy (make test installs it)')

from live_sensors import live_node, stamped, tf_link  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

from adatoken3d_lab.random_checkpoint import create_random_llava3d  # noqa: E402

MEDIUM = dict(
    hidden_size=384,
    intermediate_size=1024,
    num_hidden_layers=8,
    num_attention_heads=6,
    num_key_value_heads=6,
    max_position_embeddings=4096,
)
W, H, VIEWS, TIMEOUT = 160, 120, 10, 180.0
K = [100.0, 0.0, 79.5, 0.0, 100.0, 59.5, 0.0, 0.0, 1.0]
QUESTION = 'Describe the room.'


@contextlib.contextmanager
def node_with_scene_of(root, model, namespace, gating='none'):
    """A node on `model` (gating as given) with the scene published to it -> (client, node)."""
    overrides = dict(
        keyframe_min_translation_m=0.0,
        keyframe_min_rotation_deg=0.0,
        max_views=VIEWS,
        voxel_size=0.1,
        max_spatial_tokens=1500,
        max_new_tokens=4,
        tf_timeout_s=1.0,
        budget_min_keep_ratio=0.1,
        gating=gating,
        latency_budget_ms=0.0,  # budgets come with the requests here: one without is dense (or gating's)
        prefix_cache=False,  # the recompute path: a cached scene prefix would answer these repeated questions
    )
    with live_node(root, model, namespace, TIMEOUT, **overrides) as (client, node, pubs):
        rng = np.random.default_rng(0)
        for i in range(VIEWS):  # a camera moving along x, looking at random surfaces 1-5 m away
            stamp = (i + 1) * 10**9
            pubs['tf'].publish(TFMessage(transforms=[tf_link('map', 'cam', stamp, (0.6 * i, 0.0, 0.0))]))
            depth = (rng.uniform(1.0, 5.0, (H, W)) * 1000).astype(np.uint16)
            rgb = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
            pubs['color_info'].publish(stamped(CameraInfo(width=W, height=H, k=K), stamp, 'cam'))
            pubs['depth_info'].publish(stamped(CameraInfo(width=W, height=H, k=K), stamp, 'cam'))
            pubs['depth_image'].publish(
                stamped(Image(width=W, height=H, encoding='16UC1', step=2 * W, data=depth.tobytes()), stamp, 'cam')
            )
            pubs['color_image'].publish(
                stamped(Image(width=W, height=H, encoding='rgb8', step=3 * W, data=rgb.tobytes()), stamp, 'cam')
            )
            client.wait_until(
                lambda: client.latest_diagnostics().get('views.views_kept') == str(i + 1), TIMEOUT, f'view {i + 1} kept'
            )
        client.wait_until(lambda: client.latest_diagnostics().get('scene.views') == str(VIEWS), TIMEOUT, 'the scene')
        yield client, node


@pytest.fixture(scope='module')
def medium_model(tmp_path_factory):
    root = tmp_path_factory.mktemp('medium')
    return root, create_random_llava3d(root / 'model', root / 'clip', seed=0, llama=MEDIUM)


@pytest.fixture(scope='module')
def node_with_scene(medium_model):
    root, model = medium_model
    with node_with_scene_of(root, model, 'budget') as (client, node):
        yield client, node, model


def kept_share(response):
    return response.metrics.spatial_tokens_kept / response.metrics.spatial_tokens


def test_budgets_that_dense_misses_are_met_by_pruning_that_grows_as_the_budget_shrinks(node_with_scene):
    client, node, model = node_with_scene
    dense = [client.query(QUESTION, timeout=TIMEOUT) for _ in range(3)]
    assert all(r.success and r.metrics.spatial_tokens == 1500 for r in dense)
    assert all(r.metrics.spatial_tokens_kept == 1500 and r.metrics.gating == 'none' for r in dense)
    dense_ms = statistics.median(r.metrics.total_ms for r in dense)
    # 0.8, not lower: with the first cut at layer L/4 the floor (keep 0.1) plus vision and decoding still
    # costs about 0.7x dense here (a CI run measured 0.73x at keep 0.22), so a tighter budget would test
    # the machine's timing noise more than the controller.
    budgets = [fraction * dense_ms for fraction in (0.9, 0.8)]
    assert all(sum(r.metrics.total_ms > budget_ms for r in dense) >= 2 for budget_ms in budgets)  # dense misses
    # Interleaved, so that a change in the machine's load (the controller's cost model follows it) falls
    # on both budgets alike instead of on whichever ran second.
    # 8 queries a budget, at least half on time: with 5 and 3 of them, one fresh-clone CI run of 4 on this
    # 2-core machine met 2 at 0.8x (the machine's timing noise, not the controller: predicted 441 ms of 511).
    by_budget = {budget_ms: [] for budget_ms in budgets}
    for _ in range(8):
        for budget_ms in budgets:
            by_budget[budget_ms].append(client.query(QUESTION, latency_budget_ms=budget_ms, timeout=TIMEOUT))
    shares = []
    for budget_ms, responses in by_budget.items():
        assert all(r.success for r in responses), [r.error for r in responses]
        assert sum(r.metrics.deadline_met for r in responses) >= 4, (
            budget_ms,
            [
                (r.metrics.total_ms, r.metrics.vision_ms, r.metrics.prefill_ms, r.metrics.decode_ms, r.metrics.gating)
                for r in responses
            ],
        )
        assert all(r.metrics.latency_budget_ms == pytest.approx(budget_ms) for r in responses)
        assert all(r.metrics.gating.startswith(f'budget {budget_ms:.0f} ms: keep') for r in responses)
        shares.append(statistics.median(kept_share(r) for r in responses))
    assert 1.0 > shares[0] > shares[1] >= 0.1, shares  # 0.1: the floor (budget_min_keep_ratio)
    error = float(client.latest_diagnostics()['budget.prediction_error'])
    assert error < 0.25, f'mean relative error of the predicted prefill + decode time: {error:.2f}'


def test_an_unreachable_budget_runs_at_the_floor_and_is_answered_late(node_with_scene):
    client, _, model = node_with_scene
    response = client.query(QUESTION, latency_budget_ms=1.0, timeout=TIMEOUT)
    assert response.success and not response.metrics.deadline_met
    assert 'floor' in response.metrics.gating
    assert response.metrics.spatial_tokens_kept == math.ceil(0.1 * response.metrics.spatial_tokens)


# A calibrated profile with a frontier, as adatoken3d-calibrate writes it (its numbers do not matter here).
FRONTIER = ('kcentre:0.5[merge]', 'fastv:0:0.25~question', 'kcentre:0.1[merge]', 'fastv:0:0.05~question')


def test_gating_auto_runs_the_profile_s_pick_and_budgets_pick_on_its_frontier(medium_model):
    from adatoken3d_node.model.profiles import PROFILE_NAME

    root, model = medium_model
    points = [
        {'gating': text, 'flops_reduction': 0.5 + 0.1 * i, 'agreement': 1 - 0.1 * i} for i, text in enumerate(FRONTIER)
    ]
    profile = {'schedule': 'schedule:2:0.5', 'auto': {'gating': FRONTIER[0]}, 'frontier': points}
    (model / PROFILE_NAME).write_text(json.dumps(profile))
    try:
        with node_with_scene_of(root, model, 'budget_auto', gating='auto') as (client, node):
            plain = client.query(QUESTION, timeout=TIMEOUT)
            assert plain.success and plain.metrics.gating == FRONTIER[0]
            assert plain.metrics.spatial_tokens == 1500 and plain.metrics.spatial_tokens_kept == 750
            # no time at all: a frontier point at or above budget_min_keep_ratio (0.1), late: the least late,
            # or the least pruned within 10% of it (budget.NEAR_TIE; which one depends on this machine's times)
            late = client.query(QUESTION, latency_budget_ms=1.0, timeout=TIMEOUT)
            assert late.success and not late.metrics.deadline_met and 'floor' in late.metrics.gating
            ran = late.metrics.gating.rsplit(', ', 1)[-1]
            kept = {FRONTIER[0]: 750, FRONTIER[1]: 375, FRONTIER[2]: 150}  # FRONTIER[3] keeps 5%: below the floor
            assert ran in kept and late.metrics.spatial_tokens_kept == kept[ran]
            # plenty of time: dense
            roomy = client.query(QUESTION, latency_budget_ms=60_000.0, timeout=TIMEOUT)
            assert roomy.success and roomy.metrics.deadline_met and roomy.metrics.gating.endswith('none')
    finally:
        (model / PROFILE_NAME).unlink()
