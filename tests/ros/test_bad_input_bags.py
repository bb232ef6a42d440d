"""Bad input replayed from a bag (and a malformed point cloud published live): every bad view is skipped
and counted once per kind, the good views around them are kept, and the node keeps answering."""

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy', reason='needs rclpy (make test installs it)')

from live_sensors import sensor_publishers, tf_link  # noqa: E402
from replay_helpers import TOPICS, TIMEOUT, replay  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

from adatoken3d_lab.bags import _Messages  # noqa: E402
from adatoken3d_node.client import NodeProcess, QueryClient  # noqa: E402
from adatoken3d_lab.synthetic import make_scene, orbit_frames  # noqa: E402
from conftest import write_params  # noqa: E402


def write_bad_bag(path, frames):
    """Frames 0, 3 and 6 are good; 1: unknown colour encoding; 2: depth step too small; 3: depth with NaN,
    inf and negative values (valid: no reading there); 4: zero focal length; 5: a camera frame that TF has
    never heard of."""
    from rosbags.rosbag2 import Writer

    build = _Messages()
    serialize = build.store.serialize_cdr
    with Writer(path, version=9) as writer:
        conn = {
            topic: writer.add_connection(topic, msgtype, typestore=build.store)
            for topic, msgtype in (
                (TOPICS.color_image, 'sensor_msgs/msg/Image'),
                (TOPICS.depth_image, 'sensor_msgs/msg/Image'),
                (TOPICS.color_info, 'sensor_msgs/msg/CameraInfo'),
                (TOPICS.depth_info, 'sensor_msgs/msg/CameraInfo'),
                ('/tf', 'tf2_msgs/msg/TFMessage'),
            )
        }
        for i, frame in enumerate(frames):
            stamp, frame_id = frame.stamp_ns, 'unknown_camera' if i == 5 else TOPICS.optical_frame
            depth_m = frame.depth.astype(np.float32) / 1000
            if i == 3:
                depth_m[:, :40] = np.nan
                depth_m[:10] = np.inf
                depth_m[-10:] = -1.0
            colour = build.image(frame.rgb, 'yuv422' if i == 1 else 'rgb8', stamp, frame_id)
            depth = build.image(depth_m, '32FC1', stamp, frame_id)
            if i == 2:
                depth.step = depth.width * 2  # less than width * 4 bytes
            info = build.camera_info(
                frame.K * (0.0 if i == 4 else 1.0), frame.rgb.shape[1], frame.rgb.shape[0], stamp, frame_id
            )
            writer.write(
                conn['/tf'],
                stamp - 1_000_000,
                serialize(
                    build.tf(frame.pose, stamp, TOPICS.fixed_frame, TOPICS.optical_frame), 'tf2_msgs/msg/TFMessage'
                ),
            )
            for topic, msg, kind in (
                (TOPICS.color_info, info, 'CameraInfo'),
                (TOPICS.depth_info, info, 'CameraInfo'),
                (TOPICS.depth_image, depth, 'Image'),
                (TOPICS.color_image, colour, 'Image'),
            ):
                writer.write(conn[topic], stamp, serialize(msg, f'sensor_msgs/msg/{kind}'))
    return path


def test_a_bag_of_bad_views_keeps_the_good_ones_and_counts_the_rest(random_model, tmp_path):
    objects = make_scene(seed=2)
    frames = orbit_frames(objects, n_views=7, width=160, height=120)
    bag = write_bad_bag(tmp_path / 'bad_bag', frames)
    points, _, log, response, seen = replay(
        bag, random_model, tmp_path, 'badbag', expect_views=3, question='What is in the scene?', tf_timeout_s=0.3
    )
    assert response.success, response.error
    views = set(np.unique(points['view']).tolist())
    assert views == {0, 1, 2}  # frames 0, 3 (partly valid depth) and 6
    values = seen['diagnostics']
    assert values['problems.bad_message:color/image_raw'] == '1'
    assert values['problems.bad_message:depth/image_raw'] == '1'
    assert values['problems.bad_message:color/camera_info'] == '1'
    assert values['problems.tf'] == '1' and values['views.views_kept'] == '3'
    for phrase in ('yuv422', 'step', 'focal length', 'cannot transform'):
        assert phrase in log, phrase


def test_a_point_cloud_with_an_inconsistent_layout_is_skipped_and_reported(random_model, tmp_path):
    params = write_params(
        tmp_path / 'points.yaml', depth_source='points', keyframe_min_translation_m=0.0, keyframe_min_rotation_deg=0.0
    )
    with (
        NodeProcess(
            ['namespace:=badcloud', f'model_path:={random_model}', f'params_file:={params}'],
            log_path=str(tmp_path / 'node.log'),
        ) as node,
        QueryClient(namespace='badcloud', name='badcloud_client') as client,
    ):
        client.wait_for_node(timeout=TIMEOUT)
        pubs = sensor_publishers(client, 'badcloud', ('color_image', 'color_info', 'points'), TIMEOUT, tf=True)
        fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, n in enumerate('xyz')]
        stamp = 10**9
        pubs['tf'].publish(TFMessage(transforms=[tf_link('map', 'cam', stamp), tf_link('cam', 'lidar', stamp)]))
        cloud = PointCloud2(
            height=1,
            width=100,
            fields=fields,
            point_step=8,
            row_step=800,  # z does not fit in 8
            data=bytes(800),
            is_dense=True,
        )
        cloud.header.frame_id, cloud.header.stamp.sec = 'lidar', 1
        info = CameraInfo(width=160, height=120, k=[100.0, 0, 79.5, 0, 100.0, 59.5, 0, 0, 1])
        info.header.frame_id, info.header.stamp.sec = 'cam', 1
        image = Image(width=160, height=120, encoding='rgb8', step=480, data=bytes(160 * 120 * 3))
        image.header.frame_id, image.header.stamp.sec = 'cam', 1
        pubs['points'].publish(cloud)
        pubs['color_info'].publish(info)
        pubs['color_image'].publish(image)
        client.wait_until(
            lambda: client.latest_diagnostics().get('problems.bad_message:points') == '1',
            TIMEOUT,
            'the bad cloud counted',
        )
        assert "field 'z'" in node.log() and node.alive()
        assert client.latest_diagnostics()['views_in_memory'] == '0'
