"""TF buffer (tf2 semantics) and approximate time sync: exact values against hand-composed results."""

import math
import threading
import time

import numpy as np
import pytest

from adatoken3d_node.perception.sync import ApproximateTimeSync
from adatoken3d_node.perception.tf_buffer import (
    ExtrapolationError,
    FrameNotFoundError,
    TransformBuffer,
    TransformError,
    matrix_to_transform,
    transform_to_matrix,
)

S = 1_000_000_000  # ns per second
MS = 1_000_000  # ns per millisecond
Q_ID = (0.0, 0.0, 0.0, 1.0)
Q_YAW90 = (0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4))
# camera_link (x forward, y left, z up) -> optical (x right, y down, z forward), REP-103.
Q_OPTICAL = (-0.5, 0.5, -0.5, 0.5)
R_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def rigid(R=np.eye(3), t=(0.0, 0.0, 0.0)):
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def rz(deg):
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def q_yaw(deg):
    return (0.0, 0.0, math.sin(math.radians(deg) / 2), math.cos(math.radians(deg) / 2))


@pytest.fixture
def buf():
    """map -odom-> (dynamic) -> base_link (dynamic) -> camera_link (static) -> camera_optical (static).

    t = 10 s: map->odom (1, 0, 0), odom->base_link at the origin, yaw 0.
    t = 12 s: map->odom (3, 0, 0), odom->base_link (2, 2, 0), yaw 90 deg.
    """
    b = TransformBuffer(cache_time_s=10.0)
    b.set_transform('map', 'odom', 10 * S, (1.0, 0.0, 0.0), Q_ID)
    b.set_transform('map', 'odom', 12 * S, (3.0, 0.0, 0.0), Q_ID)
    b.set_transform('odom', 'base_link', 10 * S, (0.0, 0.0, 0.0), Q_ID)
    b.set_transform('odom', 'base_link', 12 * S, (2.0, 2.0, 0.0), Q_YAW90)
    b.set_transform('base_link', 'camera_link', 0, (0.1, 0.0, 0.5), Q_ID, static=True)
    b.set_transform('camera_link', 'camera_optical', 0, (0.0, 0.0, 0.0), Q_OPTICAL, static=True)
    return b


# ---------------------------------------------------------------------------------- conversions


def test_transform_to_matrix_known_rotations():
    assert np.allclose(transform_to_matrix((1, 2, 3), Q_OPTICAL), rigid(R_OPTICAL, (1, 2, 3)), atol=1e-15)
    assert np.allclose(transform_to_matrix((0, 0, 0), Q_YAW90), rigid(rz(90)), atol=1e-15)
    # Not normalised on input: normalised, not rejected.
    assert np.array_equal(transform_to_matrix((0, 0, 0), (0, 0, 0, 2.0)), np.eye(4))


def test_matrix_transform_round_trip():
    rng = np.random.default_rng(0)
    qs = list(rng.standard_normal((50, 4))) + [
        np.array(q, float) for q in [(1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), Q_OPTICAL, Q_ID]
    ]
    for q in qs:
        q = q / np.linalg.norm(q)
        t = rng.standard_normal(3)
        T = transform_to_matrix(t, q)
        t2, q2 = matrix_to_transform(T)
        assert np.array_equal(t2, t)
        assert q2[3] >= 0  # canonical sign; q and -q are the same rotation
        assert np.allclose(q2, q if q[3] > 0 else -q, atol=1e-12) or (q[3] == 0 and np.allclose(q2, q, atol=1e-12))
        assert np.allclose(transform_to_matrix(t2, q2), T, atol=1e-12)


@pytest.mark.parametrize(
    't, q',
    [
        ((np.nan, 0, 0), Q_ID),
        ((0, 0, np.inf), Q_ID),
        ((0, 0, 0), (0, 0, np.nan, 1)),
        ((0, 0, 0), (0, 0, 0, 0)),
        ((0, 0), Q_ID),
        ((0, 0, 0), (0, 0, 1)),
    ],
)
def test_set_transform_rejects_bad_values(t, q):
    with pytest.raises(ValueError):
        TransformBuffer().set_transform('a', 'b', 0, t, q)


def test_set_transform_rejects_bad_frames():
    for parent, child in [('', 'b'), ('a', ''), ('a', 'a')]:
        with pytest.raises(ValueError):
            TransformBuffer().set_transform(parent, child, 0, (0, 0, 0), Q_ID)


# ---------------------------------------------------------------------------------- lookup


def test_chain_lookup_matches_hand_composition(buf):
    # t = 12 s: map->odom (3,0,0); odom->base yaw 90 at (2,2,0); base->camera (0.1,0,0.5); optical rotation.
    # R = Rz(90) @ R_OPTICAL = [[1,0,0],[0,0,1],[0,-1,0]]; t = (3,0,0) + (2,2,0) + Rz(90)(0.1,0,0.5) = (5, 2.1, 0.5).
    expected = np.array([[1.0, 0.0, 0.0, 5.0], [0.0, 0.0, 1.0, 2.1], [0.0, -1.0, 0.0, 0.5], [0.0, 0.0, 0.0, 1.0]])
    T = buf.lookup('map', 'camera_optical', 12 * S)
    assert T.shape == (4, 4) and T.dtype == np.float64
    assert np.allclose(T, expected, atol=1e-12)
    # A point 1 m in front of the camera (optical +z): the robot faces map +y, so it is 1 m further in y.
    assert np.allclose(T @ [0, 0, 1, 1], [5.0, 3.1, 0.5, 1.0], atol=1e-12)
    # The reverse direction is the inverse; a lookup between branches meets at the common ancestor.
    assert np.allclose(buf.lookup('camera_optical', 'map', 12 * S), np.linalg.inv(expected), atol=1e-12)
    assert np.allclose(
        buf.lookup('odom', 'camera_optical', 12 * S),
        rigid(rz(90), (2, 2, 0)) @ rigid(t=(0.1, 0, 0.5)) @ rigid(R_OPTICAL),
        atol=1e-12,
    )


def test_static_links_are_valid_at_every_time(buf):
    expected = rigid(R_OPTICAL, (0.1, 0.0, 0.5))
    for t in (0, 11 * S, 10**6 * S):
        assert np.allclose(buf.lookup('base_link', 'camera_optical', t), expected, atol=1e-15)


def test_same_frame_is_identity(buf):
    assert np.array_equal(buf.lookup('map', 'map', 0), np.eye(4))
    assert np.array_equal(buf.lookup('not_there', 'not_there', 5 * S), np.eye(4))  # like tf2


def test_exact_sample_times_return_the_sample_exactly(buf):
    assert np.array_equal(buf.lookup('map', 'odom', 10 * S), rigid(t=(1.0, 0.0, 0.0)))
    assert np.array_equal(buf.lookup('map', 'odom', 12 * S), rigid(t=(3.0, 0.0, 0.0)))
    assert np.array_equal(buf.lookup('odom', 'base_link', 12 * S), transform_to_matrix((2.0, 2.0, 0.0), Q_YAW90))


def test_interpolation_midpoint(buf):
    # t = 11 s: map->odom (2, 0, 0); odom->base (1, 1, 0) with yaw 90 slerped to 45.
    assert np.allclose(buf.lookup('odom', 'base_link', 11 * S), rigid(rz(45), (1.0, 1.0, 0.0)), atol=1e-12)
    assert np.allclose(buf.lookup('map', 'base_link', 11 * S), rigid(rz(45), (3.0, 1.0, 0.0)), atol=1e-12)
    # A quarter of the way: yaw 22.5, translation (0.5, 0.5, 0).
    assert np.allclose(buf.lookup('odom', 'base_link', 10 * S + S // 2), rigid(rz(22.5), (0.5, 0.5, 0.0)), atol=1e-12)


def test_slerp_takes_the_shortest_path():
    b = TransformBuffer()
    # yaw 90 stored as -q: the same rotation; the midpoint is yaw 45, not -135.
    b.set_transform('a', 'b', 0, (0, 0, 0), Q_ID)
    b.set_transform('a', 'b', 2 * S, (0, 0, 0), tuple(-v for v in Q_YAW90))
    assert np.allclose(b.lookup('a', 'b', S), rigid(rz(45)), atol=1e-12)
    # 170 -> -170 crosses 180 (dot of the quaternions < 0): midpoint is 180, not 0.
    b.set_transform('a', 'c', 0, (0, 0, 0), q_yaw(170))
    b.set_transform('a', 'c', 2 * S, (0, 0, 0), q_yaw(-170))
    assert np.allclose(b.lookup('a', 'c', S), rigid(rz(180)), atol=1e-12)
    # Nearly equal rotations (the normalised-lerp branch) still land on the right angle.
    b.set_transform('a', 'd', 0, (0, 0, 0), q_yaw(10.0))
    b.set_transform('a', 'd', 2 * S, (0, 0, 0), q_yaw(10.2))
    assert np.allclose(b.lookup('a', 'd', S), rigid(rz(10.1)), atol=1e-9)


def test_extrapolation_into_the_future_raises_with_interval(buf):
    with pytest.raises(ExtrapolationError) as e:
        buf.lookup('map', 'camera_optical', 12 * S + 50 * MS)
    assert str(e.value) == (
        'cannot transform camera_optical -> map at t=12.050 s: link odom->base_link has data '
        'for [10.000, 12.000] s (extrapolation into the future by 0.050 s)'
    )
    assert isinstance(e.value, TransformError) and isinstance(e.value, LookupError)
    assert not buf.can_transform('map', 'camera_optical', 12 * S + 1)


def test_extrapolation_into_the_past_raises_with_interval(buf):
    with pytest.raises(ExtrapolationError) as e:
        buf.lookup('map', 'odom', 9_900 * MS)
    assert str(e.value) == (
        'cannot transform odom -> map at t=9.900 s: link map->odom has data '
        'for [10.000, 12.000] s (extrapolation into the past by 0.100 s)'
    )
    assert buf.can_transform('map', 'odom', 10 * S)


def test_single_sample_link_only_valid_at_its_stamp():
    b = TransformBuffer()
    b.set_transform('a', 'b', 5 * S, (1, 0, 0), Q_ID)
    assert np.array_equal(b.lookup('a', 'b', 5 * S), rigid(t=(1, 0, 0)))
    with pytest.raises(ExtrapolationError, match=r'\[5\.000, 5\.000\] s \(extrapolation into the future by 0\.000 s'):
        b.lookup('a', 'b', 5 * S + 1)


def test_unknown_frame_raises(buf):
    with pytest.raises(FrameNotFoundError, match="frame 'camera_colour' does not exist") as e:
        buf.lookup('map', 'camera_colour', 11 * S)
    assert 'camera_optical' in str(e.value)  # lists what does exist
    with pytest.raises(FrameNotFoundError, match="frame 'earth' does not exist"):
        buf.lookup('earth', 'map', 11 * S)


def test_disconnected_trees_raise(buf):
    buf.set_transform('world', 'robot2', 0, (0, 0, 0), Q_ID, static=True)
    with pytest.raises(FrameNotFoundError) as e:
        buf.lookup('map', 'robot2', 11 * S)
    assert str(e.value) == (
        'cannot transform robot2 -> map at t=11.000 s: frames are not connected '
        '(robot2 is in the tree rooted at world, map in the tree rooted at map)'
    )
    assert not buf.can_transform('map', 'robot2', 11 * S)


def test_reparenting_latest_parent_wins(buf):
    buf.set_transform('map', 'base_link', 11 * S, (7.0, 0.0, 0.0), Q_ID, static=True)
    assert np.array_equal(buf.lookup('map', 'base_link', 11 * S), rigid(t=(7.0, 0.0, 0.0)))
    # odom is still map's child; base_link now reaches odom through map: T_odom_map @ T_map_base.
    assert np.allclose(buf.lookup('odom', 'base_link', 11 * S), rigid(t=(5.0, 0.0, 0.0)), atol=1e-12)
    # ... and back to a dynamic parent: the static link is gone, only the new history counts.
    buf.set_transform('odom', 'base_link', 20 * S, (0.0, 1.0, 0.0), Q_ID)
    assert np.array_equal(buf.lookup('odom', 'base_link', 20 * S), rigid(t=(0.0, 1.0, 0.0)))
    with pytest.raises(ExtrapolationError, match=r'\[20\.000, 20\.000\]'):
        buf.lookup('odom', 'base_link', 11 * S)


def test_cache_trimming_bounds_history():
    b = TransformBuffer(cache_time_s=1.0)
    for i in range(100):  # 10 Hz for 10 s, x = i metres
        assert b.set_transform('odom', 'base_link', i * 100 * MS, (float(i), 0, 0), Q_ID)
    assert len(b._links['base_link'].stamps) == 11  # 8.9 s .. 9.9 s: 1 s behind the newest, inclusive
    assert np.array_equal(b.lookup('odom', 'base_link', 8_900 * MS), rigid(t=(89.0, 0, 0)))
    with pytest.raises(
        ExtrapolationError,
        match=r'has data for \[8\.900, 9\.900\] s \(extrapolation into the '
        r'past by 0\.100 s\)',
    ):
        b.lookup('odom', 'base_link', 8_800 * MS)
    # Data older than the cache is ignored (tf2: TF_OLD_DATA); newer-but-out-of-order data is inserted.
    assert not b.set_transform('odom', 'base_link', 5 * S, (0, 0, 0), Q_ID)
    assert b.set_transform('odom', 'base_link', 9_250 * MS, (100.0, 0, 0), Q_ID)
    assert np.array_equal(b.lookup('odom', 'base_link', 9_250 * MS), rigid(t=(100.0, 0, 0)))
    assert len(b._links['base_link'].stamps) == 12
    assert b.newest_stamp_ns() == 9_900 * MS


def test_same_stamp_replaces_sample():
    b = TransformBuffer()
    b.set_transform('a', 'b', S, (1, 0, 0), Q_ID)
    b.set_transform('a', 'b', S, (2, 0, 0), Q_ID)
    assert np.array_equal(b.lookup('a', 'b', S), rigid(t=(2, 0, 0)))
    assert len(b._links['b'].stamps) == 1


def test_lookup_waits_for_data_from_another_thread(buf):
    stamp = 13 * S
    set_at = []

    def publish():
        time.sleep(0.2)
        buf.set_transform('map', 'odom', stamp, (4.0, 0.0, 0.0), Q_ID)  # wakes the lookup: still short
        time.sleep(0.1)
        set_at.append(time.monotonic())
        buf.set_transform('odom', 'base_link', stamp, (0.0, 0.0, 0.0), Q_ID)  # completes the chain

    thread = threading.Thread(target=publish)
    start = time.monotonic()
    thread.start()
    T = buf.lookup('map', 'base_link', stamp, timeout_s=5.0)
    returned = time.monotonic()
    thread.join()
    assert np.array_equal(T, rigid(t=(4.0, 0.0, 0.0)))
    assert returned >= set_at[0]  # it waited until the chain was complete ...
    assert returned - start < 2.0  # ... and not until the timeout


def test_lookup_times_out_with_the_last_error(buf):
    start = time.monotonic()
    with pytest.raises(
        ExtrapolationError,
        match=r'link odom->base_link has data for \[10\.000, 12\.000\] s '
        r'\(extrapolation into the future by 1\.000 s\)',
    ):
        buf.lookup('map', 'base_link', 13 * S, timeout_s=0.3)
    elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 2.0
    with pytest.raises(FrameNotFoundError):
        buf.lookup('map', 'nowhere', 13 * S, timeout_s=0.05)


def test_frames_newest_and_clear(buf):
    assert buf.frames() == {'map', 'odom', 'base_link', 'camera_link', 'camera_optical'}
    assert buf.newest_stamp_ns() == 12 * S
    buf.clear()
    # Static links survive (tf_static is latched, it would not be re-sent after a bag loop).
    assert buf.frames() == {'base_link', 'camera_link', 'camera_optical'}
    assert buf.newest_stamp_ns() is None
    assert np.allclose(buf.lookup('base_link', 'camera_optical', 0), rigid(R_OPTICAL, (0.1, 0, 0.5)), atol=1e-15)
    with pytest.raises(FrameNotFoundError):
        buf.lookup('map', 'base_link', 11 * S)
    # After the jump back, older data is accepted again.
    assert buf.set_transform('map', 'base_link', 1 * S, (1.0, 0.0, 0.0), Q_ID)
    assert np.allclose(buf.lookup('map', 'camera_optical', 1 * S), rigid(R_OPTICAL, (1.1, 0, 0.5)), atol=1e-15)
    assert TransformBuffer().newest_stamp_ns() is None


# ---------------------------------------------------------------------------------- sync


def check_accounting(sync, added, used):
    """Every message is used once, dropped, or still queued."""
    pending, dropped = sync.pending(), sync.dropped
    for k in sync.keys:
        assert added[k] == used[k] + dropped[k] + pending[k], k


def test_sync_pairs_within_slop_and_at_the_boundary():
    sync = ApproximateTimeSync(['color', 'depth'], slop_s=0.010)
    assert sync.add('color', 100 * MS, 'c100') == []
    assert sync.add('depth', 105 * MS, 'd105') == [{'color': 'c100', 'depth': 'd105'}]
    assert sync.add('color', 200 * MS, 'c200') == []
    assert sync.add('depth', 210 * MS, 'd210') == [{'color': 'c200', 'depth': 'd210'}]  # max - min == slop
    assert sync.emitted == 2 and sync.pending() == {'color': 0, 'depth': 0}
    assert sync.dropped == {'color': 0, 'depth': 0}


def test_sync_refuses_beyond_slop():
    sync = ApproximateTimeSync(['color', 'depth'], slop_s=0.010)
    assert sync.add('color', 100 * MS, 'c100') == []
    assert sync.add('depth', 110 * MS + 1, 'd110+') == []
    assert sync.add('depth', 89 * MS, 'd89') == []
    assert sync.emitted == 0 and sync.pending() == {'color': 1, 'depth': 2}


def test_sync_chooses_closest_candidate_and_drops_older():
    sync = ApproximateTimeSync(['color', 'depth'], slop_s=0.010)
    for t in (100, 104, 108):
        assert sync.add('color', t * MS, f'c{t}') == []
    assert sync.add('depth', 105 * MS, 'd105') == [{'color': 'c104', 'depth': 'd105'}]
    assert sync.dropped == {'color': 1, 'depth': 0}  # c100 is older than the set
    assert sync.pending() == {'color': 1, 'depth': 0}  # c108 stays for the next set
    assert sync.add('depth', 109 * MS, 'd109') == [{'color': 'c108', 'depth': 'd109'}]
    check_accounting(sync, {'color': 3, 'depth': 2}, {'color': 2, 'depth': 2})


def test_sync_tie_goes_to_the_older_candidate():
    sync = ApproximateTimeSync(['color', 'depth'], slop_s=0.010)
    sync.add('color', 100 * MS, 'c100')
    sync.add('color', 110 * MS, 'c110')
    assert sync.add('depth', 105 * MS, 'd105') == [{'color': 'c100', 'depth': 'd105'}]
    assert sync.pending() == {'color': 1, 'depth': 0}


def test_sync_uses_each_message_once():
    sync = ApproximateTimeSync(['color', 'depth'], slop_s=0.010)
    sync.add('color', 100 * MS, 'c100')
    assert sync.add('depth', 101 * MS, 'd101') == [{'color': 'c100', 'depth': 'd101'}]
    assert sync.add('depth', 102 * MS, 'd102') == []  # c100 is spent
    assert sync.add('color', 103 * MS, 'c103') == [{'color': 'c103', 'depth': 'd102'}]


def test_sync_never_goes_back_in_time():
    sync = ApproximateTimeSync(['color', 'depth'], slop_s=0.010)
    for t in (50, 60, 98):
        assert sync.add('depth', t * MS, f'd{t}') == []
    assert sync.add('color', 100 * MS, 'c100') == [{'color': 'c100', 'depth': 'd98'}]
    assert sync.dropped == {'color': 0, 'depth': 2}  # d50 and d60: older than the set, never usable
    assert sync.pending() == {'color': 0, 'depth': 0}
    # Late messages at or before the last emitted stamp of their key are dropped at once.
    assert sync.add('color', 99 * MS, 'c99') == []
    assert sync.add('depth', 98 * MS, 'd98 again') == []
    assert sync.dropped == {'color': 1, 'depth': 3} and sync.pending() == {'color': 0, 'depth': 0}
    check_accounting(sync, {'color': 2, 'depth': 4}, {'color': 1, 'depth': 1})
    # clear() (time jumped back: a looped bag) makes old stamps acceptable again.
    sync.clear()
    sync.add('color', 10 * MS, 'c10')
    assert sync.add('depth', 11 * MS, 'd11') == [{'color': 'c10', 'depth': 'd11'}]


def test_sync_queue_bound_with_unbalanced_rates():
    sync = ApproximateTimeSync(['color', 'depth'], slop_s=0.005, queue_size=10)
    for i in range(1000):  # 30 Hz colour, no depth at all (e.g. a depth topic on the wrong QoS)
        assert sync.add('color', i * 33 * MS, i) == []
        assert sync.pending()['color'] <= 10
    assert sync.pending() == {'color': 10, 'depth': 0}
    assert sync.dropped == {'color': 990, 'depth': 0} and sync.emitted == 0
    # Depth never within slop of colour: every depth message is eventually dropped too.
    for i in range(980, 1000):  # 16-17 ms from every colour stamp
        assert sync.add('depth', i * 33 * MS + 16 * MS, f'd{i}') == []
    assert sync.pending() == {'color': 10, 'depth': 10} and sync.dropped == {'color': 990, 'depth': 10}
    # One depth message that fits pairs with the newest colour and flushes everything older
    # (it also pushes the oldest depth out of the full queue).
    assert sync.add('depth', 999 * 33 * MS + 1 * MS, 'd') == [{'color': 999, 'depth': 'd'}]
    assert sync.pending() == {'color': 0, 'depth': 1}  # d999 (+16 ms) is newer than the set
    assert sync.dropped == {'color': 999, 'depth': 19}
    check_accounting(sync, {'color': 1000, 'depth': 21}, {'color': 1, 'depth': 1})


def test_sync_full_queue_drops_an_arriving_message_older_than_all():
    sync = ApproximateTimeSync(['color', 'depth'], slop_s=0.005, queue_size=2)
    sync.add('color', 100 * MS, 'c100')
    sync.add('color', 200 * MS, 'c200')
    sync.add('depth', 52 * MS, 'd52')
    assert sync.add('color', 50 * MS, 'c50') == []  # would pair with d52, but the queue keeps the newest
    assert sync.dropped == {'color': 1, 'depth': 0} and sync.pending() == {'color': 2, 'depth': 1}


def test_sync_out_of_order_arrival_within_a_queue():
    sync = ApproximateTimeSync(['color', 'depth'], slop_s=0.010)
    for t in (120, 100, 110):
        assert sync.add('color', t * MS, f'c{t}') == []
    assert sync.add('depth', 101 * MS, 'd101') == [{'color': 'c100', 'depth': 'd101'}]
    assert sync.pending() == {'color': 2, 'depth': 0} and sync.dropped == {'color': 0, 'depth': 0}
    assert sync.add('depth', 111 * MS, 'd111') == [{'color': 'c110', 'depth': 'd111'}]
    assert sync.add('depth', 119 * MS, 'd119') == [{'color': 'c120', 'depth': 'd119'}]
    # Same stamp twice on one input: the newer message replaces the queued one.
    sync.add('color', 130 * MS, 'first')
    assert sync.add('color', 130 * MS, 'second') == []
    assert sync.add('depth', 131 * MS, 'd131') == [{'color': 'second', 'depth': 'd131'}]
    assert sync.dropped == {'color': 1, 'depth': 0}


def test_sync_three_keys():
    sync = ApproximateTimeSync(['color', 'depth', 'color_info'], slop_s=0.010)
    assert sync.add('color', 100 * MS, 'c') == []
    assert sync.add('depth', 104 * MS, 'd') == []
    assert sync.add('color_info', 93 * MS, 'i93') == []  # 93..104 is 11 ms: beyond slop
    assert sync.add('color_info', 96 * MS, 'i96') == [{'color': 'c', 'depth': 'd', 'color_info': 'i96'}]
    assert sync.dropped == {'color': 0, 'depth': 0, 'color_info': 1}  # i93 is older than the set
    sync.add('color', 200 * MS, 'c2')
    sync.add('color_info', 200 * MS, 'i2')
    assert sync.add('depth', 211 * MS, 'd211') == []  # 11 ms from both
    assert sync.add('depth', 205 * MS, 'd205') == [{'color': 'c2', 'depth': 'd205', 'color_info': 'i2'}]
    assert sync.pending() == {'color': 0, 'depth': 1, 'color_info': 0}  # d211 is newer: kept


def test_sync_four_keys_keeps_all_stamps_within_slop():
    keys = ['color', 'depth', 'color_info', 'depth_info']
    sync = ApproximateTimeSync(keys, slop_s=0.010)
    # Closest to the arriving colour (100 ms): depth 93 and depth_info 107, but those are 14 ms apart.
    # Fitting sets: {93, 91} (cost 7 + 9 = 16) or {108, 107} (cost 8 + 7 = 15): the lower cost wins.
    for key, t in [('depth', 93), ('depth', 108), ('depth_info', 107), ('depth_info', 91), ('color_info', 100)]:
        assert sync.add(key, t * MS, f'{key}{t}') == []
    assert sync.add('color', 100 * MS, 'color100') == [
        {'color': 'color100', 'depth': 'depth108', 'color_info': 'color_info100', 'depth_info': 'depth_info107'}
    ]
    assert sync.dropped == {'color': 0, 'depth': 1, 'color_info': 0, 'depth_info': 1}
    # Usual camera case: info shares the image stamp, depth is a few ms off.
    for i in range(1, 6):
        t = 100 + 33 * i
        sync.add('color_info', t * MS, ('ci', i))
        sync.add('depth_info', (t + 3) * MS, ('di', i))
        sync.add('depth', (t + 3) * MS, ('d', i))
        assert sync.add('color', t * MS, ('c', i)) == [
            {'color': ('c', i), 'depth': ('d', i), 'color_info': ('ci', i), 'depth_info': ('di', i)}
        ]
    assert sync.emitted == 6


def test_sync_is_thread_safe():
    """A smoke test: two feeding threads; the invariants hold (races under the GIL are rare to hit)."""
    sync = ApproximateTimeSync(['color', 'depth'], slop_s=0.004, queue_size=5)
    results = []

    def feed(key, offset_ms):
        for i in range(2000):
            results.extend(sync.add(key, (i * 10 + offset_ms) * MS, (key, i)))

    threads = [threading.Thread(target=feed, args=('color', 0)), threading.Thread(target=feed, args=('depth', 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    used = {k: [s[k] for s in results] for k in ('color', 'depth')}
    for k in used:
        assert len(set(used[k])) == len(used[k])  # each message at most once
    for s in results:
        assert s['color'][1] == s['depth'][1]  # only the 2 ms partner is within 4 ms
    assert len(results) == sync.emitted > 0
    check_accounting(sync, {'color': 2000, 'depth': 2000}, {k: len(v) for k, v in used.items()})


def test_sync_rejects_bad_arguments():
    with pytest.raises(ValueError):
        ApproximateTimeSync([], 0.01)
    with pytest.raises(ValueError):
        ApproximateTimeSync(['a', 'a'], 0.01)
    with pytest.raises(ValueError):
        ApproximateTimeSync(['a', 'b'], -0.01)
    with pytest.raises(ValueError):
        ApproximateTimeSync(['a', 'b'], 0.01, queue_size=0)
    with pytest.raises(KeyError, match='rgb'):
        ApproximateTimeSync(['a', 'b'], 0.01).add('rgb', 0, None)


def test_reliable_sensor_qos_lets_as_many_sets_wait_as_its_depth():
    from adatoken3d_node import parameters
    from adatoken3d_node.sensors import PENDING_SETS, SensorConfig

    config = parameters.defaults()
    assert config['sensor_qos_reliability'] == 'best_effort'
    assert SensorConfig.from_parameters(config).pending_sets == PENDING_SETS  # stale sets dropped: fresh views
    config.update(sensor_qos_reliability='reliable', sensor_qos_depth=20)  # a replay that must lose nothing
    assert SensorConfig.from_parameters(config).pending_sets == 20
