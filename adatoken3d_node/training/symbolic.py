"""Stage 0 of training: the language model learns to answer about symbolic scenes. ROS-free.

LLaVA-3D starts from a pretrained LLM (Vicuna) that already knows how to find, in its context,
the words a question refers to and read them out. This model's LLaMA starts from random weights,
and with only answers to learn from it sits at the answer priors for thousands of steps: every
answer needs two attention hops (the question word finds the spatial tokens it refers to, the
answer position reads them), and neither hop pays off before the other exists.

Stage 0 forms those hops where they are cheap. A symbolic scene is the same question-answering
task with the vision part replaced by its ideal output: each spatial token is

    token = E[colour word] + E[shape word] + POSITION_SCALE * position(xyz)    on an object
          = background + POSITION_SCALE * position(xyz)                         floor or wall

(E: the LLM's own input embeddings, position: a small MLP of the token's world point). There is
no rendering and no vision tower, the scenes are few tokens long and many are batched: the LLM
sees dozens of scenes per second instead of three. Even so, answers alone leave it at the answer
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

from ..synthetic import COLOUR_NAMES, ROOM_HALF_M, SHAPES, WALL_HEIGHT_M, SceneObject
from . import questions
from .dataset import token_objects

TOKENS_PER_SCENE = 96           # rendered scenes (8 views) have ~520 tokens, 12-36% of them on objects
TOKENS_PER_OBJECT = (2, 7)      # [low, high) tokens on each object
# At initialisation a word embedding has norm ~0.25 and the position MLP's output ~4: scaled to about
# the words' size, neither drowns the other (what an object is matters to every family).
POSITION_SCALE = 0.05


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

    def forward(self, xyz: torch.Tensor, on: torch.Tensor, objects: Sequence[SceneObject],
                words: torch.Tensor) -> torch.Tensor:
        """xyz (M, 3) world points, on (M,) object index or -1, words (V, D) the LLM's input
        embeddings -> (M, D) tokens."""
        colour = torch.tensor([o.colour_index for o in objects] or [0])
        shape = torch.tensor([o.shape_index for o in objects] or [0])
        index = on.clamp(min=0)
        named = words[self.colour_ids[colour[index]]] + words[self.shape_ids[shape[index]]]      # (M, D)
        base = torch.where((on >= 0)[:, None], named, self.background.expand_as(named))
        return base + POSITION_SCALE * self.position(xyz)


def symbolic_scene(objects: Sequence[SceneObject], rng: np.random.Generator,
                   count: int = TOKENS_PER_SCENE) -> Tuple[torch.Tensor, torch.Tensor]:
    """Token points of a symbolic scene -> xyz (count, 3), on (count,): a few points inside each
    object, the rest on the walls and on the floor clear of the objects, in random order."""
    points, on = [], []
    for i, obj in enumerate(objects):
        k = int(rng.integers(*TOKENS_PER_OBJECT))
        # within a quarter of the size of the centre: inside a box, sphere or cylinder alike
        points.append(np.asarray(obj.centre) + rng.uniform(-0.25, 0.25, (k, 3)) * np.asarray(obj.size))
        on += [i] * k
    background = []
    while len(on) + len(background) < count:
        p = np.array([*rng.uniform(-ROOM_HALF_M, ROOM_HALF_M, 2), 0.0])
        if rng.random() < 0.5:    # a wall
            p[int(rng.integers(2))] = rng.choice([-ROOM_HALF_M, ROOM_HALF_M])
            p[2] = rng.uniform(0, WALL_HEIGHT_M)
        elif any(np.hypot(*(p[:2] - o.centre[:2])) < o.footprint_radius + 0.1 for o in objects):
            continue              # floor under an object: a rendered scene sees the object there
        background.append(p)
    points.append(np.reshape(background, (-1, 3)))
    on += [-1] * len(background)
    order = rng.permutation(len(on))[:count]
    return (torch.tensor(np.concatenate(points)[order], dtype=torch.float32),
            torch.tensor(on, dtype=torch.long)[order])


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


def alignment_loss(spatial: torch.Tensor, symbolic: SymbolicTokens, objects: Sequence[SceneObject], scene,
                   words: torch.Tensor) -> torch.Tensor:
    """Stage 1: a rendered scene's spatial tokens (M, D) regress onto the symbolic tokens of the
    objects they lie on at their centres (relative squared error; the targets are held fixed)."""
    centres = scene.tokens.centres.float()
    on = torch.from_numpy(token_objects(objects, centres.numpy()))
    with torch.no_grad():
        target = symbolic(centres, on, objects, words)                                    # (M, D)
    return F.mse_loss(spatial, target) / target.pow(2).mean()
