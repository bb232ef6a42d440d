"""A rendered scene of known objects, recorded as rosbag2 (sqlite3 and mcap) from a camera circling it,
replayed over DDS into the node at the recorded rate and faster; questions answered by the gated model."""

import math

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy', reason='needs rclpy (make test installs it)')

from replay_helpers import TOPICS, replay  # noqa: E402

from adatoken3d_lab.bags import write_rgbd_bag  # noqa: E402
from adatoken3d_node.model.flops import LlamaShape, prefill_flops  # noqa: E402
from adatoken3d_lab.synthetic import make_scene, orbit_frames  # noqa: E402

VIEWS = 8
GATING = 'schedule:1:0.5,2:0.25'


@pytest.fixture(scope='module')
def scene():
    objects = make_scene(seed=5)
    return objects, orbit_frames(objects, n_views=VIEWS, width=160, height=120, defects=True)


# the second run scores the spatial tokens by the question's tokens (gating.py, ~question): same cuts
@pytest.mark.parametrize('storage, rate, gating', [('sqlite3', 1.0, GATING), ('mcap', 3.0, f'{GATING}~question')])
def test_replayed_scene_is_remembered_and_questions_get_true_metrics(
    scene, random_model, tmp_path, storage, rate, gating
):
    objects, frames = scene
    bag = write_rgbd_bag(tmp_path / f'scene_{storage}', frames, TOPICS, storage=storage)
    x, y, z = (round(float(v), 2) for v in objects[0].centre)
    points, tokens, log, response, seen = replay(
        bag,
        random_model,
        tmp_path,
        f'synthetic_{storage}',
        rate=rate,
        expect_views=VIEWS,
        question=f"What is at [{x}, {y}, {z}]?",
        launch=[f'gating:={gating}', 'latency_budget_ms:=0.0'],  # the gating, unbudgeted
    )
    assert 'view skipped' not in log
    # every patch lies on the floor or on an object: nothing below the floor, nothing above the tallest object
    top = max(o.centre[2] + o.size[2] / 2 for o in objects)
    assert points['z'].min() > -0.1 and points['z'].max() < top + 0.1
    assert response.success, response.error
    m = response.metrics
    assert m.num_views == VIEWS and m.spatial_tokens == len(tokens) > 100
    assert m.spatial_tokens_kept == math.ceil(0.25 * m.spatial_tokens) and m.gating == gating
    assert m.scene_stamp.sec * 10**9 + m.scene_stamp.nanosec == frames[-1].stamp_ns
    config = __import__('json').loads((random_model / 'config.json').read_text())
    shape = LlamaShape(
        config['hidden_size'],
        config['intermediate_size'],
        config['num_hidden_layers'],
        config['num_attention_heads'],
        config['num_key_value_heads'],
        config['hidden_size'] // config['num_attention_heads'],
        config['vocab_size'],
    )
    dense = prefill_flops(shape, [m.text_tokens + m.spatial_tokens] * config['num_hidden_layers'])
    assert m.prefill_flops_dense == pytest.approx(dense)
    assert m.flops_reduction == pytest.approx(1 - m.prefill_flops / dense, abs=1e-6) and m.flops_reduction > 0.3
    assert np.isfinite([m.vision_ms, m.prefill_ms, m.decode_ms]).all() and m.total_ms >= m.prefill_ms
    assert (
        seen['answer'].answer == response.answer and seen['answer'].metrics.spatial_tokens_kept == m.spatial_tokens_kept
    )
    values = seen['diagnostics']
    assert values['views_in_memory'] == str(VIEWS) and values['scene.spatial_tokens'] == str(m.spatial_tokens)
    assert values['gating'] == gating and int(values['messages.color_image']) == VIEWS
