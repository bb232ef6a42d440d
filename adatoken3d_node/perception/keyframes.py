"""Bounded, thread-safe memory of posed RGB-D views (LLaVA-3D reads up to 20). Pure numpy, no ROS.

Sensor callbacks `offer` every synchronised view; the memory keeps one when the camera has moved,
turned or waited enough since the last kept view, and when full evicts the most redundant view so
the memory keeps covering the whole scene rather than the last few seconds. The query worker takes
an immutable `snapshot`. Memory is bounded by `max_views` however long the node runs.

Pose distance (eviction): translation in metres + `metres_per_radian` x rotation angle in radians
(default 0.5 m per radian, i.e. turning ~57 deg counts like moving 0.5 m), both between camera
centres/orientations in the fixed frame.
"""

import collections
import dataclasses
import math
import threading
import time
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no truth value; views compare by identity
class View:
    """One posed RGB-D view. Arrays are read-only once stored in a KeyframeMemory."""

    rgb: np.ndarray  # (H, W, 3) uint8 RGB
    depth: np.ndarray  # (H, W) float32 metres along optical z, 0.0 = no reading, registered to rgb
    K: np.ndarray  # (3, 3) float64 pinhole intrinsics of rgb/depth
    pose: np.ndarray  # (4, 4) float64 camera(optical)-to-fixed-frame
    stamp_ns: int  # sensor time, nanoseconds
    frame_id: str  # camera optical frame
    # Per-patch geometry the front end derives once per kept view; never read by the memory.
    patch_xyz: Optional[np.ndarray] = None  # (P, 3) float32 patch centres in the fixed frame
    patch_valid: Optional[np.ndarray] = None  # (P,) bool: the patch has a depth reading

    def __post_init__(self):
        object.__setattr__(self, 'K', np.asarray(self.K, dtype=np.float64))
        object.__setattr__(self, 'pose', np.asarray(self.pose, dtype=np.float64))
        if self.depth.ndim != 2 or self.depth.dtype != np.float32:
            raise ValueError(f'depth must be (H, W) float32 metres, got {self.depth.shape} {self.depth.dtype}')
        if self.rgb.shape != self.depth.shape + (3,) or self.rgb.dtype != np.uint8:
            raise ValueError(
                f'rgb must be (H, W, 3) uint8 registered to depth {self.depth.shape}, '
                f'got {self.rgb.shape} {self.rgb.dtype}'
            )
        if self.K.shape != (3, 3) or self.pose.shape != (4, 4):
            raise ValueError(f'K must be (3, 3) and pose (4, 4), got {self.K.shape} and {self.pose.shape}')
        if not np.isfinite(self.pose).all():
            raise ValueError('pose has non-finite entries')


@dataclass(frozen=True)
class KeyframePolicy:
    max_views: int = 20  # LLaVA-3D's num_frames
    min_translation_m: float = 0.25  # keep when the camera moved this far since the last kept view
    min_rotation_deg: float = 15.0  # ... or turned this much
    max_interval_s: float = 10.0  # ... or this much time passed (a static robot still refreshes)
    metres_per_radian: float = 0.5  # rotation weight in the eviction pose distance

    def __post_init__(self):
        if self.max_views < 1:
            raise ValueError(f'max_views must be >= 1, got {self.max_views}')
        if min(self.min_translation_m, self.min_rotation_deg, self.metres_per_radian) < 0 or self.max_interval_s <= 0:
            raise ValueError(f'thresholds must be >= 0 and max_interval_s > 0: {self}')


def _angles_rad(R_a: np.ndarray, R_b: np.ndarray) -> np.ndarray:
    """Angle of R_a^T R_b, broadcasting over leading axes: (..., 3, 3) -> (...,) radians in [0, pi].

    atan2(|sin|, cos) from the antisymmetric part and the trace: accurate for small angles too,
    where arccos(trace) loses half the digits.
    """
    M = np.einsum('...ji,...jk->...ik', R_a, R_b)  # R_a^T R_b
    cos2 = M[..., 0, 0] + M[..., 1, 1] + M[..., 2, 2] - 1.0  # 2 cos(angle)
    sin2 = np.sqrt(
        (M[..., 2, 1] - M[..., 1, 2]) ** 2 + (M[..., 0, 2] - M[..., 2, 0]) ** 2 + (M[..., 1, 0] - M[..., 0, 1]) ** 2
    )  # 2 sin(angle)
    return np.arctan2(sin2, cos2)


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Angle of the rotation taking orientation R_a to R_b, (3, 3) each -> degrees in [0, 180]."""
    return math.degrees(float(_angles_rad(np.asarray(R_a, float), np.asarray(R_b, float))))


def pose_distance(T_a: np.ndarray, T_b: np.ndarray, metres_per_radian: float = 0.5) -> float:
    """|t_a - t_b| (m) + metres_per_radian * rotation angle (rad) between two (4, 4) poses."""
    T_a, T_b = np.asarray(T_a, float), np.asarray(T_b, float)
    return float(np.linalg.norm(T_a[:3, 3] - T_b[:3, 3]) + metres_per_radian * _angles_rad(T_a[:3, :3], T_b[:3, :3]))


def _frozen(a: np.ndarray) -> np.ndarray:
    """Read-only array the caller cannot change under us: a view (of a message buffer, or part of a
    larger array) is copied first; an array owning its data is frozen in place, without a copy."""
    if a.base is not None:
        a = a.copy()
    a.flags.writeable = False
    return a


class KeyframeMemory:
    """Keeps at most policy.max_views views, chosen to cover the scene. All methods are thread-safe."""

    def __init__(self, policy: KeyframePolicy = KeyframePolicy()):
        self.policy = policy
        self._lock = threading.Lock()
        self._views = []  # kept views, oldest first (stamps never decrease: older offers are skipped)
        self._offered = self._kept = self._evicted = 0
        self._revision = 0  # + 1 whenever the kept views change
        self._changed_at = collections.deque(maxlen=256)  # time.monotonic() of the latest revisions

    def decide(self, pose: np.ndarray, stamp_ns: int) -> str:
        """What offer() would answer for a view with this pose and stamp, storing nothing: lets the
        front end skip the per-view geometry of views that would not be kept."""
        with self._lock:
            return self._decision(np.asarray(pose, dtype=np.float64), stamp_ns)

    def _decision(self, pose: np.ndarray, stamp_ns: int) -> str:
        p = self.policy
        if not self._views:
            return 'kept: first view'
        last = self._views[-1]
        if stamp_ns < last.stamp_ns:
            return (
                f'skipped: {(last.stamp_ns - stamp_ns) * 1e-9:.1f} s older than the last '
                'kept view (time went backwards? clear() the memory)'
            )
        moved = float(np.linalg.norm(pose[:3, 3] - last.pose[:3, 3]))
        turned = rotation_angle_deg(last.pose[:3, :3], pose[:3, :3])
        waited = (stamp_ns - last.stamp_ns) * 1e-9
        if moved >= p.min_translation_m:
            return f'kept: moved {moved:.2f} m'
        if turned >= p.min_rotation_deg:
            return f'kept: turned {turned:.1f} deg'
        if waited >= p.max_interval_s:
            return f'kept: {waited:.1f} s since last'
        return f'skipped: moved {moved:.2f} m, turned {turned:.1f} deg, {waited:.1f} s since last'

    def offer(self, view: View) -> str:
        """Keep or skip `view`, compared with the most recently kept view; returns the reason."""
        p = self.policy
        with self._lock:
            self._offered += 1
            reason = self._decision(view.pose, view.stamp_ns)
            if reason.startswith('skipped'):
                return reason
            self._views.append(
                dataclasses.replace(
                    view,
                    rgb=_frozen(view.rgb),
                    depth=_frozen(view.depth),
                    K=_frozen(view.K.copy()),
                    pose=_frozen(view.pose.copy()),
                    patch_xyz=None if view.patch_xyz is None else _frozen(view.patch_xyz),
                    patch_valid=None if view.patch_valid is None else _frozen(view.patch_valid),
                )
            )
            self._kept += 1
            self._changed()
            if len(self._views) > p.max_views:
                del self._views[self._most_redundant()]
                self._evicted += 1
            return reason

    def _most_redundant(self) -> int:
        """Index of the view, never the newest, closest (pose distance) to any other kept view.

        Ties go to the oldest, since np.argmin returns the first minimum. O(N^2) for N <= ~21 views.
        """
        poses = np.stack([v.pose for v in self._views])  # (N, 4, 4)
        t, R = poses[:, :3, 3], poses[:, :3, :3]
        d = (
            np.linalg.norm(t[:, None] - t[None], axis=-1)  # (N, N) metres
            + self.policy.metres_per_radian * _angles_rad(R[:, None], R[None])
        )
        np.fill_diagonal(d, np.inf)
        return int(np.argmin(d[:-1].min(axis=1)))  # newest (last row) excluded

    def snapshot(self) -> Tuple[View, ...]:
        """The kept views ordered by stamp; later offers do not change the returned tuple."""
        with self._lock:
            return tuple(self._views)

    def newest_stamp_ns(self) -> Optional[int]:
        """Stamp of the newest kept view, None when empty."""
        with self._lock:
            return self._views[-1].stamp_ns if self._views else None

    def clear(self) -> None:
        """Forget all views (e.g. time jumped backwards in a looped bag). Counters keep counting."""
        with self._lock:
            self._views.clear()
            self._changed()

    def _changed(self) -> None:
        self._revision += 1
        self._changed_at.append(time.monotonic())

    @property
    def revision(self) -> int:
        """How many times the kept views changed: a snapshot taken at revision r is current while it is r."""
        return self._revision

    def changed_since(self, revision: int) -> Optional[float]:
        """time.monotonic() of the first change after `revision` (how long a snapshot of it has been out
        of date), None if there was none; -inf when that change is too old to be remembered."""
        with self._lock:
            if revision >= self._revision:
                return None
            back = self._revision - revision  # the change to revision + 1 is this many entries from the end
            return self._changed_at[-back] if back <= len(self._changed_at) else float('-inf')

    def __len__(self) -> int:
        with self._lock:
            return len(self._views)

    @property
    def offered(self) -> int:
        return self._offered

    @property
    def kept(self) -> int:
        return self._kept

    @property
    def evicted(self) -> int:
        return self._evicted
