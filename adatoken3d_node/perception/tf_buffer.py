"""A small TF buffer with tf2 semantics, used when `tf2_ros` is not importable. No ROS import here.

Semantics mirrored from tf2 (BufferCore):
- The frames form a forest: every child frame has exactly one parent. Setting a link with a
  different parent (or switching it between static and dynamic) replaces the child's link and
  drops its history; the latest set parent wins.
- A dynamic link keeps a time-sorted history, trimmed to `cache_time_s` behind that link's newest
  sample; a sample older than that is ignored (tf2: TF_OLD_DATA). A sample at an existing stamp
  replaces it. A static link (/tf_static) is valid at every time.
- lookup(target, source, t) returns T_target_source (maps points in `source` into `target`), each
  dynamic link evaluated at t: linear interpolation of translation, slerp of rotation between the
  two samples bracketing t. Outside a link's [oldest, newest] interval it raises
  ExtrapolationError: no clamping and no "latest" (a stamp of 0 is not special).
- clear() forgets dynamic links and keeps static ones (tf2's static cache ignores clear, and
  /tf_static is latched, i.e. published once, so it would not come back after a bag loops).

Stamps are int nanoseconds; translations in metres; quaternions (x, y, z, w).
"""

import bisect
import math
import threading
import time
from dataclasses import dataclass, field
from typing import List, Optional, Set, Tuple

import numpy as np


class TransformError(LookupError):
    """A transform cannot be computed; the message names frames, time and what is missing."""


class FrameNotFoundError(TransformError):
    """A frame is unknown, or the two frames are in trees that are not connected."""


class ExtrapolationError(TransformError):
    """The requested time is outside the buffered interval of some link on the path."""


# ----------------------------------------------------------------------------------- conversions


def _unit_quaternion(q) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    if q.shape != (4,) or not np.all(np.isfinite(q)):
        raise ValueError(f'rotation must be 4 finite numbers (x, y, z, w), got {q!r}')
    n = np.linalg.norm(q)
    if n < 1e-12:
        raise ValueError(f'rotation quaternion has zero norm: {q!r}')
    return q / n


def _translation(t) -> np.ndarray:
    t = np.asarray(t, dtype=np.float64)
    if t.shape != (3,) or not np.all(np.isfinite(t)):
        raise ValueError(f'translation must be 3 finite numbers (metres), got {t!r}')
    return t


def transform_to_matrix(translation, rotation_xyzw) -> np.ndarray:
    """(3,) metres + (4,) quaternion x, y, z, w -> (4, 4) float64 homogeneous transform."""
    x, y, z, w = _unit_quaternion(rotation_xyzw)
    T = np.eye(4)
    T[:3, :3] = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    T[:3, 3] = _translation(translation)
    return T


def matrix_to_transform(T) -> Tuple[np.ndarray, np.ndarray]:
    """(4, 4) rigid transform -> translation (3,), unit quaternion (4,) x, y, z, w with w >= 0."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise ValueError(f'need a finite (4, 4) matrix, got shape {T.shape}')
    R = T[:3, :3]
    # Shepperd: divide by the largest of 4w^2, 4x^2, 4y^2, 4z^2 so the result stays accurate.
    tr = np.trace(R)
    i = int(np.argmax([tr, R[0, 0], R[1, 1], R[2, 2]]))
    if i == 0:
        s = 2.0 * math.sqrt(max(1.0 + tr, 0.0))
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, s / 4]
    elif i == 1:
        s = 2.0 * math.sqrt(max(1.0 + R[0, 0] - R[1, 1] - R[2, 2], 0.0))
        q = [s / 4, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s]
    elif i == 2:
        s = 2.0 * math.sqrt(max(1.0 - R[0, 0] + R[1, 1] - R[2, 2], 0.0))
        q = [(R[0, 1] + R[1, 0]) / s, s / 4, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s]
    else:
        s = 2.0 * math.sqrt(max(1.0 - R[0, 0] - R[1, 1] + R[2, 2], 0.0))
        q = [(R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, s / 4, (R[1, 0] - R[0, 1]) / s]
    q = np.asarray(q) / np.linalg.norm(q)
    return T[:3, 3].copy(), (-q if q[3] < 0 else q)


def _inverse(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid transform: R^T, -R^T t (exact for the identity, unlike a general inverse)."""
    inv = np.eye(4)
    inv[:3, :3] = T[:3, :3].T
    inv[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return inv


def _slerp(q0: np.ndarray, q1: np.ndarray, a: float) -> np.ndarray:
    d = float(q0 @ q1)
    if d < 0.0:  # q and -q are the same rotation: go the short way round
        q1, d = -q1, -d
    if d > 0.9995:  # nearly equal: sin(theta) ~ 0, normalised lerp is accurate here
        q = q0 + a * (q1 - q0)
    else:
        theta = math.acos(d)
        q = (math.sin((1 - a) * theta) * q0 + math.sin(a * theta) * q1) / math.sin(theta)
    return q / np.linalg.norm(q)


def _s(ns: int) -> str:
    return f'{ns * 1e-9:.3f}'


# ------------------------------------------------------------------------------------------ buffer


@dataclass
class _Link:
    """child -> parent. Static links hold exactly one sample and ignore time."""

    parent: str
    static: bool
    stamps: List[int] = field(default_factory=list)  # sorted, ns
    translations: List[np.ndarray] = field(default_factory=list)
    rotations: List[np.ndarray] = field(default_factory=list)

    def at(self, child: str, stamp_ns: int) -> np.ndarray:
        """T_parent_child at stamp_ns, or ExtrapolationError (message completed by the caller)."""
        if self.static:
            return transform_to_matrix(self.translations[0], self.rotations[0])
        first, last = self.stamps[0], self.stamps[-1]
        if not first <= stamp_ns <= last:
            way, by = ('future', stamp_ns - last) if stamp_ns > last else ('past', first - stamp_ns)
            raise ExtrapolationError(
                f'link {self.parent}->{child} has data for [{_s(first)}, {_s(last)}] s '
                f'(extrapolation into the {way} by {_s(by)} s)'
            )
        i = bisect.bisect_left(self.stamps, stamp_ns)
        if self.stamps[i] == stamp_ns:
            return transform_to_matrix(self.translations[i], self.rotations[i])
        t0, t1 = self.stamps[i - 1], self.stamps[i]
        a = (stamp_ns - t0) / (t1 - t0)
        p = (1 - a) * self.translations[i - 1] + a * self.translations[i]
        return transform_to_matrix(p, _slerp(self.rotations[i - 1], self.rotations[i], a))


class TransformBuffer:
    """Thread-safe store of the TF tree; lookups may wait (with a timeout) for data to arrive."""

    def __init__(self, cache_time_s: float = 10.0):
        if not cache_time_s > 0:
            raise ValueError(f'cache_time_s must be > 0, got {cache_time_s}')
        self._cache_ns = int(round(cache_time_s * 1e9))
        self._links = {}  # child frame -> _Link
        self._cond = threading.Condition(threading.Lock())  # guards _links; notified on every set

    def set_transform(
        self, parent: str, child: str, stamp_ns: int, translation, rotation_xyzw, static: bool = False
    ) -> bool:
        """Add T_parent_child at stamp_ns. Returns False if ignored as older than the cache."""
        if not parent or not child or parent == child:
            raise ValueError(f'need two different, non-empty frame ids, got {parent!r} -> {child!r}')
        p, q, stamp_ns = _translation(translation), _unit_quaternion(rotation_xyzw), int(stamp_ns)
        with self._cond:
            link = self._links.get(child)
            if link is None or link.parent != parent or link.static != static:
                link = self._links[child] = _Link(parent, static)
            if static:
                link.stamps, link.translations, link.rotations = [stamp_ns], [p], [q]
            else:
                if link.stamps and stamp_ns < link.stamps[-1] - self._cache_ns:
                    return False
                i = bisect.bisect_left(link.stamps, stamp_ns)
                if i < len(link.stamps) and link.stamps[i] == stamp_ns:
                    link.translations[i], link.rotations[i] = p, q
                else:
                    link.stamps.insert(i, stamp_ns)
                    link.translations.insert(i, p)
                    link.rotations.insert(i, q)
                # Trim to cache_time behind this link's newest sample.
                k = bisect.bisect_left(link.stamps, link.stamps[-1] - self._cache_ns)
                del link.stamps[:k], link.translations[:k], link.rotations[:k]
            self._cond.notify_all()
        return True

    def lookup(self, target_frame: str, source_frame: str, stamp_ns: int, timeout_s: float = 0.0) -> np.ndarray:
        """T_target_source (4, 4) at stamp_ns, like tf2 lookupTransform(target, source, time).

        With timeout_s > 0, waits (monotonic wall-clock seconds) for the data to arrive and raises
        the last error if it has not by then.
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                try:
                    return self._lookup(target_frame, source_frame, int(stamp_ns))
                except TransformError:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise
                self._cond.wait(remaining)

    def can_transform(self, target_frame: str, source_frame: str, stamp_ns: int) -> bool:
        with self._cond:
            try:
                self._lookup(target_frame, source_frame, int(stamp_ns))
                return True
            except TransformError:
                return False

    def frames(self) -> Set[str]:
        with self._cond:
            return set(self._links) | {link.parent for link in self._links.values()}

    def clear(self) -> None:
        """Forget dynamic links (e.g. time jumped back when a bag looped); static links stay."""
        with self._cond:
            self._links = {c: link for c, link in self._links.items() if link.static}

    def newest_stamp_ns(self) -> Optional[int]:
        """Newest stamp over all dynamic links, None if there are none."""
        with self._cond:
            return max((link.stamps[-1] for link in self._links.values() if not link.static), default=None)

    # ----------------------------------------------------------------------------- internals

    def _chain(self, frame: str, what: str) -> List[str]:
        """[frame, parent, grandparent, ..., root]."""
        chain = [frame]
        while chain[-1] in self._links:
            parent = self._links[chain[-1]].parent
            if parent in chain:  # only possible if someone published a loop
                raise FrameNotFoundError(f'{what}: TF loop {" -> ".join(chain + [parent])}')
            chain.append(parent)
        return chain

    def _lookup(self, target: str, source: str, stamp_ns: int) -> np.ndarray:
        what = f'cannot transform {source} -> {target} at t={_s(stamp_ns)} s'
        if target == source:
            return np.eye(4)
        known = set(self._links) | {link.parent for link in self._links.values()}
        for frame in (source, target):
            if frame not in known:
                raise FrameNotFoundError(
                    f'{what}: frame {frame!r} does not exist (known frames: {", ".join(sorted(known)) or "none"})'
                )
        up_source, up_target = self._chain(source, what), self._chain(target, what)
        common = next((f for f in up_source if f in up_target), None)
        if common is None:
            raise FrameNotFoundError(
                f'{what}: frames are not connected ({source} is in the tree rooted '
                f'at {up_source[-1]}, {target} in the tree rooted at {up_target[-1]})'
            )
        try:
            T_common_source = self._compose(up_source[: up_source.index(common)], stamp_ns)
            T_common_target = self._compose(up_target[: up_target.index(common)], stamp_ns)
        except ExtrapolationError as e:
            raise ExtrapolationError(f'{what}: {e}') from None
        return _inverse(T_common_target) @ T_common_source

    def _compose(self, frames: List[str], stamp_ns: int) -> np.ndarray:
        """T_top_bottom for frames = [bottom, ..., child of top]: product of the links going up."""
        T = np.eye(4)
        for child in frames:
            T = self._links[child].at(child, stamp_ns) @ T
        return T
