"""rosbag2 recordings without rosbag2: write them with rosbags, replay them over DDS with rclpy.

`ros2 bag record/play` (rosbag2_py) cannot be installed from PyPI, so the
tests, the demo and the benchmarks write real rosbag2 files (sqlite3 or mcap,
CDR, the Kilted type store) with the pure-Python `rosbags` library and play
them back with this player: the recorded CDR bytes are published as they are
(rclpy raw publishing), at the recorded rate times `rate`, optionally with a
/clock. On a robot, `ros2 bag play --clock` does the same.

    adatoken3d-bag write redwood ../shared/data/redwood_livingroom_5 /tmp/redwood --storage mcap
    adatoken3d-bag play /tmp/redwood --rate 2 --clock
"""

import argparse
import importlib
import pathlib
import sys
import time
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional

import numpy as np

from adatoken3d_node import names
from .datasets import RGBDFrame, load_redwood, load_tum_single
from adatoken3d_node.perception.tf_buffer import matrix_to_transform


@dataclass(frozen=True)
class CameraTopics:
    """Where a recording puts its camera: RealSense-driver-style names and frames."""

    color_image: str = '/camera/color/image_raw'
    color_info: str = '/camera/color/camera_info'
    depth_image: str = '/camera/aligned_depth_to_color/image_raw'
    depth_info: str = '/camera/aligned_depth_to_color/camera_info'
    optical_frame: str = 'camera_color_optical_frame'
    fixed_frame: str = 'map'

    def inputs(self) -> Dict[str, str]:
        """Recorded topic -> the node input it feeds (a names.SENSOR_TOPICS key, 'tf' or 'tf_static')."""
        return {
            self.color_image: 'color_image',
            self.color_info: 'color_info',
            self.depth_image: 'depth_image',
            self.depth_info: 'depth_info',
            names.TF_TOPIC: 'tf',
            names.TF_STATIC_TOPIC: 'tf_static',
        }

    def remap_arguments(self) -> List[str]:
        """Launch arguments that connect the node to these topics."""
        return [f'{key}_topic:={topic}' for topic, key in self.inputs().items() if key in names.SENSOR_TOPICS]


STORAGE = {'sqlite3': 1, 'mcap': 2}

# Node parameters for a replay that must deliver every recorded frame: reliable sensor subscriptions with a
# history deeper than a short recording's frames per topic. With the default best-effort sensor QoS (keep
# last 5) a loaded machine drops frames, as a robot's network would, and the scene misses views.
LOSSLESS_REPLAY_PARAMETERS = {'sensor_qos_reliability': 'reliable', 'sensor_qos_depth': 20}


def _orthonormalise(R: np.ndarray) -> np.ndarray:
    """Nearest rotation (trajectory files carry ~1e-9 non-orthogonality)."""
    u, _, vt = np.linalg.svd(R)
    return u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt


class _Messages:
    """Builds rosbags (Kilted) message objects."""

    def __init__(self):
        from rosbags.typesys import Stores, get_typestore

        self.store = get_typestore(Stores.ROS2_KILTED)
        self.t = self.store.types

    def header(self, stamp_ns: int, frame_id: str):
        sec, nanosec = divmod(stamp_ns, 10**9)
        time_msg = self.t['builtin_interfaces/msg/Time'](sec=sec, nanosec=nanosec)
        return self.t['std_msgs/msg/Header'](stamp=time_msg, frame_id=frame_id)

    def image(self, array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str):
        array = np.ascontiguousarray(array)
        height, width = array.shape[:2]
        return self.t['sensor_msgs/msg/Image'](
            header=self.header(stamp_ns, frame_id),
            height=height,
            width=width,
            encoding=encoding,
            is_bigendian=0,
            step=array.strides[0],
            data=array.view(np.uint8).reshape(-1),
        )

    def camera_info(self, K: np.ndarray, width: int, height: int, stamp_ns: int, frame_id: str):
        P = np.zeros((3, 4))
        P[:, :3] = K
        roi = self.t['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        return self.t['sensor_msgs/msg/CameraInfo'](
            header=self.header(stamp_ns, frame_id),
            height=height,
            width=width,
            distortion_model='plumb_bob',
            d=np.zeros(5),
            k=K.reshape(-1).astype(np.float64),
            r=np.eye(3).reshape(-1),
            p=P.reshape(-1),
            binning_x=0,
            binning_y=0,
            roi=roi,
        )

    def tf(self, pose: np.ndarray, stamp_ns: int, parent: str, child: str):
        rigid = np.array(pose, dtype=np.float64)
        rigid[:3, :3] = _orthonormalise(rigid[:3, :3])
        t, q = matrix_to_transform(rigid)
        transform = self.t['geometry_msgs/msg/Transform'](
            translation=self.t['geometry_msgs/msg/Vector3'](x=float(t[0]), y=float(t[1]), z=float(t[2])),
            rotation=self.t['geometry_msgs/msg/Quaternion'](x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])),
        )
        stamped = self.t['geometry_msgs/msg/TransformStamped'](
            header=self.header(stamp_ns, parent), child_frame_id=child, transform=transform
        )
        return self.t['tf2_msgs/msg/TFMessage'](transforms=[stamped])


def write_rgbd_bag(
    path, frames: Iterable[RGBDFrame], topics: CameraTopics = CameraTopics(), storage: str = 'sqlite3'
) -> pathlib.Path:
    """A rosbag2 directory with colour, registered depth, both camera_infos and the camera pose as TF.

    Each frame's pose goes on /tf (fixed frame -> camera optical frame) at the frame's stamp, a
    little before the images, as a localisation system would publish it. A frame without a pose
    is placed at the origin by one identity transform on /tf_static.
    """
    from rosbags.rosbag2 import Writer, StoragePlugin

    path = pathlib.Path(path)
    build = _Messages()
    serialize = build.store.serialize_cdr
    with Writer(path, version=9, storage_plugin=StoragePlugin(STORAGE[storage])) as writer:

        def connection(topic, msgtype):
            return writer.add_connection(topic, msgtype, typestore=build.store)

        color = connection(topics.color_image, 'sensor_msgs/msg/Image')
        color_info = connection(topics.color_info, 'sensor_msgs/msg/CameraInfo')
        depth = connection(topics.depth_image, 'sensor_msgs/msg/Image')
        depth_info = connection(topics.depth_info, 'sensor_msgs/msg/CameraInfo')
        tf = connection(names.TF_TOPIC, 'tf2_msgs/msg/TFMessage')
        tf_static = None
        for frame in frames:
            stamp = frame.stamp_ns
            height, width = frame.depth.shape
            if frame.pose is None:
                if tf_static is None:
                    tf_static = connection(names.TF_STATIC_TOPIC, 'tf2_msgs/msg/TFMessage')
                    writer.write(
                        tf_static,
                        stamp - 2_000_000,
                        serialize(
                            build.tf(np.eye(4), stamp, topics.fixed_frame, topics.optical_frame),
                            'tf2_msgs/msg/TFMessage',
                        ),
                    )
            else:  # stamped exactly at the frame (an exact TF sample), sent just before it
                writer.write(
                    tf,
                    stamp - 1_000_000,
                    serialize(
                        build.tf(frame.pose, stamp, topics.fixed_frame, topics.optical_frame), 'tf2_msgs/msg/TFMessage'
                    ),
                )
            info = build.camera_info(frame.K, width, height, stamp, topics.optical_frame)
            writer.write(color_info, stamp, serialize(info, 'sensor_msgs/msg/CameraInfo'))
            writer.write(depth_info, stamp, serialize(info, 'sensor_msgs/msg/CameraInfo'))
            writer.write(
                color,
                stamp,
                serialize(build.image(frame.rgb, 'rgb8', stamp, topics.optical_frame), 'sensor_msgs/msg/Image'),
            )
            writer.write(
                depth,
                stamp,
                serialize(
                    build.image(frame.depth, frame.depth_encoding, stamp, topics.optical_frame), 'sensor_msgs/msg/Image'
                ),
            )
    return path


def message_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> sensor_msgs.msg.Image (the installed ROS type)."""
    package, kind, name = msgtype.split('/')
    return getattr(importlib.import_module(f'{package}.{kind}'), name)


class BagPlayer:
    """Publishes a rosbag2 recording's CDR bytes over DDS at its recorded rate (times `rate`)."""

    def __init__(
        self,
        path,
        rate: float = 1.0,
        clock: bool = False,
        topics: Optional[Iterable[str]] = None,
        node_name: str = 'adatoken3d_bag_player',
        context=None,
    ):
        import rclpy
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from rosbags.rosbag2 import Reader

        self.path = pathlib.Path(path)
        self.rate = rate
        self._reader = Reader(self.path)
        self._reader.open()
        wanted = set(topics) if topics else None
        self.connections = [c for c in self._reader.connections if wanted is None or c.topic in wanted]
        self.node = rclpy.create_node(node_name, context=context)
        self.publishers: Dict[str, object] = {}
        for c in self.connections:
            durability = (
                DurabilityPolicy.TRANSIENT_LOCAL if c.topic == names.TF_STATIC_TOPIC else DurabilityPolicy.VOLATILE
            )
            qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=durability)
            self.publishers[c.topic] = self.node.create_publisher(message_class(c.msgtype), c.topic, qos)
        self._clock = None
        if clock:
            from rosgraph_msgs.msg import Clock

            self._clock = self.node.create_publisher(Clock, '/clock', 10)
        self.published = 0

    def wait_for_subscribers(self, topics: Iterable[str], timeout_s: float) -> None:
        """Until every named topic has a matched subscriber (messages sent before would be lost)."""
        deadline = time.monotonic() + timeout_s
        missing = list(topics)
        while missing:
            missing = [t for t in missing if self.publishers[t].get_subscription_count() == 0]
            if missing and time.monotonic() > deadline:
                raise TimeoutError(f'no subscriber on {missing} after {timeout_s:.0f} s')
            time.sleep(0.01)

    def wait_until_heard(self, client, topics: CameraTopics, timeout_s: float) -> None:
        """Until every recorded topic is matched both ways with the node `client` (a QueryClient) talks to:
        this player sees its subscription, and the node's /diagnostics count this player's publisher
        (what arrives before the node's side has matched is dropped)."""
        self.wait_for_subscribers(list(self.publishers), timeout_s)
        client.wait_for_inputs([topics.inputs()[topic] for topic in self.publishers], timeout_s)

    def play(self, should_stop=lambda: False) -> int:
        """Publish every message once (until should_stop() is true), paced by its recorded timestamp;
        returns the count."""
        from adatoken3d_node.outgoing import to_stamp

        start_wall = time.monotonic()
        start_bag: Optional[int] = None
        count = 0
        for connection, stamp, data in self._reader.messages(connections=self.connections):
            if should_stop():
                break
            start_bag = stamp if start_bag is None else start_bag
            due = start_wall + (stamp - start_bag) / 1e9 / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing to the recording's own timeline, not a wait for a condition
            if self._clock is not None:
                from rosgraph_msgs.msg import Clock

                self._clock.publish(Clock(clock=to_stamp(stamp)))
            self.publishers[connection.topic].publish(bytes(data))
            count += 1
        for publisher in self.publishers.values():  # reliable: do not exit before delivery
            publisher.wait_for_all_acked()
        self.published += count
        return count

    def close(self) -> None:
        self._reader.close()
        self.node.destroy_node()


DATASETS = {'redwood': load_redwood, 'tum': load_tum_single}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='adatoken3d-bag', description=__doc__.split('\n\n')[0])
    commands = parser.add_subparsers(dest='command', required=True)
    write = commands.add_parser('write', help='write a dataset of posed RGB-D frames as a rosbag2')
    write.add_argument('dataset', choices=sorted(DATASETS))
    write.add_argument('source', help='dataset directory (e.g. ../shared/data/redwood_livingroom_5)')
    write.add_argument('output', help='bag directory to create')
    write.add_argument('--storage', choices=sorted(STORAGE), default='sqlite3')
    play = commands.add_parser('play', help='replay a rosbag2 over DDS')
    play.add_argument('bag')
    play.add_argument('--rate', type=float, default=1.0)
    play.add_argument('--clock', action='store_true', help='also publish /clock (for use_sim_time)')
    play.add_argument('--loop', type=int, default=1, help='play this many times')
    play.add_argument(
        '--wait-for',
        nargs='*',
        default=[],
        metavar='TOPIC',
        help='wait (up to 30 s) for a subscriber on these topics before playing',
    )
    args = parser.parse_args(argv)
    if args.command == 'write':
        path = write_rgbd_bag(args.output, DATASETS[args.dataset](args.source), storage=args.storage)
        print(f'wrote {path}')
        return 0
    import rclpy

    rclpy.init()
    player = BagPlayer(args.bag, rate=args.rate, clock=args.clock)
    try:
        player.wait_for_subscribers(args.wait_for, 30.0)
        for _ in range(args.loop):
            print(f'published {player.play()} messages from {args.bag}')
    finally:
        player.close()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
