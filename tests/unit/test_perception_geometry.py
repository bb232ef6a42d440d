"""3D patch geometry and voxel pooling: exact values, LLaVA-3D parity where intended, fixes where not."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adatoken3d_node.perception.geometry import (
    backproject,
    farthest_point_sample,
    patch_xyz,
    resize_crop_view,
    voxel_pool,
)

# Camera looking along world +x from (1, 2, 3): optical z -> world +x, x -> -y, y -> -z.
R_LOOK_X = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
POSE = np.eye(4)
POSE[:3, :3], POSE[:3, 3] = R_LOOK_X, [1.0, 2.0, 3.0]


def intrinsics(fx, fy, cx, cy):
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def random_scene(rng, size=336, holes=0.1):
    """A noisy, tilted surface 1-5 m away with holes; returns xyz, valid from backproject."""
    v, u = np.mgrid[0:size, 0:size]
    depth = (2.0 + 1.5 * np.sin(u / 40.0) + 0.01 * v + 0.02 * rng.standard_normal((size, size))).astype(np.float32)
    depth[rng.random((size, size)) < holes] = 0.0
    return backproject(depth, intrinsics(300.0, 300.0, size / 2 - 0.5, size / 2 - 0.5), POSE)


# ---------------------------------------------------------------- backproject


def test_backproject_fronto_parallel_plane():
    H, W = 48, 64
    K = intrinsics(500.0, 400.0, 32.0, 24.0)
    depth = np.full((H, W), 2.0, np.float32)
    depth[5, 7] = 0.0
    depth[6, 8] = np.nan
    xyz, valid = backproject(depth, K, POSE)
    assert xyz.shape == (H, W, 3) and xyz.dtype == np.float32 and valid.dtype == bool

    # x_c = (u - 32) * 2 / 500, y_c = (v - 24) * 2 / 400, z_c = 2; world = (1 + z_c, 2 - x_c, 3 - y_c).
    expected = {
        (0, 0): (3.0, 2.128, 3.12),  # (v, u)
        (24, 32): (3.0, 2.0, 3.0),  # principal point: straight ahead
        (47, 63): (3.0, 1.876, 2.885),
        (10, 57): (3.0, 1.9, 3.07),
    }
    for (v, u), p in expected.items():
        np.testing.assert_allclose(xyz[v, u], p, atol=1e-6)

    # Every valid point has camera-frame depth 2 (on the plane x_world = 3); holes are NaN, not the camera centre.
    assert valid.sum() == H * W - 2 and not valid[5, 7] and not valid[6, 8]
    cam = (xyz[valid].astype(np.float64) - POSE[:3, 3]) @ POSE[:3, :3]  # world -> camera: R^T (p - t)
    np.testing.assert_allclose(cam[:, 2], 2.0, atol=1e-6)
    assert np.isnan(xyz[5, 7]).all() and np.isnan(xyz[6, 8]).all()


# ---------------------------------------------------------------- resize / crop


def test_resize_crop_intrinsics_640x480():
    rgb = np.zeros((480, 640, 3), np.uint8)
    depth = np.ones((480, 640), np.float32)
    # s = 336 / 480 = 0.7 -> 448 x 336, crop 56 px from the left.
    # fx' = 600 * 0.7 = 420, fy' = 550 * 0.7 = 385,
    # cx' = (320 + 0.5) * 0.7 - 0.5 - 56 = 167.85, cy' = (240 + 0.5) * 0.7 - 0.5 = 167.85.
    rgb2, depth2, K2 = resize_crop_view(rgb, depth, intrinsics(600.0, 550.0, 320.0, 240.0))
    assert rgb2.shape == (336, 336, 3) and rgb2.dtype == np.uint8
    assert depth2.shape == (336, 336) and depth2.dtype == np.float32
    np.testing.assert_allclose(K2, intrinsics(420.0, 385.0, 167.85, 167.85), rtol=0, atol=1e-12)
    # A centred principal point stays centred: (319.5 + 0.5) * 0.7 - 0.5 - 56 = 167.5 = (336 - 1) / 2.
    _, _, K3 = resize_crop_view(rgb, depth, intrinsics(600.0, 600.0, 319.5, 239.5))
    np.testing.assert_allclose(K3[:2, 2], [167.5, 167.5], rtol=0, atol=1e-12)
    # Portrait: crop from the top instead.
    _, _, K4 = resize_crop_view(rgb.transpose(1, 0, 2), depth.T, intrinsics(600.0, 600.0, 239.5, 319.5))
    np.testing.assert_allclose(K4, intrinsics(420.0, 420.0, 167.5, 167.5), rtol=0, atol=1e-12)


def test_resize_crop_colour():
    rgb = np.full((480, 640, 3), (10, 200, 77), np.uint8)
    out, _, _ = resize_crop_view(rgb, np.ones((480, 640), np.float32), np.eye(3))
    assert (out == np.array([10, 200, 77], np.uint8)).all()
    with pytest.raises(ValueError):
        resize_crop_view(np.zeros((240, 320, 3), np.uint8), np.ones((480, 640), np.float32), np.eye(3))


@pytest.mark.parametrize('shape', [(480, 640), (720, 1280), (200, 300), (400, 336)])
def test_resized_depth_pixels_keep_their_geometry(shape):
    """A resized pixel back-projected with K' lies on the ray of the source pixel it was sampled from:
    re-projected with the original K it lands inside that pixel's footprint (within half a pixel), at
    the same depth. Exact pointwise equality is impossible for non-integer scales; the footprint is the
    exact statement."""
    rng = np.random.default_rng(0)
    H, W = shape
    K = intrinsics(530.0, 525.0, W / 2 + 3.3, H / 2 - 7.1)
    # Random depth in [0.5, 5) m with every reading distinct (a shuffled fine ladder), 20% holes.
    depth = (0.5 + rng.permutation(H * W).reshape(H, W) * (4.5 / (H * W))).astype(np.float32)
    depth[rng.random((H, W)) < 0.2] = 0.0
    _, depth2, K2 = resize_crop_view(np.zeros((H, W, 3), np.uint8), depth, K)

    xyz2, valid2 = backproject(depth2, K2, np.eye(4))
    # Locate each sample's source pixel by its (unique) random value.
    vals, first = np.unique(depth, return_index=True)
    assert len(vals) == H * W - (depth == 0).sum() + 1  # all readings distinct, plus the 0 of the holes
    src = first[np.searchsorted(vals, depth2[valid2])]
    sv, su = np.divmod(src, W)
    p = xyz2[valid2].astype(np.float64)
    u = K[0, 0] * p[:, 0] / p[:, 2] + K[0, 2]
    v = K[1, 1] * p[:, 1] / p[:, 2] + K[1, 2]
    assert np.abs(u - su).max() <= 0.5 + 1e-4 and np.abs(v - sv).max() <= 0.5 + 1e-4
    np.testing.assert_array_equal(p[:, 2].astype(np.float32), depth[sv, su])
    # ... which is the same 3D point up to half a source pixel sideways at that depth.
    xyz, _ = backproject(depth, K, np.eye(4))
    gap = np.abs(p - xyz[sv, su])
    assert (gap[:, 0] <= 0.5 * p[:, 2] / K[0, 0] + 1e-5).all() and (gap[:, 1] <= 0.5 * p[:, 2] / K[1, 1] + 1e-5).all()


def test_resized_depth_never_mixes_readings_and_holes():
    rng = np.random.default_rng(1)
    depth = rng.uniform(0.3, 8.0, (480, 640)).astype(np.float32)
    depth[::2, ::3] = 0.0  # fine-grained holes every few pixels: any blending would show
    depth[100:200, 300:400] = 0.0
    _, depth2, _ = resize_crop_view(np.zeros((480, 640, 3), np.uint8), depth, np.eye(3))
    assert np.isin(depth2, depth).all()  # every output value is an input value, bit for bit
    assert (depth2 == 0).any() and (depth2 > 0.3 - 1e-6)[depth2 != 0].all()


# ---------------------------------------------------------------- patch positions


def test_nearest_patches_match_llava3d_interpolate():
    xyz, valid = random_scene(np.random.default_rng(2))
    centres, ok = patch_xyz(xyz, valid, grid=24, mode='nearest')
    assert centres.shape == (576, 3) and ok.shape == (576,)
    # LLaVA-3D: F.interpolate(xyz (1, 3, 336, 336), size=24, mode='nearest'), flattened row-major.
    ref = F.interpolate(torch.from_numpy(xyz).permute(2, 0, 1)[None], size=(24, 24), mode='nearest')
    ref = ref[0].permute(1, 2, 0).reshape(576, 3).numpy()
    ref_ok = F.interpolate(torch.from_numpy(valid).float()[None, None], size=(24, 24), mode='nearest')
    np.testing.assert_array_equal(ok, ref_ok.reshape(576).numpy() > 0)
    np.testing.assert_array_equal(centres[ok], ref[ok])
    assert 0 < (~ok).sum() < 576  # the 10% holes do hit some top-left pixels
    # Row-major: patch r * 24 + c is pixel (14 r, 14 c).
    np.testing.assert_array_equal(centres[5 * 24 + 7], xyz[70, 98])


def test_median_ignores_outliers_and_holes():
    xyz, valid = random_scene(np.random.default_rng(3), holes=0.0)
    # Patch (2, 3) = pixels [28, 42) x [42, 56): a surface at (1, 2, 3) with 40 flying pixels and 50 holes.
    block = np.zeros((14, 14, 3), np.float32) + np.array([1.0, 2.0, 3.0], np.float32)
    block_valid = np.ones((14, 14), bool)
    flat, flat_valid = block.reshape(-1, 3), block_valid.reshape(-1)
    idx = np.random.default_rng(4).permutation(196)
    flat[idx[:40]] = 100.0  # outliers, including possibly the top-left pixel
    flat[idx[40:90]] = -50.0
    flat_valid[idx[40:90]] = False  # holes carrying junk coordinates: must be ignored
    flat[0], flat_valid[0] = 100.0, True  # top-left pixel is an outlier
    xyz[28:42, 42:56], valid[28:42, 42:56] = block, block_valid

    med, ok = patch_xyz(xyz, valid, mode='median')
    near, _ = patch_xyz(xyz, valid, mode='nearest')
    assert ok[2 * 24 + 3]
    np.testing.assert_array_equal(med[2 * 24 + 3], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(near[2 * 24 + 3], [100.0, 100.0, 100.0])  # what LLaVA-3D would use

    # Convention: per coordinate, lower middle value for an even count of valid pixels.
    vals = np.random.default_rng(5).permutation(196).astype(np.float32)
    xyz[0:14, 0:14] = np.stack([vals, -vals, vals + 10], -1).reshape(14, 14, 3)
    valid[0:14, 0:14] = True
    med, ok = patch_xyz(xyz, valid, mode='median')
    np.testing.assert_array_equal(med[0], [97.0, -98.0, 107.0])


def test_invalid_patches_are_reported_not_placed_at_camera():
    xyz, valid = random_scene(np.random.default_rng(6), holes=0.0)
    valid[0:14, 14:28] = False  # patch 1: no depth at all
    valid[14:28, 0:14] = False
    valid[20:22, 5:14] = True  # patch 24: 18 of 196 valid < 10% (20 px)
    valid[14:28, 28:42] = False
    valid[16:18, 28:42] = True  # patch 26: 28 valid, top-left hole
    xyz[~valid] = np.nan
    for mode in ('nearest', 'median'):
        centres, ok = patch_xyz(xyz, valid, mode=mode)
        assert not ok[1] and not ok[24]
        assert ok[26] == (mode == 'median')  # nearest only sees the top-left pixel
        assert np.isnan(centres[~ok]).all() and np.isfinite(centres[ok]).all()
        assert not np.isclose(centres, POSE[:3, 3]).all(axis=1).any()
        assert ok.sum() == 576 - 2 - (mode == 'nearest')


# ---------------------------------------------------------------- voxel pooling


def test_voxel_pool_exact_means_and_round_keys():
    # voxel 0.2 m, keys round(xyz / 0.2); coordinates are binary fractions so the means are exact.
    xyz = torch.tensor(
        [
            [0.0625, 0.0625, 0.0],  # key (0, 0, 0)
            [0.25, 0.0625, -0.0625],  # key (1, 0, 0)
            [-0.0625, 0.0, 0.0625],  # key (0, 0, 0)
            [0.1875, -0.0625, 0.0],
        ]
    )  # key (1, 0, 0)
    feats = torch.tensor([[1.0, 10.0], [5.0, -2.0], [3.0, 20.0], [6.0, 4.0]])
    vt = voxel_pool(feats, xyz)
    assert vt.keys.dtype == torch.int64 and vt.num_voxels_before_cap == 2
    assert vt.keys.tolist() == [[0, 0, 0], [1, 0, 0]]
    assert torch.equal(vt.features, torch.tensor([[2.0, 15.0], [5.5, 1.0]]))
    assert torch.equal(vt.centres, torch.tensor([[0.0, 0.03125, 0.03125], [0.21875, 0.0, -0.03125]]))
    assert vt.counts.tolist() == [2, 2] and vt.patch_to_voxel.tolist() == [0, 1, 0, 1]
    # round as LLaVA-3D, not floor: -0.05 m is voxel 0 (floor: -1), 0.15 m is voxel 1 (floor: 0).
    vt = voxel_pool(torch.zeros(2, 1), torch.tensor([[-0.05, 0.15, 0.0], [0.0, 0.0, 0.0]]))
    assert vt.keys.tolist() == [[0, 0, 0], [0, 1, 0]]
    # Reduced precision features are summed in float32 and handed back in their own dtype.
    vt = voxel_pool(feats.bfloat16(), xyz)
    assert vt.features.dtype == torch.bfloat16
    assert torch.equal(vt.features.float(), torch.tensor([[2.0, 15.0], [5.5, 1.0]]))


def test_voxel_order_is_lexicographic_and_input_order_free():
    g = torch.Generator().manual_seed(7)
    xyz = torch.rand(500, 3, generator=g) * 4 - 2
    feats = torch.randint(-8, 8, (500, 4), generator=g).float()  # integers: sums exact in any order
    vt = voxel_pool(feats, xyz)
    keys = [tuple(k) for k in vt.keys.tolist()]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert torch.equal(vt.keys[vt.patch_to_voxel], torch.round(xyz.double() / 0.2).long())
    assert int(vt.counts.sum()) == 500
    perm = torch.randperm(500, generator=g)
    vp = voxel_pool(feats[perm], xyz[perm])
    assert torch.equal(vp.keys, vt.keys) and torch.equal(vp.features, vt.features) and torch.equal(vp.counts, vt.counts)
    assert torch.equal(vp.patch_to_voxel, vt.patch_to_voxel[perm])


def room_points(n=20000, seed=8):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, generator=g) * torch.tensor([8.0, 6.0, 3.0]), torch.randn(n, 16, generator=g)


def test_cap_is_deterministic_and_consistent():
    xyz, feats = room_points()
    a, b = voxel_pool(feats, xyz, max_tokens=1000), voxel_pool(feats.clone(), xyz.clone(), max_tokens=1000)
    for f in ('features', 'centres', 'keys', 'patch_to_voxel', 'counts'):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    full = voxel_pool(feats, xyz, max_tokens=10**9)
    M = full.num_voxels_before_cap
    assert a.num_voxels_before_cap == M > 1000 and a.keys.shape == (1000, 3) and a.features.shape == (1000, 16)
    assert int(full.counts.sum()) == 20000
    # Kept tokens are a subset of the uncapped ones, with the same values and in the same order.
    kept = torch.searchsorted(
        full.keys[:, 0] * 10**6 + full.keys[:, 1] * 10**3 + full.keys[:, 2],
        a.keys[:, 0] * 10**6 + a.keys[:, 1] * 10**3 + a.keys[:, 2],
    )
    assert torch.equal(full.keys[kept], a.keys) and (kept.diff() > 0).all()
    assert torch.equal(full.features[kept], a.features) and torch.equal(full.counts[kept], a.counts)
    # patch_to_voxel: -1 exactly for patches of dropped voxels, else the token holding the patch's key.
    old_to_new = torch.full((M,), -1)
    old_to_new[kept] = torch.arange(1000)
    assert torch.equal(a.patch_to_voxel, old_to_new[full.patch_to_voxel])
    hit = a.patch_to_voxel >= 0
    assert torch.equal(a.keys[a.patch_to_voxel[hit]], torch.round(xyz[hit].double() / 0.2).long())
    assert int(a.counts.sum()) == int(hit.sum()) < 20000
    # Seed voxel (most patches, first in key order on ties) is always kept.
    assert full.keys[int(torch.argmax(full.counts))].tolist() in a.keys.tolist()


def test_cap_covers_the_room():
    xyz, feats = room_points()
    full = voxel_pool(feats, xyz, max_tokens=10**9)
    M = full.num_voxels_before_cap
    k = M // 10
    capped = voxel_pool(feats, xyz, max_tokens=k)

    def max_gap(kept_centres):
        # Worst distance from any voxel centre (dropped ones included) to its nearest kept centre.
        return torch.cdist(full.centres.double(), kept_centres.double()).min(1).values.max().item()

    fps_gap, first_k_gap = max_gap(capped.centres), max_gap(full.centres[:k])
    # 8 x 6 x 3 m room, ~1.2k of ~12k voxels kept: sample spacing ~0.5 m; first-k in key order is a 0.8 m slab.
    assert fps_gap < 0.6, fps_gap
    assert first_k_gap > 6.0 and fps_gap < 0.15 * first_k_gap, (fps_gap, first_k_gap)


def test_farthest_point_sample_small():
    pts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [10, 0, 0], [5, 0, 0], [9, 0, 0]])
    assert farthest_point_sample(pts, 3, start=0).tolist() == [0, 2, 3]
    assert farthest_point_sample(pts, 10, start=1).tolist() == [1, 2, 3, 0, 4]


def test_empty_and_bad_inputs():
    vt = voxel_pool(torch.zeros(0, 8), torch.zeros(0, 3))
    assert vt.features.shape == (0, 8) and vt.keys.shape == (0, 3) and vt.num_voxels_before_cap == 0
    with pytest.raises(ValueError):
        voxel_pool(torch.zeros(2, 8), torch.tensor([[0.0, 0, 0], [float('nan'), 0, 0]]))
    with pytest.raises(ValueError):
        voxel_pool(torch.zeros(3, 8), torch.zeros(2, 3))


def test_scene_pipeline_counts():
    """20 views through patch_xyz + voxel_pool: every valid patch is counted once."""
    rng = np.random.default_rng(9)
    centres, oks = [], []
    for _ in range(20):
        xyz, valid = random_scene(rng)
        c, ok = patch_xyz(xyz, valid, mode='median')
        centres.append(c[ok])
        oks.append(ok)
    pts = torch.from_numpy(np.concatenate(centres))
    vt = voxel_pool(torch.randn(len(pts), 32), pts)
    assert int(vt.counts.sum()) == len(pts) == sum(int(o.sum()) for o in oks)
    assert (vt.patch_to_voxel >= 0).all() and vt.features.shape[0] <= 2560


@pytest.mark.parametrize('mode', ['nearest', 'centre'])
def test_one_pixel_patch_modes_fast_path_equals_the_full_back_projection(mode):
    from adatoken3d_node.perception.frontend import nearest_patch_xyz

    rng = np.random.default_rng(0)
    depth = rng.uniform(0.5, 3.0, (160, 160)).astype(np.float32)
    depth[rng.random((160, 160)) < 0.1] = 0.0
    K = np.array([[150.0, 0.0, 79.5], [0.0, 150.0, 79.5], [0.0, 0.0, 1.0]])
    pose = np.eye(4)
    pose[:3, 3] = [1.0, 2.0, 3.0]
    fast, fast_valid = nearest_patch_xyz(depth, K, pose, 16, mode)
    xyz, valid = backproject(depth, K, pose)
    full, full_valid = patch_xyz(xyz, valid, 16, mode)
    assert np.array_equal(fast_valid, full_valid) and np.allclose(fast, full, equal_nan=True, atol=1e-6)
    h = 5 if mode == 'centre' else 0  # patch (2, 3) of 10 px: its centre pixel, or its top-left one
    assert np.allclose(full[2 * 16 + 3], xyz[20 + h, 30 + h], equal_nan=True)
