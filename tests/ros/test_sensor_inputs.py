"""Sensor set-ups other than registered RGB-D, published live into the node over DDS.

* depth from a second camera (not registered): reprojected into the colour camera through TF;
* no depth at all, a point cloud from another sensor frame (the LiDAR + camera case);
* views whose TF never arrives: skipped with one log line per period, never guessed.
"""

import time

import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip('rclpy', reason='needs rclpy (make test installs it)')

from live_sensors import sensor_publishers, stamped, tf_link, throttled_lines  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

from adatoken3d_node import parameters  # noqa: E402
from adatoken3d_node.client import NodeProcess, QueryClient  # noqa: E402
from adatoken3d_node.qos import TF_STATIC_QOS  # noqa: E402
from adatoken3d_node.stats import PROBLEM_LOG_PERIOD_S  # noqa: E402

W, H, F = 160, 120, 100.0
K = [F, 0.0, (W - 1) / 2, 0.0, F, (H - 1) / 2, 0.0, 0.0, 1.0]
PLANE_Z = 2.0
TIMEOUT = 120.0


def camera_info(stamp_ns, frame):
    return stamped(CameraInfo(width=W, height=H, k=K, distortion_model='plumb_bob', d=[0.0] * 5), stamp_ns, frame)


def colour(stamp_ns, frame='cam_color'):
    data = np.random.default_rng(stamp_ns % 1000).integers(0, 255, (H, W, 3), dtype=np.uint8)
    return stamped(Image(width=W, height=H, encoding='rgb8', step=3 * W, data=data.tobytes()), stamp_ns, frame)


def plane_depth_mm(stamp_ns, frame):
    depth = np.full((H, W), int(PLANE_Z * 1000), np.uint16)
    return stamped(Image(width=W, height=H, encoding='16UC1', step=2 * W, data=depth.tobytes()), stamp_ns, frame)


def plane_cloud(stamp_ns, frame, offset_x):
    """A dense grid of points on the plane z = PLANE_Z of the colour camera, seen from `frame`."""
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    x = (u - K[2]) * PLANE_Z / F - offset_x  # colour camera -> sensor frame: shift by -offset
    y = (v - K[5]) * PLANE_Z / F
    points = np.stack([x, y, np.full_like(x, PLANE_Z)], axis=-1).reshape(-1, 3).astype(np.float32)
    fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, n in enumerate('xyz')]
    return stamped(
        PointCloud2(
            height=1,
            width=len(points),
            fields=fields,
            is_bigendian=False,
            point_step=12,
            row_step=12 * len(points),
            data=points.tobytes(),
            is_dense=True,
        ),
        stamp_ns,
        frame,
    )


def start(tmp_path, name, random_model, **overrides):
    values = parameters.defaults()
    values.update(keyframe_min_translation_m=0.0, keyframe_min_rotation_deg=0.0, fixed_frame='map', **overrides)
    params = tmp_path / f'{name}.yaml'
    params.write_text(yaml.safe_dump({'/**': {'ros__parameters': values}}))
    node = NodeProcess(
        [f'namespace:={name}', f'model_path:={random_model}', f'params_file:={params}'],
        log_path=str(tmp_path / f'{name}.log'),
    ).start()
    client = QueryClient(namespace=name, name=f'{name}_client')
    client.wait_for_node(timeout=TIMEOUT)
    return node, client


def test_unregistered_depth_is_reprojected_and_missing_tf_skips_views_with_one_log_line(random_model, tmp_path):
    node, client = start(tmp_path, 'rig', random_model, tf_timeout_s=0.1)
    try:
        pubs = sensor_publishers(client, 'rig', ('color_image', 'color_info', 'depth_image', 'depth_info'), TIMEOUT)

        def send(stamp_ns):
            pubs['color_info'].publish(camera_info(stamp_ns, 'cam_color'))
            pubs['depth_info'].publish(camera_info(stamp_ns, 'cam_depth'))
            pubs['depth_image'].publish(plane_depth_mm(stamp_ns, 'cam_depth'))
            pubs['color_image'].publish(colour(stamp_ns))

        # 1. no TF at all: every view is skipped, the reason is logged once (not five times).
        # One frame at a time: a burst could overflow the short pending queue (dropped as stale).
        started = time.monotonic()
        for i in range(5):
            send(10**9 * (i + 1))
            client.wait_until(
                lambda: int(client.latest_diagnostics().get('problems.tf', 0)) == i + 1,
                TIMEOUT,
                f'view {i + 1} skipped for missing TF',
            )
        lines = min(throttled_lines(started, PROBLEM_LOG_PERIOD_S), 4)  # fewer than the 5 skips
        assert 1 <= node.log().count('view skipped') <= lines and 'cam_depth' in node.log()
        assert client.latest_diagnostics()['views_in_memory'] == '0'

        # 2. static TF: map -> colour camera, colour -> depth camera 5 cm to the right
        tf_static = client.node.create_publisher(TFMessage, '/tf_static', TF_STATIC_QOS)
        tf_static.publish(
            TFMessage(transforms=[tf_link('map', 'cam_color'), tf_link('cam_color', 'cam_depth', xyz=(0.05, 0.0, 0.0))])
        )
        client.wait_until(lambda: 'cam_depth' in client.latest_diagnostics().get('tf_frames', ''), TIMEOUT, 'static TF')
        points = client.collect(PointCloud2, '/rig/adatoken3d/scene_points')
        send(10 * 10**9)
        client.wait_until(lambda: len(points) > 0, TIMEOUT, 'a scene with the reprojected view')
        client.wait_until(lambda: client.latest_diagnostics().get('views.depth_reprojected') == '1', TIMEOUT, 'counter')
        values = client.latest_diagnostics()
        cloud = np.frombuffer(bytes(points[-1].data), dtype=[('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('view', '<u2')])
        assert len(cloud) > 400  # the 5 cm shift leaves a few columns without depth
        np.testing.assert_allclose(cloud['z'], PLANE_Z, atol=1e-4)
        assert values['views_in_memory'] == '1' and values['scene.views'] == '1'
        assert int(values['scene.dropped_patches']) == 576 - len(cloud)  # reported, not placed anywhere
    finally:
        client.close()
        node.stop()


def test_point_cloud_stands_in_for_depth(random_model, tmp_path):
    node, client = start(tmp_path, 'lidar', random_model, depth_source='points')
    try:
        pubs = sensor_publishers(client, 'lidar', ('color_image', 'color_info', 'points'), TIMEOUT)
        tf_static = client.node.create_publisher(TFMessage, '/tf_static', TF_STATIC_QOS)
        tf_static.publish(
            TFMessage(
                transforms=[
                    tf_link('map', 'cam_color', xyz=(1.0, 0.0, 0.0)),
                    tf_link('cam_color', 'lidar', xyz=(0.1, 0.0, 0.0)),
                ]
            )
        )
        points = client.collect(PointCloud2, '/lidar/adatoken3d/scene_points')
        client.wait_until(lambda: 'lidar' in client.latest_diagnostics().get('tf_frames', ''), TIMEOUT, 'static TF')
        stamp = 5 * 10**9
        pubs['points'].publish(plane_cloud(stamp, 'lidar', 0.1))
        pubs['color_info'].publish(camera_info(stamp, 'cam_color'))
        pubs['color_image'].publish(colour(stamp))
        client.wait_until(lambda: len(points) > 0, TIMEOUT, 'a scene from the point cloud')
        cloud = np.frombuffer(bytes(points[-1].data), dtype=[('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('view', '<u2')])
        assert len(cloud) == 576  # the dense cloud covers every patch
        np.testing.assert_allclose(cloud['z'], PLANE_Z, atol=1e-4)
        assert abs(float(np.median(cloud['x'])) - 1.0) < 0.05  # the camera sits at x = 1 m in map
    finally:
        client.close()
        node.stop()
