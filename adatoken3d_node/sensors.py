"""The ROS edge of the perception front end: subscriptions, time sync, TF, and one perception thread.

Sensor callbacks only record: they hand messages to the time synchroniser and
TF buffer and return. Completed colour/depth sets go into a short FIFO that the
perception thread drains in order; when processing falls behind, the oldest
set is dropped (counted), so views are never more than a few frames stale and
memory stays bounded. With reliable sensor QoS (a replayed bag that must lose
nothing) the FIFO holds as many sets as the QoS depth lets wait. The thread converts messages, waits
for TF at the message stamp (with a timeout, never "latest"), registers depth
to the colour camera when needed and offers the posed view to the scene
memory. Every kind of bad input is logged once per period and counted; the
view is skipped, never guessed.
"""

import collections
import threading
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import numpy as np

from . import names
from .perception.messages import (
    MessageFormatError,
    camera_info_to_model,
    depth_to_metres,
    image_to_rgb,
    pointcloud_to_xyz,
)
from .perception.frontend import SceneFrontEnd
from .perception.reproject import points_to_depth, reproject_depth
from .perception.tf_buffer import TransformError
from .stats import ProblemLog, RateMeter

TIME_JUMP_BACK_S = 1.0  # TF older than the newest by this much: the clock went back (looped bag)
PENDING_SETS = 4  # synchronised sets waiting for the perception thread (~130 ms at 30 Hz)


def sync_keys(depth_source: str):
    """The inputs paired into one view (keys of names.SENSOR_TOPICS)."""
    depth = ('depth_image', 'depth_info') if depth_source == 'depth' else ('points',)
    return ('color_image', 'color_info', *depth)


def stamp_ns(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


@dataclass(frozen=True)
class SensorConfig:
    fixed_frame: str
    depth_source: str  # 'depth' | 'points'
    depth_scale: float  # 0: by encoding
    sync_slop_s: float
    tf_timeout_s: float
    pending_sets: int = PENDING_SETS  # synchronised sets that may wait for the perception thread

    @classmethod
    def from_parameters(cls, config) -> 'SensorConfig':
        """From the node's parameters by name (parameters.PARAMETERS)."""
        return cls(
            config['fixed_frame'],
            config['depth_source'],
            config['depth_scale'],
            config['sync_slop_s'],
            config['tf_timeout_s'],
            # reliable QoS asks for every message: as many sets may wait here as the QoS depth lets wait there
            max(PENDING_SETS, config['sensor_qos_depth'])
            if config['sensor_qos_reliability'] == 'reliable'
            else PENDING_SETS,
        )


class SensorPipeline:
    """Feeds a SceneFrontEnd from ROS messages; thread-safe, ROS-typed at its edges only."""

    def __init__(
        self,
        frontend: SceneFrontEnd,
        config: SensorConfig,
        logger,
        tf,
        sync,
        on_view_kept: Optional[Callable[[], None]] = None,
    ):
        """tf: a TransformBuffer (or ros_backends.Tf2RosBuffer); sync: an ApproximateTimeSync (or
        ros_backends.MessageFiltersSync) over sync_keys(config.depth_source)."""
        self.frontend = frontend
        self.config = config
        self.logger = logger
        self.on_view_kept = on_view_kept
        self.sync = sync
        self.tf = tf
        self._newest_tf_ns: Optional[int] = None
        self.problems = ProblemLog()
        self.rates: Dict[str, RateMeter] = {key: RateMeter() for key in (*names.SENSOR_TOPICS, 'tf', 'tf_static')}
        self.counters = collections.Counter()
        self._pending: 'collections.deque' = collections.deque(maxlen=config.pending_sets)
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name='adatoken3d-perception', daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- callbacks (executor threads)
    def on_sensor(self, key: str, msg) -> None:
        self.rates[key].tick(stamp_ns(msg.header))
        if key not in self.sync.keys:
            return
        for matched in self.sync.add(key, stamp_ns(msg.header), msg):
            with self._wake:
                if len(self._pending) == self._pending.maxlen:
                    self.counters['stale_sets_dropped'] += 1
                self._pending.append(matched)
                self._wake.notify()

    def on_tf(self, msg, static: bool) -> None:
        self.rates['tf_static' if static else 'tf'].tick()
        for transform in msg.transforms:
            stamp = stamp_ns(transform.header)
            newest = self._newest_tf_ns
            if not static and newest is not None and stamp < newest - TIME_JUMP_BACK_S * 1e9:
                self._report(
                    'time_jump',
                    f'/tf stamp {stamp / 1e9:.3f} s is {(newest - stamp) / 1e9:.1f} s '
                    'older than the newest: time went backwards (looped bag or restarted clock); '
                    'clearing the TF buffer, the time sync and the scene memory',
                )
                self.tf.clear()
                self.sync.clear()  # it would drop the new timeline's messages as late
                self.frontend.memory.clear()
                self._newest_tf_ns = None
            if not static:
                self._newest_tf_ns = max(stamp, self._newest_tf_ns or stamp)
            t, q = transform.transform.translation, transform.transform.rotation
            try:
                self.tf.set_transform(
                    transform.header.frame_id,
                    transform.child_frame_id,
                    stamp,
                    (t.x, t.y, t.z),
                    (q.x, q.y, q.z, q.w),
                    static=static,
                )
            except ValueError as error:
                self._report('bad_tf', f'/tf{"_static" if static else ""}: {error}')

    # ---------------------------------------------------------------- perception thread
    def _run(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._pending or self._stopping)
                if self._stopping:
                    return
                matched = self._pending.popleft()
            try:
                self._process(matched)
            except MessageFormatError as error:
                self._report(f'bad_message:{error.topic}', str(error))
            except TransformError as error:
                self._report('tf', f'view skipped: {error}')
            except Exception as error:  # the thread must survive any input
                self._report(f'error:{type(error).__name__}', f'view skipped: {type(error).__name__}: {error}')

    def _process(self, matched: dict) -> None:
        color, info = matched['color_image'], matched['color_info']
        stamp = stamp_ns(color.header)
        rgb = image_to_rgb(color, names.SENSOR_TOPICS['color_image'])
        camera = camera_info_to_model(info, names.SENSOR_TOPICS['color_info'])
        if camera.has_distortion:
            self._report(
                'distortion',
                f'{names.SENSOR_TOPICS["color_info"]}: {camera.distortion_model} distortion '
                f'{np.round(camera.D, 4).tolist()} is ignored (views are treated as pinhole); '
                'publish rectified images for exact geometry',
            )
        if (camera.height, camera.width) != rgb.shape[:2]:
            raise MessageFormatError(
                f'camera_info is {camera.width}x{camera.height} but the image is {rgb.shape[1]}x{rgb.shape[0]}',
                names.SENSOR_TOPICS['color_info'],
            )
        color_frame = color.header.frame_id
        timeout = self.config.tf_timeout_s
        if self.config.depth_source == 'depth':
            depth_msg = matched['depth_image']
            depth = depth_to_metres(depth_msg, names.SENSOR_TOPICS['depth_image'], self.config.depth_scale or None)
            if depth_msg.header.frame_id != color_frame or depth.shape != rgb.shape[:2]:
                # not registered to the colour camera: move every depth pixel into it
                depth_camera = camera_info_to_model(matched['depth_info'], names.SENSOR_TOPICS['depth_info'])
                T_color_depth = self.tf.lookup(color_frame, depth_msg.header.frame_id, stamp, timeout)
                depth = reproject_depth(depth, depth_camera.K, camera.K, T_color_depth, rgb.shape[:2])
                self.counters['depth_reprojected'] += 1
        else:
            cloud = matched['points']
            xyz, _ = pointcloud_to_xyz(cloud, names.SENSOR_TOPICS['points'])
            T_color_cloud = self.tf.lookup(color_frame, cloud.header.frame_id, stamp, timeout).astype(np.float32)
            depth = points_to_depth(xyz @ T_color_cloud[:3, :3].T + T_color_cloud[:3, 3], camera.K, rgb.shape[:2])
        pose = self.tf.lookup(self.config.fixed_frame, color_frame, stamp, timeout)
        decision = self.frontend.add_view(rgb, depth, camera.K, pose, stamp, color_frame)
        self.logger.debug(f'view at {stamp / 1e9:.3f} s: {decision} ({len(self.frontend.memory)} in memory)')
        self.counters['views_offered'] += 1
        if decision.startswith('kept'):
            self.counters['views_kept'] += 1
            with self._wake:
                backlog = len(self._pending)
            # Publishing the scene rebuilds its tokens: during a burst, only after the last view of it,
            # so that the burst is not slowed into dropping views.
            if self.on_view_kept is not None and backlog == 0:
                self.on_view_kept()

    def _report(self, kind: str, text: str) -> None:
        suffix = self.problems.report(kind)
        if suffix is not None:
            self.logger.warning(text + suffix)

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(10)
