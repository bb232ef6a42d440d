"""Per-frame cost of the perception front end on this machine.

    make bench        (or: .venv/bin/python -m benchmarks.bench_perception)

Cases, each the median over repeated runs on real message objects:
  * rgbd_640x480: sensor_msgs Image (rgb8) + Image (16UC1) + CameraInfo -> arrays, then resize/crop
    to 336 and per-patch xyz (24x24) in the fixed frame: everything a frame costs the perception
    thread (patch_xyz: nearest); rgbd_640x480_median_patch_xyz: the same with patch_xyz: median;
  * cloud_<N>: sensor_msgs PointCloud2 (xyz float32 + packed rgb, 10% NaN points) -> arrays,
    transform into the camera optical frame and z-buffered projection to a 640x480 sparse depth.
Writes benchmarks/results/perception.json with median ms and point counts, and the growth of the
cloud cost per point.
"""

import statistics
import sys
import time

import numpy as np

from adatoken3d_node.perception.frontend import nearest_patch_xyz
from adatoken3d_node.perception.geometry import backproject, patch_xyz, resize_crop_view
from adatoken3d_node.perception.messages import camera_info_to_model, depth_to_metres, image_to_rgb, pointcloud_to_xyz
from adatoken3d_node.perception.reproject import points_to_depth

from .common import machine, write_results

K = np.array([[525.0, 0.0, 319.5], [0.0, 525.0, 239.5], [0.0, 0.0, 1.0]])
TARGETS_MS = {'rgbd_640x480': 5.0, 'cloud_300000': 20.0}


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, lazy imports)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return round(statistics.median(times), 3)


def rgbd_messages(rng):
    from sensor_msgs.msg import CameraInfo, Image

    rgb = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    depth = rng.integers(500, 4000, (480, 640), dtype=np.uint16)
    depth[rng.random((480, 640)) < 0.13] = 0  # holes, like the real Redwood frame
    color = Image(height=480, width=640, encoding='rgb8', step=640 * 3, data=rgb.tobytes())
    depth_msg = Image(height=480, width=640, encoding='16UC1', step=640 * 2, data=depth.tobytes())
    info = CameraInfo(height=480, width=640, k=K.reshape(-1).tolist(), distortion_model='plumb_bob', d=[0.0] * 5)
    return color, depth_msg, info


def cloud_message(rng, n: int):
    from sensor_msgs.msg import PointCloud2, PointField

    points = np.zeros(n, dtype=[('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('rgb', '<f4')])
    points['x'] = rng.uniform(-3, 3, n)
    points['y'] = rng.uniform(-2, 2, n)
    points['z'] = rng.uniform(0.5, 6, n)
    points['rgb'] = rng.integers(0, 2**24, n).astype(np.uint32).view(np.float32)
    points['x'][rng.random(n) < 0.1] = np.nan
    fields = [
        PointField(name=name, offset=4 * i, datatype=PointField.FLOAT32, count=1)
        for i, name in enumerate(('x', 'y', 'z', 'rgb'))
    ]
    return PointCloud2(
        height=1,
        width=n,
        fields=fields,
        is_bigendian=False,
        point_step=16,
        row_step=16 * n,
        data=points.tobytes(),
        is_dense=False,
    )


def main() -> int:
    rng = np.random.default_rng(0)
    pose = np.eye(4)
    pose[:3, 3] = [1.0, 2.0, 0.5]
    color, depth_msg, info = rgbd_messages(rng)

    def rgbd_frame():
        rgb = image_to_rgb(color, 'color/image_raw')
        depth = depth_to_metres(depth_msg, 'depth/image_raw')
        camera = camera_info_to_model(info, 'color/camera_info')
        rgb_c, depth_c, K_c = resize_crop_view(rgb, depth, camera.K, 336)
        return depth_c, K_c

    def rgbd_frame_nearest():  # what the node does per frame with patch_xyz: nearest (default)
        depth_c, K_c = rgbd_frame()
        nearest_patch_xyz(depth_c, K_c, pose, 24)

    def rgbd_frame_median():  # patch_xyz: median needs every pixel back-projected
        depth_c, K_c = rgbd_frame()
        xyz, valid = backproject(depth_c, K_c, pose)
        patch_xyz(xyz, valid, 24, 'median')

    cases = {
        'rgbd_640x480': {'median_ms': median_ms(rgbd_frame_nearest, 50), 'pixels': 640 * 480},
        'rgbd_640x480_median_patch_xyz': {'median_ms': median_ms(rgbd_frame_median, 30), 'pixels': 640 * 480},
    }
    lidar_to_camera = np.eye(4)
    lidar_to_camera[:3, 3] = [0.05, -0.1, 0.0]
    for n in (30_000, 300_000, 1_000_000):
        cloud = cloud_message(rng, n)

        def cloud_frame():
            xyz, _ = pointcloud_to_xyz(cloud, 'points')
            camera_xyz = xyz @ lidar_to_camera[:3, :3].T.astype(np.float32) + lidar_to_camera[:3, 3].astype(np.float32)
            points_to_depth(camera_xyz, K, (480, 640))

        cases[f'cloud_{n}'] = {'median_ms': median_ms(cloud_frame, 20 if n < 1_000_000 else 8), 'points': n}
    per_point = {
        name: round(case['median_ms'] * 1e3 / case['points'], 4) for name, case in cases.items() if 'points' in case
    }
    results = {
        'benchmark': 'perception front end per frame (conversion + geometry)',
        'command': 'make bench',
        'machine': machine(),
        'cases': cases,
        'cloud_us_per_point': per_point,
        'targets_ms': TARGETS_MS,
        'targets_met': {name: cases[name]['median_ms'] <= target for name, target in TARGETS_MS.items()},
    }
    write_results('perception', results)
    for name, case in cases.items():
        print(f'{name:>16}: {case["median_ms"]:8.2f} ms median')
    return 0


if __name__ == '__main__':
    sys.exit(main())
