"""The ROS-free front end: posed views in, spatial-token geometry out; and the problem log."""

import numpy as np
import pytest

from adatoken3d_node.perception.frontend import FrontEndConfig, SceneFrontEnd, nearest_patch_xyz
from adatoken3d_node.perception.geometry import backproject, patch_xyz
from adatoken3d_node.perception.keyframes import KeyframePolicy
from adatoken3d_node.stats import ProblemLog

K = np.array([[525.0, 0.0, 319.5], [0.0, 525.0, 239.5], [0.0, 0.0, 1.0]])


def pose_at(x: float, yaw_deg: float = 0.0) -> np.ndarray:
    a = np.radians(yaw_deg)
    T = np.eye(4)
    T[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]  # about the optical y axis
    T[0, 3] = x
    return T


def frame(seed: int, plane_z: float = 2.0, holes: float = 0.1):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    depth = np.full((480, 640), plane_z, np.float32)
    depth[rng.random((480, 640)) < holes] = 0.0
    return rgb, depth


def test_nearest_fast_path_equals_full_backprojection_then_nearest():
    rng = np.random.default_rng(1)
    depth = rng.uniform(0.5, 4.0, (336, 336)).astype(np.float32)
    depth[rng.random((336, 336)) < 0.2] = 0.0
    K_s = np.array([[300.0, 0.0, 167.5], [0.0, 310.0, 160.2], [0.0, 0.0, 1.0]])
    pose = pose_at(1.0, 30.0)
    fast, fast_valid = nearest_patch_xyz(depth, K_s, pose, 24)
    xyz, valid = backproject(depth, K_s, pose)
    full, full_valid = patch_xyz(xyz, valid, 24, 'nearest')
    np.testing.assert_array_equal(fast_valid, full_valid)
    np.testing.assert_array_equal(fast[fast_valid], full[full_valid])
    assert np.isnan(fast[~fast_valid]).all()


def test_views_of_a_plane_become_tokens_on_the_plane_and_invalid_patches_are_dropped():
    frontend = SceneFrontEnd(FrontEndConfig(keyframes=KeyframePolicy(min_translation_m=0.1)))
    for i in range(3):
        rgb, depth = frame(i)
        depth[:40] = 0.0  # the top 40 rows have no depth: the first patch row has none after resize/crop
        assert frontend.add_view(rgb, depth, K, pose_at(0.5 * i), 10**9 * (i + 1), 'cam').startswith('kept')
    scene = frontend.scene()
    assert scene.num_views == 3 and scene.images.shape == (3, 336, 336, 3)
    assert scene.patch_valid.shape == (3, 576) and not scene.patch_valid[:, :24].any()
    assert scene.dropped_patches >= 3 * 24
    # every token lies on the plane z = 2 (poses translate along x only)
    np.testing.assert_allclose(scene.tokens.centres[:, 2].numpy(), 2.0, atol=1e-5)
    assert int(scene.tokens.counts.sum()) == int(scene.patch_valid.sum())
    assert scene.newest_stamp_ns == 3 * 10**9 and scene.frame_ids == ('cam',) * 3


def test_scene_is_deterministic_and_capped():
    config = FrontEndConfig(voxel_size=0.05, max_spatial_tokens=300, keyframes=KeyframePolicy(min_translation_m=0.1))
    scenes = []
    for _ in range(2):
        frontend = SceneFrontEnd(config)
        for i in range(4):
            rgb, depth = frame(i, plane_z=1.5 + 0.5 * i)
            frontend.add_view(rgb, depth, K, pose_at(0.3 * i, 10 * i), 10**9 * (i + 1))
        scenes.append(frontend.scene())
    first, second = scenes
    assert first.num_tokens == 300 < first.tokens.num_voxels_before_cap
    assert (first.tokens.centres == second.tokens.centres).all()
    assert (first.tokens.patch_to_voxel == second.tokens.patch_to_voxel).all()


def test_skipped_views_are_not_stored_and_the_memory_is_bounded():
    frontend = SceneFrontEnd(FrontEndConfig(keyframes=KeyframePolicy(max_views=3, min_translation_m=0.2)))
    rgb, depth = frame(0)
    assert frontend.add_view(rgb, depth, K, pose_at(0.0), 1).startswith('kept')
    assert frontend.add_view(rgb, depth, K, pose_at(0.05), 2).startswith('skipped')
    for i in range(10):
        frontend.add_view(rgb, depth, K, pose_at(0.3 * (i + 1)), 10 + i)
    assert len(frontend.memory) == 3 and frontend.scene().num_views == 3


def test_empty_memory_gives_an_empty_scene():
    scene = SceneFrontEnd().scene()
    assert scene.num_views == 0 and scene.num_tokens == 0 and scene.newest_stamp_ns == 0


def test_image_size_must_be_a_multiple_of_the_patch_grid():
    with pytest.raises(ValueError, match='multiple'):
        SceneFrontEnd(FrontEndConfig(image_size=300, patch_grid=24))


def test_problem_log_reports_each_kind_once_per_period_and_counts_the_rest():
    log = ProblemLog(period_s=10.0)
    assert log.report('tf', now=0.0) == ''
    assert log.report('tf', now=1.0) is None and log.report('tf', now=2.0) is None
    assert log.report('bad_message:depth', now=2.0) == ''  # another kind is not masked
    assert log.report('tf', now=10.5) == ' (2 more since the last report)'
    assert log.counts == {'tf': 4, 'bad_message:depth': 1}


def test_decide_predicts_offer_without_storing():
    frontend = SceneFrontEnd(FrontEndConfig(keyframes=KeyframePolicy(min_translation_m=0.2)))
    memory = frontend.memory
    assert memory.decide(pose_at(0.0), 1) == 'kept: first view' and len(memory) == 0
    rgb, depth = frame(0)
    frontend.add_view(rgb, depth, K, pose_at(0.0), 1)
    assert memory.decide(pose_at(0.1), 2).startswith('skipped') and len(memory) == 1
    assert memory.decide(pose_at(0.3), 3) == 'kept: moved 0.30 m'
    assert frontend.add_view(rgb, depth, K, pose_at(0.3), 3) == 'kept: moved 0.30 m' and len(memory) == 2


def test_scene_is_memoised_until_the_memory_changes():
    frontend = SceneFrontEnd(FrontEndConfig(keyframes=KeyframePolicy(min_translation_m=0.1)))
    rgb, depth = frame(0)
    frontend.add_view(rgb, depth, K, pose_at(0.0), 1)
    first = frontend.scene()
    assert frontend.scene() is first  # unchanged memory: the same result, no work
    frontend.add_view(rgb, depth, K, pose_at(0.5), 2)
    second = frontend.scene()
    assert second is not first and second.num_views == 2
    frontend.memory.clear()
    assert frontend.scene().num_views == 0


def test_a_noisy_floor_at_z0_is_one_layer_of_tokens():
    """The usual map frame puts the floor at z = 0: LLaVA-3D's round() grid centres a voxel layer on it,
    so +-1 mm of depth noise cannot split the floor into two layers (floor() would: half the
    patches at z < 0, half at z >= 0)."""
    rng = np.random.default_rng(4)
    height = 1.5
    looking_down = np.eye(4)
    looking_down[:3, :3] = [[1, 0, 0], [0, -1, 0], [0, 0, -1]]  # optical x right, y down, z forward = world -z
    looking_down[2, 3] = height
    front = SceneFrontEnd(FrontEndConfig(keyframes=KeyframePolicy(max_views=4)))
    for i, x in enumerate((0.0, 0.7, 1.4)):
        pose = looking_down.copy()
        pose[0, 3] = x
        depth = (height + rng.uniform(-0.001, 0.001, (480, 640))).astype(np.float32)
        front.add_view(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), depth, K, pose, stamp_ns=i * 10**9)
    scene = front.scene()
    z = scene.patch_xyz[scene.patch_valid][:, 2]
    assert (z < 0).sum() > 100 and (z > 0).sum() > 100  # the noise really straddles the plane
    keys = scene.tokens.keys.numpy()
    assert (keys[:, 2] == 0).all()  # one layer
    assert len(keys) == len(np.unique(keys[:, :2], axis=0))  # one token per floor cell
    assert np.abs(scene.tokens.centres.numpy()[:, 2]).max() <= 0.001
