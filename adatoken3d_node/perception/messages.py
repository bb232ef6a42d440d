"""sensor_msgs -> numpy: Image, depth Image, CameraInfo, PointCloud2. No ROS import here.

Functions take message objects (real sensor_msgs messages, or anything with the
same attributes) and return numpy arrays. rclpy stores uint8[] `data` as an
`array.array('B')`, so results are views over msg.data where the layout allows
(row padding and alpha are skipped by strides, not copied); they are copied
only to reorder colour, swap bytes, convert type or drop points. A view shares
memory with the message: copy it before modifying it in place.

Conventions used everywhere downstream:
- Depth is float32 metres, and 0.0 means "no reading". REP-118: `16UC1`/`mono16`
  are millimetres, `32FC1` metres; REP-117: NaN, +-inf, 0 and negatives are
  invalid, and all become 0.0.
- Colour is (H, W, 3) uint8 RGB.
- Points are (N, 3) float32 metres in the cloud's header.frame_id; points with a
  non-finite coordinate are dropped, together with their colour rows.
- Lens distortion is NOT corrected in this version: `CameraModel.has_distortion`
  tells the caller, who must report it as ignored (the node logs it once).
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np


class MessageFormatError(ValueError):
    """A message whose fields are inconsistent or unsupported; says which topic and what is wrong."""

    def __init__(self, problem: str, topic: str = ''):
        super().__init__(f'{topic}: {problem}' if topic else problem)
        self.problem = problem
        self.topic = topic


# ---------------------------------------------------------------------------------------------- images

# encoding -> bytes per pixel
_COLOUR_ENCODINGS = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1, 'mono16': 2}
# encoding -> (numpy type without byte order, metres per stored unit)
_DEPTH_ENCODINGS = {'16UC1': ('u2', 0.001), 'mono16': ('u2', 0.001), '32FC1': ('f4', 1.0)}


def _pixels(msg, topic: str, bytes_per_pixel: int, shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """(H, W, ...) view of msg.data honouring `step` (row padding), after checking the sizes fit."""
    h, w = msg.height, msg.width
    if h == 0 or w == 0:
        raise MessageFormatError(f'Image has zero size ({w}x{h})', topic)
    if msg.step < w * bytes_per_pixel:
        raise MessageFormatError(
            f'Image step {msg.step} is less than width*{bytes_per_pixel} = '
            f'{w * bytes_per_pixel} bytes for {msg.encoding}',
            topic,
        )
    if len(msg.data) < msg.step * h:
        raise MessageFormatError(f'Image data has {len(msg.data)} bytes, step*height needs {msg.step * h}', topic)
    strides = (msg.step, bytes_per_pixel) + ((dtype.itemsize,) if len(shape) == 3 else ())
    return np.ndarray(shape, dtype=dtype, buffer=msg.data, strides=strides)


def _byte_order(msg) -> str:
    return '>' if msg.is_bigendian else '<'


def image_to_rgb(msg, topic: str = '') -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB. rgb8/rgba8: strided views of msg.data; others: copies."""
    enc = msg.encoding
    if enc not in _COLOUR_ENCODINGS:
        raise MessageFormatError(
            f'Image encoding {enc!r} is not a colour encoding; accepted: {", ".join(_COLOUR_ENCODINGS)}', topic
        )
    bpp = _COLOUR_ENCODINGS[enc]
    h, w = msg.height, msg.width
    if enc == 'mono16':
        gray = _pixels(msg, topic, 2, (h, w), np.dtype(_byte_order(msg) + 'u2'))
        gray = (gray >> 8).astype(np.uint8)  # keep the 8 most significant bits
        return np.repeat(gray[:, :, None], 3, axis=2)
    if enc == 'mono8':
        gray = _pixels(msg, topic, 1, (h, w), np.dtype(np.uint8))
        return np.repeat(gray[:, :, None], 3, axis=2)
    px = _pixels(msg, topic, bpp, (h, w, bpp), np.dtype(np.uint8))  # (H, W, 3|4)
    if enc.startswith('rgb'):
        return px[:, :, :3]  # view: alpha skipped by strides
    return np.ascontiguousarray(px[:, :, 2::-1])  # BGR(A) -> RGB needs a copy


def depth_to_metres(msg, topic: str = '', scale: Optional[float] = None) -> np.ndarray:
    """Depth sensor_msgs/Image -> (H, W) float32 metres, invalid = 0.0.

    The unit comes from the encoding (REP-118); `scale` (metres per stored unit,
    e.g. 0.0002 for TUM's 5000-per-metre PNGs) overrides it.
    """
    enc = msg.encoding
    if enc not in _DEPTH_ENCODINGS:
        raise MessageFormatError(
            f'Image encoding {enc!r} is not a depth encoding; accepted: {", ".join(_DEPTH_ENCODINGS)}', topic
        )
    if scale is not None and not (np.isfinite(scale) and scale > 0):
        raise ValueError(f'depth scale must be a positive finite number of metres per unit, got {scale}')
    kind, unit = _DEPTH_ENCODINGS[enc]
    dtype = np.dtype(_byte_order(msg) + kind)
    raw = _pixels(msg, topic, dtype.itemsize, (msg.height, msg.width), dtype)
    factor = unit if scale is None else scale
    # uint16 * float promotes to float64, rounded once to float32: 1234 mm -> the float32 nearest 1.234 m.
    metres = (raw * factor).astype(np.float32) if factor != 1.0 else raw.astype(np.float32)
    metres[~(np.isfinite(metres) & (metres > 0))] = 0.0  # NaN, +-inf, 0, negative: no reading
    return metres


# ---------------------------------------------------------------------------------------------- camera


@dataclass(frozen=True, eq=False)  # eq=False: numpy fields make the generated __eq__/__hash__ meaningless
class CameraModel:
    """Pinhole intrinsics of one camera. K and D are read-only copies, not views of the message."""

    K: np.ndarray  # (3, 3) float64, pixels: [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]
    width: int
    height: int
    distortion_model: str  # e.g. 'plumb_bob', 'equidistant'; '' when none is given
    D: np.ndarray  # (n,) float64 distortion coefficients, NOT applied in this version
    frame_id: str  # optical frame: x right, y down, z forward

    @property
    def has_distortion(self) -> bool:
        """Any nonzero coefficient: the caller must report that distortion is ignored."""
        return bool(np.any(self.D != 0))


def camera_info_to_model(msg, topic: str = '') -> CameraModel:
    """sensor_msgs/CameraInfo -> CameraModel, rejecting a K that cannot project (fx, fy <= 0 or non-finite)."""
    if msg.width == 0 or msg.height == 0:
        raise MessageFormatError(f'CameraInfo has zero size ({msg.width}x{msg.height})', topic)
    k = np.array(msg.k, dtype=np.float64)
    if k.size != 9:
        raise MessageFormatError(f'CameraInfo k has {k.size} values, needs 9', topic)
    K = k.reshape(3, 3)
    fx, fy = K[0, 0], K[1, 1]
    if not (np.isfinite(fx) and np.isfinite(fy) and fx > 0 and fy > 0):
        raise MessageFormatError(
            f'CameraInfo focal length fx={fx}, fy={fy} must be positive and finite '
            f'(an uncalibrated camera publishes zeros)',
            topic,
        )
    if not np.isfinite(K).all():
        raise MessageFormatError(f'CameraInfo k has non-finite values: {k.tolist()}', topic)
    D = np.array(msg.d, dtype=np.float64)
    K.flags.writeable = False
    D.flags.writeable = False
    return CameraModel(
        K=K,
        width=int(msg.width),
        height=int(msg.height),
        distortion_model=msg.distortion_model,
        D=D,
        frame_id=msg.header.frame_id,
    )


# ---------------------------------------------------------------------------------------------- clouds

# sensor_msgs/PointField datatype -> numpy type without byte order
POINT_FIELD_TYPES = {1: 'i1', 2: 'u1', 3: 'i2', 4: 'u2', 5: 'i4', 6: 'u4', 7: 'f4', 8: 'f8'}
_FLOAT32, _FLOAT64, _UINT32 = 7, 8, 6


def pointcloud_to_xyz(msg, topic: str = '') -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """sensor_msgs/PointCloud2 -> ((N, 3) float32 xyz, (N, 3) uint8 rgb or None), finite points only.

    Parsed with one structured-dtype view over msg.data (fields, point_step,
    row_step, is_bigendian), so a 1M-point cloud takes tens of ms. Colour is a
    packed 0x00RRGGBB `rgb`/`rgba` field (float32 or uint32 bits, as PCL writes it).
    """
    h, w, point_step, row_step = msg.height, msg.width, msg.point_step, msg.row_step
    if point_step == 0:
        raise MessageFormatError('PointCloud2 point_step is 0', topic)
    if row_step < w * point_step:
        raise MessageFormatError(
            f'PointCloud2 row_step {row_step} is less than width*point_step = {w}*{point_step} = {w * point_step}',
            topic,
        )
    if len(msg.data) < row_step * h:
        raise MessageFormatError(
            f'PointCloud2 data has {len(msg.data)} bytes, row_step*height needs {row_step * h}', topic
        )
    fields = {}
    for f in msg.fields:
        kind = POINT_FIELD_TYPES.get(f.datatype)
        if kind is not None and f.offset + np.dtype(kind).itemsize * max(f.count, 1) > point_step:
            raise MessageFormatError(
                f'PointCloud2 field {f.name!r} (offset {f.offset}, {kind} x {f.count}) '
                f'does not fit in point_step {point_step}',
                topic,
            )
        fields.setdefault(f.name, f)  # first of duplicate names wins
    missing = [n for n in 'xyz' if n not in fields]
    if missing:
        raise MessageFormatError(
            f'PointCloud2 has no field {", ".join(missing)} (fields: {", ".join(fields) or "none"})', topic
        )
    for n in 'xyz':
        if fields[n].datatype not in (_FLOAT32, _FLOAT64):
            raise MessageFormatError(
                f'PointCloud2 field {n!r} has datatype {fields[n].datatype}, needs FLOAT32 (7) or FLOAT64 (8)', topic
            )
    colour = fields.get('rgb') or fields.get('rgba')
    if colour is not None and colour.datatype not in (_FLOAT32, _UINT32):
        raise MessageFormatError(
            f'PointCloud2 colour field {colour.name!r} has datatype {colour.datatype}, '
            f'needs packed FLOAT32 (7) or UINT32 (6)',
            topic,
        )

    # One record per point; only the fields we read, at their offsets, in the cloud's byte order.
    order = '>' if msg.is_bigendian else '<'
    names = ['x', 'y', 'z']
    formats = [order + POINT_FIELD_TYPES[fields[n].datatype] for n in names]
    offsets = [fields[n].offset for n in names]
    if colour is not None:
        names.append('rgb')
        formats.append(order + 'u4')  # float32 colour is read as its bits
        offsets.append(colour.offset)
    record = np.dtype({'names': names, 'formats': formats, 'offsets': offsets, 'itemsize': point_step})
    if h * w == 0:
        return np.zeros((0, 3), np.float32), None if colour is None else np.zeros((0, 3), np.uint8)
    points = np.ndarray((h, w), dtype=record, buffer=msg.data, strides=(row_step, point_step))  # view

    xyz = np.empty((h, w, 3), np.float32)  # metres
    for i, n in enumerate('xyz'):
        xyz[:, :, i] = points[n]  # byte swap and float64 -> float32 here
    xyz = xyz.reshape(-1, 3)
    # is_dense=false clouds carry NaN points. Per column and np.compress: ~10x faster than .all(axis=1) and xyz[mask].
    finite = np.isfinite(xyz[:, 0]) & np.isfinite(xyz[:, 1]) & np.isfinite(xyz[:, 2])  # (H*W,) bool
    all_finite = bool(finite.all())
    if not all_finite:
        xyz = np.compress(finite, xyz, axis=0)
    if colour is None:
        return xyz, None
    packed = points['rgb'].reshape(-1)  # (H*W,) uint32 0x00RRGGBB
    if not all_finite:
        packed = np.compress(finite, packed)
    rgb = np.empty((packed.shape[0], 3), np.uint8)
    rgb[:, 0] = (packed >> 16) & 0xFF
    rgb[:, 1] = (packed >> 8) & 0xFF
    rgb[:, 2] = packed & 0xFF
    return xyz, rgb
