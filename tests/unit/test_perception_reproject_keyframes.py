"""Depth reprojection into the colour camera and the bounded keyframe memory: exact values."""

import dataclasses
import math
import threading
import time

import numpy as np
import pytest

from adatoken3d_node.perception.keyframes import KeyframeMemory, KeyframePolicy, View, pose_distance, rotation_angle_deg
from adatoken3d_node.perception.reproject import points_to_depth, reproject_depth


def intrinsics(fx, fy, cx, cy):
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def translation(x, y=0.0, z=0.0):
    T = np.eye(4)
    T[:3, 3] = x, y, z
    return T


def rot_z(deg):
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# 640 x 480 with pixel centres on integers: the optical axis passes between the middle pixels.
K_VGA = intrinsics(520.0, 520.0, 319.5, 239.5)


# ---------------------------------------------------------------- reproject_depth


def test_identity_extrinsics_same_k_is_exact():
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.3, 8.0, (480, 640)).astype(np.float32)
    depth[rng.random((480, 640)) < 0.2] = 0.0
    out = reproject_depth(depth, K_VGA, K_VGA, np.eye(4), (480, 640))
    assert out.dtype == np.float32 and out.shape == (480, 640)
    np.testing.assert_array_equal(out, depth)


def test_baseline_shift_moves_pixels_by_fx_b_over_z_and_keeps_z():
    depth = np.full((480, 640), 2.0, np.float32)  # fronto-parallel plane at 2 m
    depth[:, 100] = 0.0  # a marker column without readings
    depth[50, 300] = 0.0  # and a marker pixel
    # Destination camera 5 cm to the left of the source: x_dst = x_src + 0.05, so u shifts by 520 * 0.05 / 2 = 13.
    out = reproject_depth(depth, K_VGA, K_VGA, translation(0.05), (480, 640))
    expected = np.full((480, 640), 2.0, np.float32)
    expected[:, :13] = 0.0  # nothing lands left of the shifted image
    expected[:, 113] = 0.0
    expected[50, 313] = 0.0
    np.testing.assert_array_equal(out, expected)


def test_different_intrinsics_halved_resolution():
    # 640x480 -> 320x240 with K scaled about pixel centres: u' = (u + 0.5) / 2 - 0.5, so each 2x2 block of
    # source pixels lands on one destination pixel, which keeps the block's nearest valid reading.
    rng = np.random.default_rng(1)
    depth = rng.uniform(1.0, 4.0, (480, 640)).astype(np.float32)
    depth[rng.random((480, 640)) < 0.5] = 0.0
    K_half = intrinsics(260.0, 260.0, 159.5, 119.5)
    out = reproject_depth(depth, K_VGA, K_half, np.eye(4), (240, 320))
    blocks = np.where(depth > 0, depth, np.inf).reshape(240, 2, 320, 2).min(axis=(1, 3))
    expected = np.where(np.isinf(blocks), 0.0, blocks).astype(np.float32)
    assert (expected == 0).any()  # some blocks have no reading at all
    np.testing.assert_array_equal(out, expected)


def test_occlusion_keeps_the_nearer_surface_and_leaves_disocclusions_empty():
    depth = np.full((480, 640), 2.0, np.float32)  # wall at 2 m
    depth[100:200, 200:260] = 1.0  # box at 1 m in front of it
    # Destination 5 cm to the right: the wall shifts 13 px left, the box 26 px left and covers wall points.
    out = reproject_depth(depth, K_VGA, K_VGA, translation(-0.05), (480, 640))
    expected = np.full((480, 640), 2.0, np.float32)
    expected[:, 627:] = 0.0  # right edge: nothing from beyond the source image
    expected[100:200, 174:234] = 1.0  # box; on [174, 187) wall points land too and lose
    expected[100:200, 234:247] = 0.0  # wall there was hidden behind the box in the source
    np.testing.assert_array_equal(out, expected)

    # Mirrored (5 cm to the left), so the losing wall points come after the box in scan order too.
    out = reproject_depth(depth, K_VGA, K_VGA, translation(0.05), (480, 640))
    expected = np.full((480, 640), 2.0, np.float32)
    expected[:, :13] = 0.0
    expected[100:200, 226:286] = 1.0  # box; on [273, 286) wall points land too and lose
    expected[100:200, 213:226] = 0.0
    np.testing.assert_array_equal(out, expected)


def test_invalid_source_pixels_never_produce_points():
    depth = np.zeros((48, 64), np.float32)
    depth[0, 0], depth[0, 1], depth[0, 2], depth[0, 3] = np.nan, np.inf, -1.0, -np.inf
    depth[20, 30] = 3.0
    K = intrinsics(50.0, 50.0, 31.5, 23.5)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = rot_z(3.0), (0.01, -0.02, 0.03)
    out = reproject_depth(depth, K, K, T, (48, 64))
    assert np.count_nonzero(out) == 1 and np.isfinite(out).all()


# ---------------------------------------------------------------- points_to_depth


def test_points_to_depth_hand_placed():
    K = intrinsics(10.0, 10.0, 2.0, 1.0)
    points = np.array(
        [
            [0.4, 0.2, 2.0],  # u = 10 * 0.2 + 2 = 4, v = 10 * 0.1 + 1 = 2
            [0.2, 0.1, 1.0],  # same pixel, nearer: wins
            [0.23, 0.1, 1.5],  # u = 3.53 -> 4: same pixel, farther: loses
            [0.0, 0.0, 1.5],  # (v, u) = (1, 2)
            [0.26, -0.1, 1.0],  # u = 4.6 -> 5, v = 0
            [0.3, 0.2, 1.0],  # u = 5 (last column), v = 3 (last row)
            [0.4, 0.2, -2.0],  # behind the camera; would project to (0, 0)
            [0.0, 0.0, 0.0],  # on the camera centre
            [np.nan, 0.0, 1.0],
            [0.0, np.inf, 1.0],
            [0.0, 0.0, np.nan],
            [0.6, 0.0, 1.0],  # u = 8: right of the image
            [-0.3, 0.0, 1.0],  # u = -1
            [0.0, 0.3, 1.0],  # v = 4: below the image
        ],
        np.float32,
    )
    out = points_to_depth(points, K, (4, 6))
    expected = np.zeros((4, 6), np.float32)
    expected[2, 4], expected[1, 2], expected[0, 5], expected[3, 5] = 1.0, 1.5, 1.0, 1.0
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)


def test_points_to_depth_empty_cloud():
    np.testing.assert_array_equal(
        points_to_depth(np.zeros((0, 3), np.float32), K_VGA, (480, 640)), np.zeros((480, 640), np.float32)
    )


def test_reprojection_is_fast():
    # Vectorised: a Python loop over 300k points would take far longer than these bounds.
    rng = np.random.default_rng(2)
    depth = rng.uniform(0.5, 6.0, (480, 640)).astype(np.float32)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = rot_z(2.0), (0.05, 0.0, 0.0)
    points = np.column_stack(
        [rng.uniform(-5, 5, 300_000), rng.uniform(-2, 2, 300_000), rng.uniform(-10, 20, 300_000)]
    ).astype(np.float32)

    def best_of(f, n=5):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        return min(times)

    assert best_of(lambda: reproject_depth(depth, K_VGA, K_VGA, T, (480, 640))) < 0.05
    assert best_of(lambda: points_to_depth(points, K_VGA, (480, 640))) < 0.05


# ---------------------------------------------------------------- pose helpers


def test_rotation_angle_and_pose_distance():
    assert rotation_angle_deg(np.eye(3), rot_z(30.0)) == pytest.approx(30.0, abs=1e-12)
    assert rotation_angle_deg(rot_z(-100.0), rot_z(80.0)) == pytest.approx(180.0, abs=1e-9)
    # Small angles keep full precision (arccos of the trace would be off by ~1e-8 rad here).
    assert math.radians(rotation_angle_deg(np.eye(3), rot_z(math.degrees(1e-7)))) == pytest.approx(1e-7, rel=1e-9)
    T_b = translation(3.0, 4.0)
    T_b[:3, :3] = rot_z(90.0)
    assert pose_distance(np.eye(4), T_b) == pytest.approx(5.0 + 0.5 * math.pi / 2, abs=1e-12)
    assert pose_distance(np.eye(4), T_b, metres_per_radian=2.0) == pytest.approx(5.0 + math.pi, abs=1e-12)
    assert pose_distance(T_b, T_b) == 0.0


# ---------------------------------------------------------------- keyframe memory

RGB = np.zeros((4, 6, 3), np.uint8)
DEPTH = np.ones((4, 6), np.float32)
K_SMALL = intrinsics(5.0, 5.0, 2.5, 1.5)


def view(pose, t_s, rgb=RGB, depth=DEPTH, patch_xyz=None):
    return View(rgb, depth, K_SMALL, pose, int(round(t_s * 1e9)), 'camera_color_optical_frame', patch_xyz)


def pose_at(x=0.0, y=0.0, yaw_deg=0.0):
    T = translation(x, y)
    T[:3, :3] = rot_z(yaw_deg)
    return T


def test_thresholds_and_reasons():
    m = KeyframeMemory(KeyframePolicy())
    assert m.offer(view(pose_at(), 0.0)) == 'kept: first view'
    assert m.offer(view(pose_at(0.1, yaw_deg=5.0), 1.0)) == 'skipped: moved 0.10 m, turned 5.0 deg, 1.0 s since last'
    assert m.offer(view(pose_at(0.31), 2.0)) == 'kept: moved 0.31 m'
    assert m.offer(view(pose_at(0.31, yaw_deg=17.2), 3.0)) == 'kept: turned 17.2 deg'
    assert m.offer(view(pose_at(0.31, yaw_deg=17.2), 13.5)) == 'kept: 10.5 s since last'
    assert m.offer(view(pose_at(0.31, yaw_deg=17.2), 14.0)) == 'skipped: moved 0.00 m, turned 0.0 deg, 0.5 s since last'
    assert (len(m), m.offered, m.kept, m.evicted) == (4, 6, 4, 0)
    assert m.newest_stamp_ns() == 13_500_000_000


def test_compared_with_last_kept_view_not_last_offered():
    m = KeyframeMemory(KeyframePolicy())
    m.offer(view(pose_at(), 0.0))
    assert m.offer(view(pose_at(0.1), 0.1)).startswith('skipped')
    assert m.offer(view(pose_at(0.2), 0.2)).startswith('skipped')
    assert m.offer(view(pose_at(0.3), 0.3)) == 'kept: moved 0.30 m'  # 0.1 from the previous offer


def test_older_stamp_skipped_until_clear():
    m = KeyframeMemory(KeyframePolicy())
    m.offer(view(pose_at(), 100.0))
    assert m.offer(view(pose_at(5.0), 40.0)).startswith('skipped: 60.0 s older than the last kept view')
    m.clear()
    assert len(m) == 0 and m.newest_stamp_ns() is None and m.snapshot() == ()
    assert m.offer(view(pose_at(5.0), 40.0)) == 'kept: first view'
    assert (m.offered, m.kept) == (3, 2)  # counters survive clear()


def test_evicts_most_redundant_ties_to_the_older():
    m = KeyframeMemory(KeyframePolicy(max_views=3))
    for i, x in enumerate([0.0, 1.0, 1.3, 3.0]):  # nearest-neighbour distances: 1.0, 0.3, 0.3, (newest)
        m.offer(view(pose_at(x), i))
    assert [v.pose[0, 3] for v in m.snapshot()] == [0.0, 1.3, 3.0]  # tie 1.0 vs 1.3: the older goes
    assert (m.kept, m.evicted) == (4, 1)


def test_newest_view_is_never_evicted():
    # The newest view returns to where the first one was: of that closest pair, the old one goes.
    m = KeyframeMemory(KeyframePolicy(max_views=2))
    m.offer(view(pose_at(0.0), 0.0))
    m.offer(view(pose_at(5.0), 1.0))
    assert m.offer(view(pose_at(0.01), 2.0)) == 'kept: moved 4.99 m'
    assert [v.stamp_ns for v in m.snapshot()] == [1_000_000_000, 2_000_000_000]
    # A static robot kept by time only: all poses tie, so the oldest goes and the newest stays.
    m = KeyframeMemory(KeyframePolicy(max_views=3))
    for i in range(10):
        m.offer(view(pose_at(), 11.0 * i))
        assert m.newest_stamp_ns() == int(11e9) * i
    assert [v.stamp_ns for v in m.snapshot()] == [int(11e9) * i for i in (7, 8, 9)]


def look_at_room_centre(phi, radius=1.5, height=1.2):
    """Camera on a circle around the room centre, optical z towards it, y down (world z up)."""
    c = np.array([radius * math.cos(phi), radius * math.sin(phi), height])
    z = np.array([-math.cos(phi), -math.sin(phi), 0.0])
    y = np.array([0.0, 0.0, -1.0])
    T = np.eye(4)
    T[:3, :3] = np.column_stack([np.cross(y, z), y, z])
    T[:3, 3] = c
    return T


def largest_gap_deg(views):
    angles = sorted(math.degrees(math.atan2(v.pose[1, 3], v.pose[0, 3])) % 360.0 for v in views)
    return max(np.diff(angles + [angles[0] + 360.0]))


def test_bounded_and_covering_after_two_loops_around_a_room():
    m = KeyframeMemory(KeyframePolicy(max_views=20))
    kept_in_order = []
    for i in range(1000):  # 2 loops, 0.72 deg (1.9 cm) per view, 10 Hz
        v = view(look_at_room_centre(2 * math.pi * 2 * i / 1000), 0.1 * i)
        if m.offer(v).startswith('kept'):
            kept_in_order.append(v)
        assert len(m) <= 20
    snap = m.snapshot()
    assert len(snap) == 20 and m.offered == 1000 and m.kept - m.evicted == 20
    assert snap[-1].stamp_ns == kept_in_order[-1].stamp_ns
    # Ideal spacing is 18 deg; keeping only the latest 20 views would leave a gap of about 170 deg.
    assert largest_gap_deg(kept_in_order[-20:]) > 150.0
    assert largest_gap_deg(snap) < 45.0


def test_snapshot_ordered_and_unaffected_by_later_offers():
    m = KeyframeMemory(KeyframePolicy(max_views=3))
    for i in range(3):
        m.offer(view(pose_at(float(i)), i))
    snap = m.snapshot()
    for i in range(3, 10):
        m.offer(view(pose_at(float(i)), i))
    assert isinstance(snap, tuple)
    assert [v.stamp_ns for v in snap] == [0, 1_000_000_000, 2_000_000_000]
    stamps = [v.stamp_ns for v in m.snapshot()]
    assert stamps == sorted(stamps) and stamps[-1] == 9_000_000_000


def test_stored_arrays_are_read_only():
    big = np.zeros((8, 8, 3), np.uint8)
    rgb_view = big[:4, :6]  # a view into a larger, writeable buffer: copied
    depth = np.ones((4, 6), np.float32)  # owns its data: frozen in place
    xyz = np.zeros((24, 3), np.float32)
    m = KeyframeMemory(KeyframePolicy())
    m.offer(view(pose_at(), 0.0, rgb=rgb_view, depth=depth, patch_xyz=xyz))
    (v,) = m.snapshot()
    for a in (v.rgb, v.depth, v.K, v.pose, v.patch_xyz):
        assert not a.flags.writeable
        with pytest.raises(ValueError):
            a[...] = 1
    big[:] = 255
    assert (v.rgb == 0).all()
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.stamp_ns = 5


def test_view_checks_shapes():
    with pytest.raises(ValueError):
        View(np.zeros((4, 5, 3), np.uint8), DEPTH, K_SMALL, np.eye(4), 0, 'cam')
    with pytest.raises(ValueError):
        View(RGB, DEPTH.astype(np.float64), K_SMALL, np.eye(4), 0, 'cam')
    with pytest.raises(ValueError):
        View(RGB, DEPTH, K_SMALL, np.full((4, 4), np.nan), 0, 'cam')


def test_thread_safety_smoke():
    m = KeyframeMemory(KeyframePolicy(max_views=5, min_translation_m=0.05))
    n = 3000
    errors = []

    def writer():
        for i in range(n):
            m.offer(view(look_at_room_centre(2 * math.pi * 3 * i / n), 0.01 * i))

    def reader():
        while not done.is_set():
            snap = m.snapshot()
            stamps = [v.stamp_ns for v in snap]
            if len(snap) > 5 or stamps != sorted(stamps) or any(v.depth.flags.writeable for v in snap):
                errors.append(stamps)

    done = threading.Event()
    r = threading.Thread(target=reader)
    r.start()
    writer()
    done.set()
    r.join()
    assert not errors
    assert m.offered == n and len(m) == 5 and m.kept - m.evicted == 5
