"""Synthetic scene-QA data: seeded room scenes rendered as posed RGB-D, run through the node's front end. ROS-free.

    seed -> make_scene(seed, unique=True)          2-8 objects, no colour+shape twice
         -> room_frames(...)                        8 posed RGB-D views from a camera walking around
                                                    the inside of a closed room, depth defects on
         -> SceneFrontEnd.add_view (as the node)    resize/crop to the vision tower's input, patch xyz
         -> SceneRecord                             per-view images and patch geometry + the objects

Splits are disjoint by scene seed (SPLITS) and say how their scenes are drawn (SPLIT_KINDS): train,
val and test in the standard style (or train and val as TRAINING_MIX, a mix of standard, randomised and
cluttered rooms); shifted in room styles the training never saw; clutter with 12-25 small objects. A record's spatial
tokens are built per use with frontend.build_scene_geometry, so training can drop views (a different
token set each epoch).
"""

import dataclasses
import multiprocessing
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from adatoken3d_node.perception.frontend import FrontEndConfig, SceneFrontEnd, SceneGeometry, build_scene_geometry
from adatoken3d_node.perception.keyframes import KeyframePolicy
from ..synthetic import ROOM_HALF_M, SceneObject, make_scene, room_frames, sample_style

# First scene seed of each split; a split of n scenes uses seeds first .. first + n - 1.
SPLITS = {'train': 0, 'val': 1_000_000, 'test': 2_000_000, 'shifted': 3_000_000, 'clutter': 4_000_000}
VIEWS_PER_SCENE = 8
MIN_OBJECT_SIZE_M = 0.25


@dataclass(frozen=True)
class SceneKind:
    """How a split's scenes are drawn (synthetic.py): which objects, how many views, which room style."""

    objects: Optional[Tuple[int, int]] = None  # inclusive range of objects a scene; None: make_scene's 2-8
    min_size_m: float = MIN_OBJECT_SIZE_M
    max_size_m: float = 0.6
    shade_jitter: float = 0.0
    views: int = VIEWS_PER_SCENE
    max_range_m: float = 4.5
    room_half_m: float = ROOM_HALF_M
    style: str = 'standard'  # standard, or synthetic.sample_style's 'randomised' or 'held_out' settings


STANDARD_KIND = SceneKind()
# Any room style but the held-out ones (synthetic.sample_style), other shades and sizes.
RANDOMISED_KIND = SceneKind(min_size_m=0.2, max_size_m=0.7, shade_jitter=0.15, style='randomised')
# 12-25 small objects (several of a colour, several of a shape) in a larger room, seen from 16 views,
# the whole room in range: 1500+ spatial tokens
CLUTTER_KIND = SceneKind(objects=(12, 25), min_size_m=0.12, max_size_m=0.3, views=16, max_range_m=9.0, room_half_m=4.5)


@dataclass(frozen=True)
class SceneMix:
    """A split drawn from several kinds: each scene's kind is picked by its seed, with these weights."""

    kinds: Tuple[Tuple[SceneKind, float], ...]

    def kind_for(self, seed: int) -> SceneKind:
        weights = np.array([w for _, w in self.kinds], float)
        pick = np.random.default_rng([seed, 3]).choice(len(self.kinds), p=weights / weights.sum())
        return self.kinds[int(pick)][0]


# Rooms of every kind, so that a model reads the scene rather than one renderer (train.py --rooms mixed):
# standard rooms, rooms in randomised styles, and cluttered rooms in randomised styles.
TRAINING_MIX = SceneMix(
    (
        (STANDARD_KIND, 0.25),
        (RANDOMISED_KIND, 0.6),
        (dataclasses.replace(CLUTTER_KIND, shade_jitter=0.15, style='randomised'), 0.15),
    )
)
SPLIT_KINDS = {
    'train': STANDARD_KIND,  # what the shipped model learns from; train.py --rooms mixed: TRAINING_MIX
    'val': STANDARD_KIND,
    'test': STANDARD_KIND,
    # rooms drawn with settings the training never saw (synthetic.sample_style), other shades and sizes
    'shifted': SceneKind(min_size_m=0.2, max_size_m=0.7, shade_jitter=0.15, style='held_out'),
    'clutter': CLUTTER_KIND,
}
# Camera resolutions the scenes are rendered at (4:3, like most RGB-D cameras); the front end
# scales them to the vision tower's input, so the model sees both the same way.
RENDER_SIZES = ((214, 160), (320, 240))
THREAD_VARIABLES = ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS')


@dataclass
class SceneRecord:
    seed: int
    objects: List[SceneObject]
    images: np.ndarray  # (V, S, S, 3) uint8, resized/cropped for the vision tower
    patch_xyz: np.ndarray  # (V, P, 3) float32 world frame, NaN where invalid
    patch_valid: np.ndarray  # (V, P) bool

    def patch_objects(self, reach_m: float = 0.05) -> np.ndarray:
        """(V, P) int64: the object each patch's 3D point lies on, -1 for floor, wall or no depth."""
        out = np.full(self.patch_valid.shape, -1, dtype=np.int64)
        out[self.patch_valid] = token_objects(self.objects, self.patch_xyz[self.patch_valid], reach_m)
        return out

    def geometry(self, config: FrontEndConfig, views: Sequence[int] = None) -> SceneGeometry:
        """Spatial-token geometry of these views (all by default), as the node's front end builds it."""
        idx = list(range(len(self.images))) if views is None else sorted(views)
        # (stamp, frame) names a view: SceneAnswerer caches CLIP features under it, so it must
        # differ between scenes.
        return build_scene_geometry(
            self.images[idx],
            self.patch_xyz[idx],
            self.patch_valid[idx],
            tuple(idx),
            (f'synthetic_scene_{self.seed}',) * len(idx),
            config,
        )


def signed_distance(points: np.ndarray, obj: SceneObject) -> np.ndarray:
    """Signed distance (m, negative inside) of points (N, 3) to the object's surface."""
    p = points - np.asarray(obj.centre)
    if obj.shape == 'sphere':
        return np.linalg.norm(p, axis=1) - obj.size[0] / 2
    if obj.shape == 'box':
        q = np.abs(p) - np.asarray(obj.size) / 2
        return np.linalg.norm(np.maximum(q, 0.0), axis=1) + np.minimum(q.max(axis=1), 0.0)
    q = np.stack([np.hypot(p[:, 0], p[:, 1]) - obj.size[0] / 2, np.abs(p[:, 2]) - obj.size[2] / 2], axis=1)
    return np.linalg.norm(np.maximum(q, 0.0), axis=1) + np.minimum(q.max(axis=1), 0.0)


def token_objects(objects: Sequence[SceneObject], centres: np.ndarray, reach_m: float = 0.08) -> np.ndarray:
    """Index of the object each spatial token lies on (its centre within reach_m of the surface),
    -1 for floor and walls. centres (M, 3) -> (M,) int64. Training's auxiliary labels."""
    if not len(objects):
        return np.full(len(centres), -1, dtype=np.int64)
    distance = np.stack([signed_distance(centres, o) for o in objects], axis=1)  # (M, n_objects)
    nearest = distance.argmin(axis=1)
    return np.where(distance[np.arange(len(centres)), nearest] < reach_m, nearest, -1)


def scene_objects(seed: int, kind: SceneKind = STANDARD_KIND) -> List[SceneObject]:
    """The objects of the room of this seed, drawn as `kind` says (what render_scene renders)."""
    n_objects = (
        None if kind.objects is None else int(np.random.default_rng([seed, 2]).integers(*kind.objects, endpoint=True))
    )
    return make_scene(
        seed,
        n_objects,
        unique=True,
        min_size_m=kind.min_size_m,
        max_size_m=kind.max_size_m,
        shade_jitter=kind.shade_jitter,
    )


def render_scene(seed: int, config: FrontEndConfig, kind: SceneKind = STANDARD_KIND) -> SceneRecord:
    objects = scene_objects(seed, kind)
    style = {}
    if kind.style != 'standard':
        drawn = sample_style(np.random.default_rng([seed, 1]), held_out=kind.style == 'held_out')
        style = dict(zip(('style', 'path', 'depth_defects'), drawn))
    width, height = RENDER_SIZES[seed % len(RENDER_SIZES)]
    frames = room_frames(
        objects,
        n_views=kind.views,
        width=width,
        height=height,
        seed=seed,
        defects=True,
        max_range_m=kind.max_range_m,
        room_half_m=kind.room_half_m,
        **style,
    )
    # Every view is kept: the keyframe thresholds are the node's, and these views are far apart.
    front = SceneFrontEnd(dataclasses.replace(config, keyframes=KeyframePolicy(max_views=kind.views)))
    for f in frames:
        front.add_view(f.rgb, f.depth.astype(np.float32) / 1000.0, f.K, f.pose, f.stamp_ns)
    views = front.memory.snapshot()
    return SceneRecord(
        seed,
        objects,
        np.stack([v.rgb for v in views]),
        np.stack([v.patch_xyz for v in views]),
        np.stack([v.patch_valid for v in views]),
    )


def _render_job(args: Tuple[int, FrontEndConfig, SceneKind]) -> SceneRecord:
    import torch

    torch.set_num_threads(1)  # one process per core does the parallelism
    return render_scene(*args)


def render_split(
    split: str, count: int, config: FrontEndConfig, processes: int = 0, kind: Union[SceneKind, SceneMix, None] = None
) -> List[SceneRecord]:
    """count scenes of a split, rendered in `processes` worker processes (0: one per CPU core), drawn as
    the split's SPLIT_KINDS entry says, or as `kind`."""
    first = SPLITS[split]
    kind = kind or SPLIT_KINDS[split]
    kinds = [kind.kind_for(first + i) if isinstance(kind, SceneMix) else kind for i in range(count)]
    jobs = [(first + i, config, k) for i, k in enumerate(kinds)]
    processes = processes or multiprocessing.cpu_count()
    if processes == 1 or count < 8:
        return [render_scene(*job) for job in jobs]
    # One thread per worker process (numpy's BLAS reads these when the worker imports it).
    saved = {k: os.environ.get(k) for k in THREAD_VARIABLES}
    os.environ.update({k: '1' for k in THREAD_VARIABLES})
    try:
        with multiprocessing.get_context('spawn').Pool(processes) as pool:
            return pool.map(_render_job, jobs, chunksize=8)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
