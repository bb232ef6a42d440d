"""Stage 0 of training: the language model learns to answer about symbolic scenes. ROS-free.

LLaVA-3D starts from a pretrained LLM (Vicuna) that already knows how to find, in its context,
the words a question refers to and read them out. This model's LLaMA starts from random weights,
and with only answers to learn from it sits at the answer priors for thousands of steps: every
answer needs two attention hops (the question word finds the spatial tokens it refers to, the
answer position reads them), and neither hop pays off before the other exists.

Stage 0 forms those hops where they are cheap. A symbolic scene is the same question-answering
task with the vision part replaced by its ideal output: each spatial token is

    token = E[colour word] + E[shape word] + code(xyz)    on an object
          = background + code(xyz)                         floor or wall
    code(xyz) = POSITION_SCALE * position(xyz * (1, 1, HEIGHT_GAIN))

(E: the LLM's own input embeddings, position: a small MLP of the token's world point). An
object's tokens sit where a rendered scene's would: at the voxel means of its visible surface
(every face but the bottom), so the highest of them is near its top, as in a rendered scene,
where the top voxel predicts an object's top to 2 cm and the mean of its voxels only to 5 cm.
There is no rendering and no vision tower, the scenes are few tokens long and many are batched:
the LLM sees dozens of scenes per second instead of three. Even so, answers alone leave it at the answer
priors for a long time; with the referent probe (referents.py) it leaves them within a few
hundred steps.

Stage 1 then aligns the projector's output for a rendered scene to the symbolic tokens of the
same objects (alignment_loss), so the LLM finds the tokens it learned to read; stage 2 tunes
everything on rendered scenes. The symbolic module is a training aid: it is not saved.
"""

from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adatoken3d_node.perception.frontend import FrontEndConfig
from adatoken3d_node.perception.geometry import voxel_pool
from ..synthetic import COLOUR_NAMES, ROOM_HALF_M, SHAPES, WALL_HEIGHT_M, SceneObject
from . import questions
from .dataset import signed_distance

TOKENS_PER_SCENE = 96  # about as many object tokens as a rendered scene has, fewer of background
MIN_BACKGROUND_TOKENS = 16  # objects' voxels beyond TOKENS_PER_SCENE - this are dropped at random
SURFACE_SAMPLES = 1600  # candidate points per object, ~400 of them near its surface
SURFACE_BAND_M = 0.03  # a sample this close to the surface is on it
# At initialisation a word embedding has norm ~0.25 and the position MLP's output ~4: scaled to about
# the words' size, neither drowns the other (what an object is matters to every family).
POSITION_SCALE = 0.05
# Object tops differ by 10 cm or more in a room 6.4 m wide: in metres z is a small part of the
# position, and stage 0 ended with tops unreadable from the words that name objects (a linear readout
# no better than a constant; "is A higher than B" at chance). Height enters the position codes 8x
# stronger: the symbolic code here, and the initial weights of the 3D position embedding of the
# spatial tokens (train.build_model).
HEIGHT_GAIN = 8.0


class SymbolicTokens(nn.Module):
    """Ideal spatial tokens from object labels and world points (see the module docstring)."""

    def __init__(self, hidden: int, tokenizer):
        super().__init__()
        colour_ids = [questions.word_token(tokenizer, c) for c in COLOUR_NAMES]
        shape_ids = [questions.word_token(tokenizer, s) for s in SHAPES]
        if None in colour_ids + shape_ids:
            raise ValueError('symbolic tokens need every colour and shape word to be one token')
        self.register_buffer('colour_ids', torch.tensor(colour_ids), persistent=False)
        self.register_buffer('shape_ids', torch.tensor(shape_ids), persistent=False)
        self.background = nn.Parameter(torch.randn(hidden) * 0.02)
        self.position = nn.Sequential(nn.Linear(3, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.register_buffer('gain', torch.tensor([1.0, 1.0, HEIGHT_GAIN]), persistent=False)

    def code(self, xyz: torch.Tensor) -> torch.Tensor:
        """xyz (M, 3) world points -> (M, D) position codes (height HEIGHT_GAIN x stronger)."""
        return POSITION_SCALE * self.position(xyz * self.gain)

    def forward(
        self, xyz: torch.Tensor, on: torch.Tensor, objects: Sequence[SceneObject], words: torch.Tensor
    ) -> torch.Tensor:
        """xyz (M, 3) world points, on (M,) object index or -1, words (V, D) the LLM's input
        embeddings -> (M, D) tokens."""
        colour = torch.tensor([o.colour_index for o in objects] or [0])
        shape = torch.tensor([o.shape_index for o in objects] or [0])
        index = on.clamp(min=0)
        named = words[self.colour_ids[colour[index]]] + words[self.shape_ids[shape[index]]]  # (M, D)
        base = torch.where((on >= 0)[:, None], named, self.background.expand_as(named))
        return base + self.code(xyz)


def surface_voxels(obj: SceneObject, rng: np.random.Generator, voxel_size: float) -> np.ndarray:
    """Where a rendered scene's spatial tokens on obj would be: points on its surface but the bottom
    face, averaged per voxel like the front end's voxel pooling (keys round(xyz / voxel_size)) ->
    (K, 3) voxel means."""
    half = np.asarray(obj.size) / 2
    points = np.asarray(obj.centre) + rng.uniform(-1.0, 1.0, (SURFACE_SAMPLES, 3)) * half
    points = torch.from_numpy(
        points[
            (np.abs(signed_distance(points, obj)) < SURFACE_BAND_M)
            & (points[:, 2] > obj.centre[2] - half[2] + SURFACE_BAND_M)
        ]
    )
    # the front end's own pooling; no feature to average but the points, and no cap (a few dozen voxels)
    return voxel_pool(points, points, voxel_size, max_tokens=len(points)).centres.numpy()


def symbolic_scene(
    objects: Sequence[SceneObject], rng: np.random.Generator, count: int = TOKENS_PER_SCENE
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Token points of a symbolic scene -> xyz (count, 3), on (count,): each object's surface voxels
    (surface_voxels; at most count - MIN_BACKGROUND_TOKENS of them in all, dropped at random), the
    rest on the walls and on the floor clear of the objects, in random order."""
    voxel_size = FrontEndConfig.voxel_size
    points = [surface_voxels(obj, rng, voxel_size) for obj in objects]
    on = np.concatenate([np.full(len(p), i) for i, p in enumerate(points)] or [np.zeros(0, np.int64)])
    keep = rng.permutation(len(on))[: count - MIN_BACKGROUND_TOKENS]
    points = [np.concatenate(points or [np.zeros((0, 3))])[keep]]
    on = on[keep].tolist()
    background = []
    while len(on) + len(background) < count:
        p = np.array([*rng.uniform(-ROOM_HALF_M, ROOM_HALF_M, 2), 0.0])
        if rng.random() < 0.5:  # a wall
            p[int(rng.integers(2))] = rng.choice([-ROOM_HALF_M, ROOM_HALF_M])
            p[2] = rng.uniform(0, WALL_HEIGHT_M)
        elif any(np.hypot(*(p[:2] - o.centre[:2])) < o.footprint_radius + 0.1 for o in objects):
            continue  # floor under an object: a rendered scene sees the object there
        background.append(p)
    points.append(np.reshape(background, (-1, 3)))
    on += [-1] * len(background)
    order = rng.permutation(len(on))
    return (torch.tensor(np.concatenate(points)[order], dtype=torch.float32), torch.tensor(on, dtype=torch.long)[order])


def family_balanced(objects: Sequence[SceneObject], rng: np.random.Generator, count: int) -> List[questions.QA]:
    """count questions about a scene, each from a family drawn uniformly (among those it answers),
    then from one of that family's templates (questions.KINDS) drawn uniformly (among those it has)."""
    by_family = []
    for qas in questions.candidates(objects, rng).values():
        kinds = [[qa for qa in qas if qa.kind == kind] for kind in dict.fromkeys(qa.kind for qa in qas)]
        if kinds:
            by_family.append(kinds)
    out = []
    for _ in range(count):
        kinds = by_family[int(rng.integers(len(by_family)))]
        pool = kinds[int(rng.integers(len(kinds)))]
        out.append(pool[int(rng.integers(len(pool)))])
    return out


def alignment_loss(
    spatial: torch.Tensor,
    symbolic: SymbolicTokens,
    scene,
    on: np.ndarray,
    objects: Sequence[SceneObject],
    words: torch.Tensor,
) -> torch.Tensor:
    """Stage 1: a rendered scene's spatial tokens (M, D) regress onto the symbolic tokens of the
    objects they lie on (on (M,): dataset.token_objects of the token centres) at their centres
    (relative squared error; the targets are held fixed)."""
    with torch.no_grad():
        target = symbolic(scene.tokens.centres.float(), torch.from_numpy(on), objects, words)  # (M, D)
    return F.mse_loss(spatial, target) / target.pow(2).mean()
