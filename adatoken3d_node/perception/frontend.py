"""The perception front end: posed RGB-D views in, the geometry of LLaVA-3D's spatial tokens out. ROS-free.

    add_view(rgb, depth, K, pose, stamp)         per synchronised frame (perception thread)
      resize/crop to the vision tower's input (336), K adjusted exactly
      back-project to the fixed frame, one xyz per patch (24 x 24), invalid patches marked
      -> keyframe memory (bounded, keeps views that cover the scene)
    scene()                                       per query (worker thread), on a consistent snapshot
      valid patches of all views -> voxels (0.2 m) -> deterministic cap (max_spatial_tokens)
      -> SceneGeometry: images for the vision tower, patch -> token map, token centres, counts

Per-view work happens once, when a view is offered; a query only groups patches into voxels.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

from .geometry import VoxelTokens, backproject, patch_xyz, resize_crop_view, voxel_pool
from .keyframes import KeyframeMemory, KeyframePolicy, View


@dataclass(frozen=True)
class FrontEndConfig:
    image_size: int = 336  # vision tower input (CLIP ViT-L/14-336)
    patch_grid: int = 24  # patches per side: image_size / 14
    patch_xyz: str = 'nearest'  # 'nearest' (LLaVA-3D), 'centre' or 'median' (robust to depth noise)
    voxel_size: float = 0.2  # metres
    max_spatial_tokens: int = 2560
    keyframes: KeyframePolicy = KeyframePolicy()

    @classmethod
    def for_model(cls, model, **overrides) -> 'FrontEndConfig':
        """The front end a loaded Llava3D needs: its vision tower's input size and patch grid and the
        patch position mode it was trained with (model.patch_xyz); other fields default or overridden."""
        return cls(
            **{
                'image_size': model.image_size,
                'patch_grid': model.patch_grid,
                'patch_xyz': model.patch_xyz,
                **overrides,
            }
        )


@dataclass(frozen=True)
class SceneGeometry:
    """What the model needs from the scene: V views, P = patch_grid**2 patches per view."""

    images: np.ndarray  # (V, S, S, 3) uint8, ready for the vision tower's normalisation
    patch_xyz: np.ndarray  # (V, P, 3) float32 fixed-frame position per patch (NaN where invalid)
    patch_valid: np.ndarray  # (V, P) bool
    tokens: VoxelTokens  # over the valid patches in (view, patch) order; features empty (C=0)
    stamps_ns: Tuple[int, ...]  # per view
    frame_ids: Tuple[str, ...]

    @property
    def num_views(self) -> int:
        return len(self.stamps_ns)

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.centres.shape[0])

    @property
    def dropped_patches(self) -> int:
        """Patches without a valid depth: dropped, never placed at the camera centre."""
        return int((~self.patch_valid).sum())

    @property
    def newest_stamp_ns(self) -> int:
        return max(self.stamps_ns) if self.stamps_ns else 0

    def pooled_at(self, voxel_size: float) -> VoxelTokens:
        """The same valid patches grouped into voxels of another size (a coarser-voxel selection,
        model/selection.py), never more tokens than this scene has."""
        xyz = torch.from_numpy(self.patch_xyz[self.patch_valid])  # (N, 3), (view, patch) order
        return voxel_pool(torch.zeros(xyz.shape[0], 0), xyz, voxel_size, max(self.num_tokens, 1))


def nearest_patch_xyz(depth: np.ndarray, K: np.ndarray, pose: np.ndarray, grid: int, mode: str = 'nearest'):
    """patch_xyz(backproject(...), mode) for the one-pixel modes ('nearest', 'centre'), computed on
    the grid x grid sampled pixels only.

    These modes use pixel (r*p + h, c*p + h) of each patch (h = 0, or p // 2 for centre), so
    back-projecting the other p*p - 1 pixels is wasted work: sampling depth first and scaling K
    gives the same points (the pixel u = p * u_sub + h satisfies
    (u - cx) / fx == (u_sub - (cx - h)/p) / (fx/p)).
    """
    p = depth.shape[0] // grid
    h = p // 2 if mode == 'centre' else 0
    sub = np.ascontiguousarray(depth[h::p, h::p][:grid, :grid])  # (G, G)
    K_sub = np.array([[K[0, 0] / p, 0.0, (K[0, 2] - h) / p], [0.0, K[1, 1] / p, (K[1, 2] - h) / p], [0.0, 0.0, 1.0]])
    xyz, valid = backproject(sub, K_sub, pose)
    centres = np.where(valid[..., None], xyz, np.nan).reshape(grid * grid, 3).astype(np.float32)
    return centres, valid.reshape(-1)


class SceneFrontEnd:
    def __init__(self, config: FrontEndConfig = FrontEndConfig()):
        if config.image_size % config.patch_grid:
            raise ValueError(f'image_size {config.image_size} is not a multiple of patch_grid {config.patch_grid}')
        self.config = config
        self.memory = KeyframeMemory(config.keyframes)
        self._last_scene: Optional[Tuple[Tuple[View, ...], 'SceneGeometry']] = None  # memoised snapshot

    def add_view(
        self, rgb: np.ndarray, depth: np.ndarray, K: np.ndarray, pose: np.ndarray, stamp_ns: int, frame_id: str = ''
    ) -> str:
        """Offer one posed RGB-D frame (depth in metres, 0 = none); returns the keyframe decision."""
        decision = self.memory.decide(pose, stamp_ns)
        if decision.startswith('skipped'):  # most frames of a 30 Hz camera: no geometry needed
            return decision
        size, grid = self.config.image_size, self.config.patch_grid
        rgb_s, depth_s, K_s = resize_crop_view(rgb, depth, K, size)  # (S,S,3), (S,S), (3,3)
        if self.config.patch_xyz in ('nearest', 'centre'):
            centres, patch_valid = nearest_patch_xyz(depth_s, K_s, pose, grid, self.config.patch_xyz)
        else:
            xyz, valid = backproject(depth_s, K_s, pose)  # (S,S,3) fixed frame, (S,S)
            centres, patch_valid = patch_xyz(xyz, valid, grid, self.config.patch_xyz)  # (P,3), (P,)
        view = View(
            rgb=rgb_s,
            depth=depth_s,
            K=K_s,
            pose=np.asarray(pose, dtype=np.float64),
            stamp_ns=stamp_ns,
            frame_id=frame_id,
            patch_xyz=centres,
            patch_valid=patch_valid,
        )
        return self.memory.offer(view)

    def warmup(self) -> None:
        """Run the per-view geometry once on a blank frame (not stored): the first real frame then
        does not pay for torch's lazy kernel set-up and is not late."""
        size = self.config.image_size
        depth = np.ones((size, size), np.float32)
        K = np.array([[size, 0.0, size / 2], [0.0, size, size / 2], [0.0, 0.0, 1.0]])
        rgb_s, depth_s, K_s = resize_crop_view(np.zeros((size, size, 3), np.uint8), depth, K, size)
        nearest_patch_xyz(depth_s, K_s, np.eye(4), self.config.patch_grid)
        xyz, valid = backproject(depth_s, K_s, np.eye(4))
        patch_xyz(xyz, valid, self.config.patch_grid, self.config.patch_xyz)
        self.scene(())

    def scene(self, views: Optional[Tuple[View, ...]] = None) -> SceneGeometry:
        """Voxel tokens of a consistent snapshot of the memory (or of the given views).

        Memoised on the views themselves: queries about an unchanged memory reuse the last result
        instead of pooling and capping again (views are immutable, so identity is enough).
        """
        views = self.memory.snapshot() if views is None else views
        cached = self._last_scene
        if cached is not None and len(cached[0]) == len(views) and all(a is b for a, b in zip(cached[0], views)):
            return cached[1]
        scene = self._build_scene(views)
        self._last_scene = (views, scene)
        return scene

    def _build_scene(self, views: Tuple[View, ...]) -> SceneGeometry:
        return build_scene_geometry(
            np.stack([v.rgb for v in views]) if views else None,
            np.stack([v.patch_xyz for v in views]) if views else None,
            np.stack([v.patch_valid for v in views]) if views else None,
            tuple(v.stamp_ns for v in views),
            tuple(v.frame_id for v in views),
            self.config,
        )


def build_scene_geometry(
    images: Optional[np.ndarray],
    patch_xyz_all: Optional[np.ndarray],
    patch_valid: Optional[np.ndarray],
    stamps_ns: Tuple[int, ...],
    frame_ids: Tuple[str, ...],
    config: FrontEndConfig,
) -> SceneGeometry:
    """Views' per-patch geometry -> SceneGeometry (what scene() returns; training uses it directly).
    images (V, S, S, 3) uint8, patch_xyz_all (V, P, 3), patch_valid (V, P); None for no views."""
    size, patches = config.image_size, config.patch_grid**2
    if images is None or len(images) == 0:
        empty = voxel_pool(torch.zeros(0, 0), torch.zeros(0, 3), config.voxel_size, config.max_spatial_tokens)
        return SceneGeometry(
            np.zeros((0, size, size, 3), np.uint8),
            np.zeros((0, patches, 3), np.float32),
            np.zeros((0, patches), bool),
            empty,
            (),
            (),
        )
    xyz = torch.from_numpy(patch_xyz_all[patch_valid])  # (N, 3) valid patches only
    tokens = voxel_pool(torch.zeros(xyz.shape[0], 0), xyz, config.voxel_size, config.max_spatial_tokens)
    return SceneGeometry(images, patch_xyz_all, patch_valid, tokens, tuple(stamps_ns), tuple(frame_ids))
