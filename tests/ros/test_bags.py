"""adatoken3d-bag write: real rosbag2 files whose messages carry the dataset exactly."""

import collections

import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from conftest import SHARED_DATA

from adatoken3d_lab.bags import CameraTopics, message_class, write_rgbd_bag
from adatoken3d_lab.datasets import load_redwood, load_tum_single
from adatoken3d_node.perception.messages import camera_info_to_model, depth_to_metres, image_to_rgb
from adatoken3d_node.perception.tf_buffer import transform_to_matrix

pytest.importorskip('rclpy', reason='deserialising checks use rclpy')
if not SHARED_DATA.is_dir():
    pytest.skip(f'{SHARED_DATA} (the real RGB-D test frames) is not here', allow_module_level=True)
from rclpy.serialization import deserialize_message  # noqa: E402

TOPICS = CameraTopics()


def read(path):
    messages = collections.defaultdict(list)
    with Reader(path) as reader:
        for connection, _, data in reader.messages():
            messages[connection.topic].append(deserialize_message(bytes(data), message_class(connection.msgtype)))
    return messages


@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_redwood_bag_carries_images_depth_intrinsics_and_poses_exactly(tmp_path, storage):
    frames = load_redwood(SHARED_DATA / 'redwood_livingroom_5')
    messages = read(write_rgbd_bag(tmp_path / 'bag', frames, TOPICS, storage=storage))
    assert {topic: len(m) for topic, m in messages.items()} == {
        TOPICS.color_image: 5,
        TOPICS.color_info: 5,
        TOPICS.depth_image: 5,
        TOPICS.depth_info: 5,
        '/tf': 5,
    }
    for frame, color, depth, info, tf in zip(
        frames, messages[TOPICS.color_image], messages[TOPICS.depth_image], messages[TOPICS.color_info], messages['/tf']
    ):
        assert color.header.frame_id == depth.header.frame_id == TOPICS.optical_frame
        np.testing.assert_array_equal(image_to_rgb(color), frame.rgb)
        assert depth.encoding == '16UC1'
        np.testing.assert_array_equal(depth_to_metres(depth), (frame.depth * 0.001).astype(np.float32))
        np.testing.assert_array_equal(camera_info_to_model(info).K, frame.K)
        link = tf.transforms[0]
        assert (link.header.frame_id, link.child_frame_id) == (TOPICS.fixed_frame, TOPICS.optical_frame)
        assert link.header.stamp.sec * 10**9 + link.header.stamp.nanosec == frame.stamp_ns
        t, q = link.transform.translation, link.transform.rotation
        np.testing.assert_allclose(transform_to_matrix((t.x, t.y, t.z), (q.x, q.y, q.z, q.w)), frame.pose, atol=1e-9)


def test_frame_without_pose_gets_an_identity_static_transform_and_metric_depth(tmp_path):
    frame = load_tum_single(SHARED_DATA / 'tum_single')[0]
    messages = read(write_rgbd_bag(tmp_path / 'tum', [frame], TOPICS))
    assert '/tf' not in messages and len(messages['/tf_static']) == 1
    rotation = messages['/tf_static'][0].transforms[0].transform.rotation
    assert (rotation.x, rotation.y, rotation.z, rotation.w) == (0.0, 0.0, 0.0, 1.0)
    depth = messages[TOPICS.depth_image][0]
    assert depth.encoding == '32FC1'
    np.testing.assert_array_equal(depth_to_metres(depth), frame.depth)
    assert 0.15 < float((frame.depth == 0).mean()) < 0.25  # Redwood frame 0: about 19% of its pixels have no depth
