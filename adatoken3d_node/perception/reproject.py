"""Depth in the colour camera from an unregistered depth camera or a LiDAR cloud. Pure numpy, no ROS.

LLaVA-3D needs one depth value per colour pixel. Two sensor set-ups do not give that directly:
- an RGB-D rig whose depth image is not registered to the colour image (own K, own optical
  frame a few cm away): `reproject_depth`;
- a LiDAR whose points are already transformed into the colour optical frame: `points_to_depth`.

Both splat points into the colour image with a z-buffer: each point goes to the nearest pixel
(pixel u covers [u - 0.5, u + 0.5), centres on integer coordinates as everywhere in this
package), and where several land on one pixel the smallest z wins, because the nearest surface
is the one the colour camera sees. The result is sparse: pixels no point lands on stay 0.0
("no reading"). There is deliberately no hole filling: interpolating across a depth edge
invents points between foreground and background, while 0.0 is handled downstream as missing.

Arithmetic is float32 (the depth's own precision; float64 is 3-4x slower here): at 640 px wide
the projection is off by < 1e-3 px, which only matters for points within that of a pixel border.

Depth is float32 metres along the camera's z axis, 0.0 = no reading; K is a 3x3 zero-skew
pinhole; optical frames are x right, y down, z forward.
"""

from typing import Tuple

import numpy as np


def reproject_depth(
    depth_src: np.ndarray, K_src: np.ndarray, K_dst: np.ndarray, T_dst_src: np.ndarray, dst_shape: Tuple[int, int]
) -> np.ndarray:
    """Depth image of one camera re-expressed in another. depth_src (Hs, Ws) metres -> (Hd, Wd) float32.

    T_dst_src (4, 4) maps points in the source optical frame into the destination optical frame
    (for a depth camera 5 cm left of the colour camera: translation (+0.05, 0, 0)). Source pixels
    without a reading (0, negative or non-finite) produce no point. Returned values are z in the
    destination frame, so a pure baseline shift keeps them and only moves pixels.
    """
    depth = np.asarray(depth_src, dtype=np.float32)
    T = np.asarray(T_dst_src, dtype=np.float64)
    if depth.ndim != 2 or T.shape != (4, 4):
        raise ValueError(f'need depth_src (H, W) and T_dst_src (4, 4), got {depth.shape} and {T.shape}')
    Hs, Ws = depth.shape
    K = np.asarray(K_src, dtype=np.float64)
    # Source ray per pixel, (x/z, y/z, 1): a (Ws,) per column, b (Hs, 1) per row.
    a = ((np.arange(Ws) - K[0, 2]) / K[0, 0]).astype(np.float32)
    b = ((np.arange(Hs) - K[1, 2]) / K[1, 1]).astype(np.float32)[:, None]
    with np.errstate(invalid='ignore'):
        depth_or_nan = np.where(depth > 0, depth, np.float32(np.nan))  # no reading -> NaN: never lands
    R, t = T[:3, :3].astype(np.float32), T[:3, 3].astype(np.float32)
    # Destination frame: p_dst = R (z * ray) + t = z * (R ray) + t, one (Hs, Ws) array per axis
    # (in place: fresh 1 MB temporaries cost page faults comparable to the arithmetic).
    x, y, z = (np.add(R[i, 0] * a, R[i, 1] * b + R[i, 2]) for i in range(3))
    for i, c in enumerate((x, y, z)):
        c *= depth_or_nan
        c += t[i]
    return _zbuffer(x, y, z, K_dst, dst_shape)


def points_to_depth(points: np.ndarray, K: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """Sparse depth image from a cloud in the camera optical frame. points (N, 3) metres -> (H, W) float32.

    Points with a non-finite coordinate, z <= 0 (behind or on the camera plane) or projecting
    outside the image are ignored.
    """
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f'points must be (N, 3), got {pts.shape}')
    x, y, z = np.ascontiguousarray(pts.T, dtype=np.float32)  # (3, N): contiguous columns are faster
    return _zbuffer(x, y, z, K, shape)


def _zbuffer(x: np.ndarray, y: np.ndarray, z: np.ndarray, K: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """Points (any shape, float32, camera optical frame) -> (H, W) float32 nearest z per pixel, 0.0 = none."""
    H, W = shape
    # Python floats, not numpy float64 scalars, so the arithmetic stays float32 (NEP 50).
    fx, fy, cx, cy = (float(K[0][0]), float(K[1][1]), float(K[0][2]), float(K[1][2]))
    with np.errstate(all='ignore'):  # z <= 0 and NaN points divide badly, then fail the tests below
        # Nearest pixel, halves rounded up: floor(u + 0.5). NaN/inf u, v fail the bounds tests.
        u, v = fx * x, fy * y
        for c, offset in ((u, cx + 0.5), (v, cy + 0.5)):
            c /= z
            c += offset
            np.floor(c, out=c)
        ok = (z > 0) & (z < np.inf) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
    keep = np.flatnonzero(ok)  # (M,) then take: 3x faster than boolean indexing for scattered masks
    idx = v.take(keep).astype(np.intp) * W + u.take(keep).astype(np.intp)  # (M,) flat pixel index
    buf = np.full(H * W, np.inf, dtype=np.float32)
    np.minimum.at(buf, idx, z.take(keep))  # z-buffer: the nearest surface wins
    buf[buf == np.inf] = 0.0
    return buf.reshape(H, W)
