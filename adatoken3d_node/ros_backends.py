"""tf2_ros and message_filters behind the interfaces of our own TransformBuffer and ApproximateTimeSync.

A ROS 2 install ships tf2_ros and message_filters; PyPI does not. With
`tf_sync_backend: auto` the node uses them when importable and falls back to
perception/tf_buffer.py and perception/sync.py (which follow their semantics
and are what the tests here exercise) otherwise; `builtin` forces the fallback.
Only the few calls SensorPipeline makes are adapted.
"""

import threading
from typing import Any, Dict, List, Sequence, Set

from .perception.sync import ApproximateTimeSync
from .perception.tf_buffer import TransformBuffer, TransformError, transform_to_matrix


def ros_modules_available() -> bool:
    try:
        import message_filters  # noqa: F401
        import tf2_ros  # noqa: F401
    except ImportError:
        return False
    return True


class Tf2RosBuffer:
    """tf2_ros.Buffer filled by its own TransformListener on `node` (its /tf and /tf_static subscriptions)."""

    def __init__(self, node, cache_time_s: float = 10.0):
        import tf2_ros
        from rclpy.duration import Duration

        self._tf2_ros = tf2_ros
        self._buffer = tf2_ros.Buffer(cache_time=Duration(seconds=cache_time_s))
        self._listener = tf2_ros.TransformListener(self._buffer, node, spin_thread=False)

    def set_transform(self, parent, child, stamp_ns, translation, rotation_xyzw, static=False) -> bool:
        return True  # the listener already stored it from the same /tf message

    def lookup(self, target_frame: str, source_frame: str, stamp_ns: int, timeout_s: float = 0.0):
        from rclpy.duration import Duration
        from rclpy.time import Time

        errors = (
            self._tf2_ros.LookupException,
            self._tf2_ros.ConnectivityException,
            self._tf2_ros.ExtrapolationException,
            self._tf2_ros.InvalidArgumentException,
        )
        try:
            stamped = self._buffer.lookup_transform(
                target_frame,
                source_frame,
                Time(nanoseconds=stamp_ns),
                timeout=Duration(nanoseconds=int(timeout_s * 1e9)),
            )
        except errors as error:
            raise TransformError(
                f'cannot transform {source_frame} -> {target_frame} at t={stamp_ns / 1e9:.3f} s: {error}'
            ) from error
        t, q = stamped.transform.translation, stamped.transform.rotation
        return transform_to_matrix((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))

    def frames(self) -> Set[str]:
        import yaml

        tree = yaml.safe_load(self._buffer.all_frames_as_yaml()) or {}
        return set(tree) | {link['parent'] for link in tree.values()}

    def clear(self) -> None:
        self._buffer.clear()


class MessageFiltersSync:
    """message_filters.ApproximateTimeSynchronizer fed by hand through one SimpleFilter per key."""

    def __init__(self, keys: Sequence[str], slop_s: float, queue_size: int = 10):
        self.keys = list(keys)
        self._slop_s, self._queue_size = slop_s, queue_size
        self._lock = threading.Lock()
        self._completed: List[Dict[str, Any]] = []
        self.dropped: Dict[str, int] = {}  # message_filters does not report what it discards
        self.clear()

    def clear(self) -> None:
        """Forget queued messages (time went backwards): a new synchroniser."""
        import message_filters

        with self._lock:
            self._inputs = {key: message_filters.SimpleFilter() for key in self.keys}
            self._sync = message_filters.ApproximateTimeSynchronizer(
                [self._inputs[key] for key in self.keys], self._queue_size, self._slop_s
            )
            self._sync.registerCallback(self._on_set)

    def _on_set(self, *msgs) -> None:
        self._completed.append(dict(zip(self.keys, msgs)))

    def add(self, key: str, stamp_ns: int, msg: Any) -> List[Dict[str, Any]]:
        with self._lock:  # one message through the filter at a time, and its sets collected
            self._inputs[key].signalMessage(msg)
            completed, self._completed = self._completed, []
        return completed


def make_tf_and_sync(backend: str, node, keys: Sequence[str], slop_s: float):
    """(tf buffer, synchroniser, backend name) for `auto` or `builtin`."""
    if backend == 'auto' and ros_modules_available():
        return Tf2RosBuffer(node), MessageFiltersSync(keys, slop_s), 'tf2_ros+message_filters'
    return TransformBuffer(), ApproximateTimeSync(keys, slop_s), 'builtin'
