"""Bad input published live into the node: it never dies, skips what it cannot use with one log line per
kind per period, keeps answering, and refuses a flood of queries with reasons instead of losing them."""

import time

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy', reason='needs rclpy (make test installs it)')

from lifecycle_msgs.msg import State  # noqa: E402
from lifecycle_msgs.srv import GetState  # noqa: E402
from live_sensors import live_node, stamped, tf_link, throttled_lines  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

from adatoken3d_node.node import REFUSAL_LOG_PERIOD_S  # noqa: E402
from adatoken3d_node.stats import PROBLEM_LOG_PERIOD_S  # noqa: E402

W, H, TIMEOUT = 160, 120, 120.0
K = [100.0, 0.0, 79.5, 0.0, 100.0, 59.5, 0.0, 0.0, 1.0]


def good_colour(stamp):
    data = np.random.default_rng(stamp % 97).integers(0, 255, (H, W, 3), dtype=np.uint8).tobytes()
    return stamped(Image(width=W, height=H, encoding='rgb8', step=3 * W, data=data), stamp, 'cam')


def good_depth(stamp, values=None):
    depth = np.full((H, W), 2.0, np.float32) if values is None else values
    return stamped(Image(width=W, height=H, encoding='32FC1', step=4 * W, data=depth.tobytes()), stamp, 'cam')


@pytest.fixture(scope='module')
def rig(random_model, tmp_path_factory):
    root = tmp_path_factory.mktemp('bad')
    overrides = dict(keyframe_min_translation_m=0.0, keyframe_min_rotation_deg=0.0, tf_timeout_s=0.2)
    with live_node(root, random_model, 'bad', TIMEOUT, **overrides) as rig:
        yield rig


def send(pubs, stamp, colour=None, depth=None, info=None, tf_stamp=None):
    pubs['tf'].publish(TFMessage(transforms=[tf_link('map', 'cam', stamp if tf_stamp is None else tf_stamp)]))
    pubs['color_info'].publish(info or stamped(CameraInfo(width=W, height=H, k=K), stamp, 'cam'))
    pubs['depth_info'].publish(stamped(CameraInfo(width=W, height=H, k=K), stamp, 'cam'))
    pubs['depth_image'].publish(depth or good_depth(stamp))
    pubs['color_image'].publish(colour or good_colour(stamp))


def problems(client, kind):
    return int(client.latest_diagnostics().get(f'problems.{kind}', 0))


CASES = [
    # (problem kind counted in /diagnostics, what to publish, a phrase of the log line)
    ('bad_message:color/image_raw', dict(colour_encoding='yuv422'), 'yuv422'),
    ('bad_message:depth/image_raw', dict(depth_truncated=True), 'step*height'),
    ('bad_message:color/image_raw', dict(colour_step=W), 'step'),
    ('bad_message:color/camera_info', dict(zero_focal=True), 'color/camera_info'),
]


def bad_messages(stamp, case):
    colour, depth, info = good_colour(stamp), good_depth(stamp), None
    if 'colour_encoding' in case:
        colour.encoding = case['colour_encoding']
    if 'colour_step' in case:
        colour.step = case['colour_step']
    if case.get('depth_truncated'):
        depth.data = depth.data[: len(depth.data) // 2]
    if case.get('zero_focal'):
        info = stamped(CameraInfo(width=W, height=H, k=[0.0] * 9), stamp, 'cam')
    return dict(colour=colour, depth=depth, info=info)


def test_malformed_messages_are_skipped_logged_once_and_counted(rig):
    client, node, pubs = rig
    stamp = 10**9
    started = time.monotonic()
    for kind, case, phrase in CASES:
        before = problems(client, kind)
        for _ in range(3):  # the same problem three times: one log line (per PROBLEM_LOG_PERIOD_S)
            stamp += 10**8
            send(pubs, stamp, **bad_messages(stamp, case))
            client.wait_until(lambda: problems(client, kind) > before, TIMEOUT, f'{kind} counted')
            before = problems(client, kind)
        assert phrase in node.log(), (kind, node.log()[-2000:])
    log, lines = node.log(), min(throttled_lines(started, PROBLEM_LOG_PERIOD_S), 2)  # < the 3 occurrences
    assert 1 <= log.count('yuv422') <= lines and 1 <= log.count('step*height') <= lines
    assert client.latest_diagnostics()['views_in_memory'] == '0'
    refused = client.query('Still answering?', max_new_tokens=2)  # alive, and says why it cannot answer
    assert not refused.success and 'no usable view of the scene yet' in refused.error


def test_non_finite_depth_is_no_reading_and_the_view_is_kept(rig):
    client, node, pubs = rig
    depth = np.full((H, W), 2.0, np.float32)
    depth[:, : W // 2] = np.nan
    depth[:10] = np.inf
    depth[-10:] = -1.0
    kept = int(client.latest_diagnostics().get('views.views_kept', 0))
    stamp = 50 * 10**9
    send(pubs, stamp, depth=good_depth(stamp, depth))
    client.wait_until(
        lambda: int(client.latest_diagnostics().get('views.views_kept', 0)) == kept + 1, TIMEOUT, 'the view kept'
    )
    values = client.latest_diagnostics()
    assert int(values['scene.dropped_patches']) > 576 // 2  # the NaN half and the inf/negative rows


def test_time_going_backwards_clears_the_memory_and_is_reported_once(rig):
    client, node, pubs = rig
    client.wait_until(lambda: int(client.latest_diagnostics().get('views_in_memory', 0)) >= 1, TIMEOUT, 'a view')
    for back in (5, 4):  # a looped bag: stamps jump back to the start, twice
        stamp = back * 10**9
        send(pubs, stamp)
    client.wait_until(lambda: problems(client, 'time_jump') >= 1, TIMEOUT, 'the time jump')
    assert node.log().count('time went backwards') == 1
    client.wait_until(
        lambda: client.latest_diagnostics().get('views_in_memory') == '1',
        TIMEOUT,
        'memory rebuilt from the new timeline',
    )


def test_a_flood_of_queries_is_answered_or_refused_every_one(rig):
    client, node, pubs = rig
    started = time.monotonic()
    futures = [client.query_async(f'Flood {i}?', max_new_tokens=2) for i in range(1000)]
    responses = [client._result(f, TIMEOUT, f'flood {i}') for i, f in enumerate(futures)]
    log_lines = throttled_lines(started, REFUSAL_LOG_PERIOD_S)  # however long the flood took here
    answered = [r for r in responses if r.success]
    refused = [r for r in responses if not r.success]
    assert len(responses) == 1000 and len(answered) >= 11
    assert all('queue is full' in r.error for r in refused)
    # the flood's own lines (an earlier test's refusal is in the log too): rate-limited, not 989 of them
    assert node.alive() and 1 <= node.log().count('query refused: the query queue is full') <= log_lines
    get_state = client.node.create_client(GetState, '/bad/adatoken3d/get_state')
    assert get_state.wait_for_service(timeout_sec=TIMEOUT)
    assert (
        client._result(get_state.call_async(GetState.Request()), TIMEOUT, 'state').current_state.id
        == State.PRIMARY_STATE_ACTIVE
    )


def test_a_point_far_from_the_scene_is_refused_and_one_inside_is_answered(rig):
    client, node, pubs = rig
    client.wait_until(lambda: int(client.latest_diagnostics().get('views_in_memory', 0)) >= 1, TIMEOUT, 'a view')
    far = client.query('What is at [40.0, -3.0, 12.0]?', max_new_tokens=2)
    assert not far.success and 'from anything in the scene memory' in far.error
    near = client.query('What is at [0.0, 0.0, 2.0]?', max_new_tokens=2)  # on the plane 2 m ahead of the camera
    assert near.success, near.error
