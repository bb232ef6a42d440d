"""Real RGB-D frames (../shared/data) as rosbag2 files, replayed over DDS into the node's front end.

The bags are written with rosbags (sqlite3 and mcap), the player in this
process publishes their CDR bytes, and the node (its own process) syncs
colour/depth/camera_info, looks up the camera pose on /tf at each stamp and
builds its scene memory; we read the memory back from ~/scene_points and
~/scene_tokens.
"""

import itertools

import numpy as np
import pytest

from conftest import SHARED_DATA

rclpy = pytest.importorskip('rclpy', reason='needs rclpy (make test installs it)')
if not SHARED_DATA.is_dir():
    pytest.skip(f'{SHARED_DATA} (the real RGB-D test frames) is not here', allow_module_level=True)

from replay_helpers import TOPICS, replay  # noqa: E402

from adatoken3d_lab.bags import write_rgbd_bag  # noqa: E402
from adatoken3d_lab.datasets import load_redwood, load_tum_single  # noqa: E402


@pytest.fixture(scope='module')
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp('bags')
    redwood = load_redwood(SHARED_DATA / 'redwood_livingroom_5')
    return {
        'redwood_sqlite3': write_rgbd_bag(root / 'redwood_sqlite3', redwood, TOPICS, storage='sqlite3'),
        'redwood_mcap': write_rgbd_bag(root / 'redwood_mcap', redwood, TOPICS, storage='mcap'),
        'tum': write_rgbd_bag(root / 'tum', load_tum_single(SHARED_DATA / 'tum_single'), TOPICS, storage='mcap'),
    }


def test_five_redwood_views_agree_where_they_overlap(bags, random_model, tmp_path):
    points, tokens, log = replay(bags['redwood_sqlite3'], random_model, tmp_path, 'redwood')
    xyz = np.stack([points['x'], points['y'], points['z']], axis=1).astype(np.float64)
    per_view = [xyz[points['view'] == v] for v in range(5)]
    assert all(len(p) > 0.8 * 576 for p in per_view)  # ~13% of pixels lack depth; most patches have one
    medians = []
    for a, b in itertools.combinations(range(5), 2):
        distances = np.linalg.norm(per_view[a][:, None, :] - per_view[b][None, :, :], axis=2).min(axis=1)
        medians.append(np.median(distances))
    # Consecutive frames overlap almost entirely; a patch takes one pixel, so even perfectly
    # registered views sample the surfaces ~10 cm apart at this range: NN median ~ a few cm.
    assert max(medians) < 0.05, medians
    assert 'view skipped' not in log


def test_wrong_poses_would_be_caught_by_the_overlap_check(bags, random_model, tmp_path):
    """The control for the test above: shift one view by 30 cm and its NN median jumps far above 5 cm."""
    points, _, _ = replay(bags['redwood_mcap'], random_model, tmp_path, 'control')
    xyz = np.stack([points['x'], points['y'], points['z']], axis=1).astype(np.float64)
    a, b = xyz[points['view'] == 0], xyz[points['view'] == 1] + np.array([0.3, 0.0, 0.0])
    assert np.median(np.linalg.norm(a[:, None] - b[None], axis=2).min(axis=1)) > 0.1


def test_tokens_are_the_same_across_runs_storage_formats_and_replay_rates(bags, random_model, tmp_path):
    _, first, _ = replay(bags['redwood_sqlite3'], random_model, tmp_path, 'run1', rate=1.0)
    _, second, _ = replay(bags['redwood_mcap'], random_model, tmp_path, 'run2', rate=4.0)
    assert len(first) == len(second) > 100
    for field in ('x', 'y', 'z', 'count'):
        np.testing.assert_array_equal(first[field], second[field])
    assert first['count'].sum() > 0.8 * 5 * 576


def test_tum_frame_with_metric_float_depth_and_a_static_pose(bags, random_model, tmp_path):
    points, tokens, _ = replay(bags['tum'], random_model, tmp_path, 'tum', expect_views=1)
    z = points['z']
    assert 0.95 * 576 > len(points) > 0.6 * 576  # 19% of pixels have no depth, so do some patches
    assert 0.3 < z.min() and z.max() < 6.0  # a Kinect indoors, camera at the origin
    assert tokens['count'].sum() == len(points)


def test_a_question_about_the_replayed_scene_runs_gated_llava3d_with_true_metrics(bags, random_model, tmp_path):
    import math
    import json
    from adatoken3d_node.model.flops import LlamaShape, prefill_flops
    from adatoken3d_lab.datasets import load_redwood

    _, tokens, _, response, _ = replay(
        bags['redwood_sqlite3'],
        random_model,
        tmp_path,
        'ask',
        question='What is next to the sofa at [-2.1, 0.6, 2.7]?',
        launch=['gating:=schedule:1:0.5,2:0.25', 'latency_budget_ms:=0.0'],  # the gating, unbudgeted
    )
    assert response.success, response.error
    m = response.metrics
    assert m.num_views == 5 and m.spatial_tokens == len(tokens)
    assert m.spatial_tokens_kept == math.ceil(0.25 * m.spatial_tokens)
    assert m.gating == 'schedule:1:0.5,2:0.25'
    newest = load_redwood(SHARED_DATA / 'redwood_livingroom_5')[-1].stamp_ns
    assert m.scene_stamp.sec * 10**9 + m.scene_stamp.nanosec == newest
    assert m.vision_ms > 0 and m.scene_ms > 0 and m.prefill_ms > 0
    # the FLOPs follow from the token counts: layer 0 all, layer 1 half the spatial tokens, 2-3 a quarter
    config = json.loads((random_model / 'config.json').read_text())
    shape = LlamaShape(
        config['hidden_size'],
        config['intermediate_size'],
        config['num_hidden_layers'],
        config['num_attention_heads'],
        config['num_key_value_heads'],
        config['hidden_size'] // config['num_attention_heads'],
        config['vocab_size'],
    )
    text = m.text_tokens
    dense = prefill_flops(shape, [text + m.spatial_tokens] * 4)
    assert m.prefill_flops_dense == pytest.approx(dense)
    half = text + math.ceil(0.5 * m.spatial_tokens)
    as_run = prefill_flops(
        shape, [text + m.spatial_tokens, half, text + m.spatial_tokens_kept, text + m.spatial_tokens_kept]
    )
    assert m.prefill_flops == pytest.approx(as_run, rel=0.02)  # + the one-row scoring at the two cuts
    assert m.prefill_flops > as_run and m.flops_reduction == pytest.approx(1 - m.prefill_flops / dense, abs=1e-6)


REAL_FRAME_QUESTIONS = (
    'What color is the sofa?',
    'How many chairs are there?',
    'Is there a red box?',
    'Which object is closest to the blue sphere?',
    'Where is the table?',
    'What is at [-2.1, 0.6, 2.7]?',
)


def test_the_shipped_model_answers_questions_about_real_frames_without_errors(bags, tmp_path):
    """The default model (trained on synthetic rooms only) on a real living room: out of its domain, so the
    words are not checked, only that every question is answered, from the real scene, with true metrics."""
    _, tokens, log, responses, _ = replay(
        bags['redwood_mcap'], None, tmp_path, 'shipped', question=list(REAL_FRAME_QUESTIONS)
    )
    assert 'scene-llava3d-tiny' in log and 'UNTRAINED' not in log
    for question, response in zip(REAL_FRAME_QUESTIONS, responses):
        assert response.success, (question, response.error)
        m = response.metrics
        assert m.num_views == 5 and m.spatial_tokens == len(tokens) and m.generated_tokens >= 1
        # words, or nothing when the model's first token ends the answer (out of its domain it may)
        assert response.answer.strip() or m.generated_tokens == 1, question
        print(f'{question!r} -> {response.answer!r}')
