"""3D patch geometry and voxel pooling for LLaVA-3D spatial tokens. Pure numpy/torch, no ROS.

One view:   resize_crop_view -> backproject -> patch_xyz   (numpy, per keyframe)
All views:  voxel_pool over the valid patches               (torch, per query)

Conventions: depth in metres with 0 (or non-finite) = no reading; K is a zero-skew
pinhole whose pixel (u, v) is centred on integer coordinates, i.e. covers
[u - 0.5, u + 0.5]; poses are 4x4 camera(optical)-to-fixed-frame.

Where this deliberately differs from LLaVA-3D as released:
- depth is resampled with centre-aligned nearest neighbour (the source pixel whose
  footprint contains the resized pixel's centre), so the scaled K describes where
  each depth value really came from; torch's `nearest` samples the pixel above-left
  of that and is off by up to one source pixel;
- patches without depth are reported invalid instead of landing at the camera centre;
- `median` patch positions are available as a depth-noise-robust alternative to the
  single top-left pixel;
- the token cap is farthest-point sampling, not an unseeded random permutation.
Voxel keys are LLaVA-3D's, round(xyz / voxel_size): the checkpoint was trained on that grid.
"""

import math
from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F


def resize_crop_view(
    rgb: np.ndarray, depth: np.ndarray, K: np.ndarray, size: int = 336
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scale so the short side is `size`, centre-crop to size x size, and move K along.

    rgb (H, W, 3) uint8, depth (H, W) metres, K (3, 3) -> rgb (size, size, 3) uint8,
    depth (size, size) float32, K (3, 3) float64. Colour is bicubic with antialias
    (like the CLIP processor); depth is nearest so that no value is ever a blend of a
    reading and a hole (or of two surfaces at an edge).
    """
    H, W = depth.shape[:2]
    if depth.ndim != 2 or rgb.shape != (H, W, 3):
        raise ValueError(f'rgb {rgb.shape} and depth {depth.shape} must be registered (H, W, 3) and (H, W)')
    # Output size as the CLIP processor computes it: short side = size, long side truncated.
    if H <= W:
        new_h, new_w = size, int(size * W / H)
    else:
        new_h, new_w = int(size * H / W), size
    top, left = (new_h - size) // 2, (new_w - size) // 2
    sy, sx = new_h / H, new_w / W  # per axis: exactly the ratio the resampling uses

    # uint8 in, uint8 out (channels-last): torch's integer resampling path, 3x faster than float and,
    # like PIL's bicubic that the CLIP processor uses, it rounds and clamps to uint8 between passes.
    rgb = np.ascontiguousarray(rgb) if rgb.flags.writeable else rgb.copy()  # zero-copy message views are read-only
    img = torch.from_numpy(rgb).permute(2, 0, 1)[None]  # (1, 3, H, W) uint8
    img = F.interpolate(img, size=(new_h, new_w), mode='bicubic', align_corners=False, antialias=True)
    rgb_out = np.ascontiguousarray(img[0, :, top : top + size, left : left + size].permute(1, 2, 0).numpy())

    # Resized pixel u' has its centre at source coordinate (u' + 0.5) / sx - 0.5; take the
    # source pixel that contains it: floor((u' + 0.5) * W / new_w), in exact integer arithmetic.
    rows = ((2 * (np.arange(size) + top) + 1) * H) // (2 * new_h)
    cols = ((2 * (np.arange(size) + left) + 1) * W) // (2 * new_w)
    depth_out = np.ascontiguousarray(depth[rows[:, None], cols[None, :]], dtype=np.float32)

    # The same map as a matrix on homogeneous pixel coordinates: u' = sx * u + (sx - 1) / 2 - left,
    # i.e. cx' = (cx + 0.5) * sx - 0.5 - left and fx' = fx * sx.
    A = np.array([[sx, 0.0, 0.5 * sx - 0.5 - left], [0.0, sy, 0.5 * sy - 0.5 - top], [0.0, 0.0, 1.0]])
    return rgb_out, depth_out, A @ np.asarray(K, dtype=np.float64)


def backproject(depth: np.ndarray, K: np.ndarray, pose: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Every pixel to the fixed frame. depth (H, W) metres -> xyz (H, W, 3) float32, valid (H, W) bool.

    Pixels without a reading get NaN, so nothing downstream can mistake them for a point.
    """
    z = depth.astype(np.float64)
    valid = np.isfinite(z) & (z > 0)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    H, W = z.shape
    x = (np.arange(W) - cx) * z / fx  # (H, W) camera frame, metres
    y = (np.arange(H)[:, None] - cy) * z / fy
    pose = np.asarray(pose, dtype=np.float64)
    xyz = np.stack([x, y, z], axis=-1) @ pose[:3, :3].T + pose[:3, 3]  # (H, W, 3) fixed frame
    xyz[~valid] = np.nan
    return xyz.astype(np.float32), valid


def patch_xyz(
    xyz: np.ndarray, valid: np.ndarray, grid: int = 24, mode: str = 'nearest', min_valid: float = 0.1
) -> Tuple[np.ndarray, np.ndarray]:
    """One 3D position per vision patch. xyz (S, S, 3), valid (S, S) -> centres (grid*grid, 3) float32,
    patch_valid (grid*grid,) bool, row-major (r * grid + c) like CLIP's patch tokens.

    Patch (r, c) covers pixels [r*p, (r+1)*p) x [c*p, (c+1)*p), p = S // grid.
    nearest: the patch's top-left pixel (r*p, c*p), which is what LLaVA-3D's
        F.interpolate(mode='nearest') to grid x grid picks; invalid if that pixel has no depth.
    centre: the patch's centre pixel (r*p + p//2, c*p + p//2): one pixel like nearest, but where
        the patch is, so a small object's patch is not placed on the floor beside it.
    median: per-coordinate median of the patch's valid pixels (torch.nanmedian: the lower
        middle value for an even count); invalid when fewer than `min_valid` of the patch's
        pixels have depth.
    Invalid patches have NaN centres.
    """
    S = valid.shape[0]
    if valid.shape != (S, S) or xyz.shape != (S, S, 3) or S % grid:
        raise ValueError(f'need a square xyz map divisible by grid={grid}, got {xyz.shape}')
    p = S // grid
    if mode in ('nearest', 'centre'):
        h = p // 2 if mode == 'centre' else 0
        centres = xyz[h::p, h::p].astype(np.float32)  # (grid, grid, 3)
        ok = valid[h::p, h::p].copy()
    elif mode == 'median':
        # (grid, p, grid, p, 3) -> (grid, grid, 3, p*p): one row of p*p pixels per patch coordinate
        blocks = xyz.reshape(grid, p, grid, p, 3).transpose(0, 2, 4, 1, 3).reshape(grid, grid, 3, p * p)
        mask = valid.reshape(grid, p, grid, p).transpose(0, 2, 1, 3).reshape(grid, grid, 1, p * p)
        blocks = torch.from_numpy(np.where(mask, blocks, np.nan).astype(np.float32))
        centres = blocks.nanmedian(dim=-1).values.numpy()
        ok = mask[:, :, 0].sum(-1) >= max(1, math.ceil(min_valid * p * p))
    else:
        raise ValueError(f'unknown patch mode {mode!r} (nearest, centre, median)')
    centres[~ok] = np.nan
    return centres.reshape(grid * grid, 3), ok.reshape(grid * grid)


@dataclass
class VoxelTokens:
    features: torch.Tensor  # (M, C) mean feature per kept voxel, dtype of the input features
    centres: torch.Tensor  # (M, 3) mean xyz of the voxel's patches, metres, fixed frame
    keys: torch.Tensor  # (M, 3) int64 voxel index round(xyz / voxel_size), lexicographic order
    patch_to_voxel: torch.Tensor  # (N,) int64 token index of each input patch, -1 if its voxel was capped away
    counts: torch.Tensor  # (M,) int64 patches per kept voxel
    num_voxels_before_cap: int


def voxel_pool(
    features: torch.Tensor, xyz: torch.Tensor, voxel_size: float = 0.2, max_tokens: int = 2560
) -> VoxelTokens:
    """Average patch features per voxel. features (N, C), xyz (N, 3) of the *valid* patches of all views.

    Keys: round(xyz / voxel_size) as LLaVA-3D, so voxel k is centred on k * voxel_size: a floor at
        z = 0 sits in the middle of one layer of voxels, where floor() would split it by its noise.
    Centres: mean xyz of the member patches rather than the grid cell centre, so a token sits on
        the surface it saw (the cell centre is (keys + 0.5) * voxel_size if wanted).
    Order: lexicographic by key (x, then y, then z), independent of view and patch order.
    Cap: above max_tokens voxels, keep a farthest-point sample of the centres (spatial coverage,
        deterministic), returned in the same key order.
    Deterministic bit-for-bit on CPU; on CUDA index_add_ is only deterministic under
    torch.use_deterministic_algorithms(True).
    """
    if xyz.ndim != 2 or xyz.shape[1] != 3 or features.ndim != 2 or features.shape[0] != xyz.shape[0]:
        raise ValueError(f'need features (N, C) and xyz (N, 3), got {tuple(features.shape)} and {tuple(xyz.shape)}')
    if not bool(torch.isfinite(xyz).all()):
        raise ValueError('xyz has non-finite entries: pass only valid patches')
    if voxel_size <= 0 or max_tokens < 1:
        raise ValueError(f'voxel_size {voxel_size} and max_tokens {max_tokens} must be positive')

    keys = torch.round(xyz.double() / voxel_size).long()  # (N, 3); float64 so 0.2 m steps land where expected
    keys, inv, counts = torch.unique(keys, dim=0, sorted=True, return_inverse=True, return_counts=True)
    M = keys.shape[0]
    # Sums in at least float32 (bf16 features would lose the mean), then back to the input dtype.
    acc = torch.promote_types(features.dtype, torch.float32)
    feats = torch.zeros(M, features.shape[1], dtype=acc, device=features.device)
    feats = (feats.index_add_(0, inv, features.to(acc)) / counts[:, None]).to(features.dtype)
    centres = torch.zeros(M, 3, dtype=torch.float64, device=xyz.device)
    centres = (centres.index_add_(0, inv, xyz.double()) / counts[:, None]).to(xyz.dtype)

    patch_to_voxel = inv
    if M > max_tokens:
        # Seed: the most observed voxel (argmax returns the first of ties, i.e. the smallest key).
        keep = farthest_point_sample(centres, max_tokens, start=int(torch.argmax(counts))).sort().values
        new_index = torch.full((M,), -1, dtype=torch.long, device=inv.device)
        new_index[keep] = torch.arange(keep.shape[0], device=inv.device)
        patch_to_voxel = new_index[inv]
        feats, centres, keys, counts = feats[keep], centres[keep], keys[keep], counts[keep]
    return VoxelTokens(feats, centres, keys, patch_to_voxel, counts, M)


def farthest_point_sample(points: torch.Tensor, k: int, start: int = 0) -> torch.Tensor:
    """Greedy farthest-point sampling. points (M, 3) -> (min(k, M),) int64 indices in pick order.

    Each pick is the point farthest from all picked so far (ties: lowest index), so the kept set
    covers space evenly: every point ends up within the final pick distance of a kept one.
    O(M * k) time with one running (M,) min-distance vector.
    """
    M = points.shape[0]
    k = min(k, M)
    x, y, z = points.float().t().contiguous()  # (M,) each: contiguous columns halve the time per pick
    picked = torch.empty(k, dtype=torch.long, device=points.device)
    min_d2 = torch.full((M,), float('inf'), device=points.device)  # squared distance to nearest pick
    i = torch.tensor(start, device=points.device)  # kept on device: no host sync per pick on CUDA
    for j in range(k):
        picked[j] = i
        d2 = (x - x[i]).square_() + (y - y[i]).square_() + (z - z[i]).square_()
        torch.minimum(min_d2, d2, out=min_d2)
        i = torch.argmax(min_d2)
    return picked
