"""Publishing sensor data into a node under test: stamped headers, TF links, publishers that wait for the node."""

import contextlib
import time

from geometry_msgs.msg import TransformStamped
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from tf2_msgs.msg import TFMessage

from adatoken3d_node import names
from adatoken3d_node.client import NodeProcess, QueryClient
from conftest import write_params

CAMERA = ('color_image', 'color_info', 'depth_image', 'depth_info')

SENSOR_TYPES = {
    'color_image': Image,
    'color_info': CameraInfo,
    'depth_image': Image,
    'depth_info': CameraInfo,
    'points': PointCloud2,
}
RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)


def throttled_lines(started: float, period_s: float) -> int:
    """The most lines a message logged once per period_s can have written since time.monotonic() was started."""
    return 1 + int((time.monotonic() - started) / period_s)


def stamped(msg, stamp_ns: int, frame: str):
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp_ns // 10**9, stamp_ns % 10**9
    msg.header.frame_id = frame
    return msg


def tf_link(parent: str, child: str, stamp_ns: int = 0, xyz=(0.0, 0.0, 0.0)) -> TransformStamped:
    """parent -> child translated by xyz, no rotation."""
    link = stamped(TransformStamped(child_frame_id=child), stamp_ns, parent)
    link.transform.translation.x, link.transform.translation.y, link.transform.translation.z = xyz
    link.transform.rotation.w = 1.0
    return link


def sensor_publishers(client, namespace: str, keys, timeout: float, tf: bool = False) -> dict:
    """Reliable publishers on the node's sensor topics (and /tf as 'tf'), once matched both ways with the node."""
    made = {
        key: client.node.create_publisher(SENSOR_TYPES[key], f'/{namespace}/{names.SENSOR_TOPICS[key]}', RELIABLE)
        for key in keys
    }
    if tf:
        made['tf'] = client.node.create_publisher(TFMessage, '/tf', RELIABLE)
    client.wait_until(
        lambda: all(p.get_subscription_count() > 0 for p in made.values()), timeout, 'the node to subscribe'
    )
    client.wait_for_inputs(made, timeout)  # and the node's side to match them: data sent before is dropped
    return made


@contextlib.contextmanager
def live_node(root, model, namespace: str, timeout: float, **overrides):
    """A node on `model` (parameters: the defaults with these overrides) in its own process, and reliable
    publishers into its RGB-D topics and /tf, matched both ways -> (client, node, publishers)."""
    params = write_params(root / f'{namespace}.yaml', **overrides)
    node = NodeProcess(
        [f'namespace:={namespace}', f'model_path:={model}', f'params_file:={params}'],
        log_path=str(root / f'{namespace}.log'),
    ).start()
    client = QueryClient(namespace=namespace, name=f'{namespace}_client')
    try:
        client.wait_for_node(timeout=timeout)
        yield client, node, sensor_publishers(client, namespace, CAMERA, timeout, tf=True)
    finally:
        client.close()
        node.stop()
