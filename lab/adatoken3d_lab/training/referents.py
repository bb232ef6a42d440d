"""Deep supervision of the first attention hop: what a question's words refer to. ROS-free, training only.

Every answer needs two hops: the words that name objects ("cylinder", "red box", a location
token) find the spatial tokens of those objects, then the answer position reads the words. With
only the answer to learn from, a language model trained from scratch sits at the answer priors
for thousands of steps, because neither hop pays off before the other exists. ReferentProbe
gives the first hop its own signal: after PROBE_LAYER layers, the hidden state at every naming
token predicts facts about its referents (linear heads, not saved):

    count      how many objects it names (0-8)
    when it names exactly one:
    colour, shape, cell (3 x 3 grid), top (its top's height, 5 cm bins),
    near_colour, near_shape (the object nearest to it)

The second hop (the answer position reading a word a fixed distance back) forms in tens of
steps once the first carries the answer.

Counting needs objects, not tokens: an object covers from a handful to dozens of spatial tokens.
ObjectStartProbe gives the spatial tokens themselves a signal: after OBJECT_START_LAYER layers,
every spatial token on an object says whether it is the first of its object in the sequence (no
earlier token shows the same object), so that a word can count the objects it names by the
starts among its tokens.

CountProbe reads, after COUNT_LAYER layers, how many objects a word that can name several of them
("boxes", "red" alone) names, with the classes balanced: the referent probe's count head learns
mostly from "colour shape" names, which always name one object.

RunningCountProbe reads, after RUNNING_LAYER layers at every spatial token, how many objects of
each shape have started (ObjectStartProbe) at or before it. The last spatial token then holds the
scene's counts, a fixed distance before a question's words, and every token gives the counting
circuit a label, where CountProbe gets one per question.

All four supervise what the hidden states hold, never where attention goes: the gate's scores
stay the model's own. Probes holds them and gives training one loss. What each probe changed is
measured in the model card (models/README.md, "Ablations behind the recipe").
"""

from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..synthetic import COLOUR_NAMES, SHAPES, SceneObject
from . import questions
from .dataset import token_objects

PROBE_LAYER = 2  # the hidden states after this many layers (of 6)
OBJECT_START_LAYER = 1  # ObjectStartProbe's
COUNT_LAYER = 4  # CountProbe's: after the object starts, with layers to gather them
COUNT_WEIGHT = 0.3  # CountProbe's loss against the others': at 1 it crowds out the other families
RUNNING_LAYER = 3  # RunningCountProbe's: after the object starts, before CountProbe reads the words
MAX_COUNT = 8
TOP_BIN_M, TOP_FROM_M, TOP_BINS = 0.05, 0.2, 9
IGNORE = -100


class ReferentProbe(nn.Module):
    def __init__(self, hidden: int, tokenizer):
        super().__init__()
        sizes = {
            'count': MAX_COUNT + 1,
            'colour': len(COLOUR_NAMES),
            'shape': len(SHAPES),
            'cell': len(questions.CELLS),
            'top': TOP_BINS,
            'near_colour': len(COLOUR_NAMES),
            'near_shape': len(SHAPES),
        }
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, n) for name, n in sizes.items()})
        token = lambda word: questions.word_token(tokenizer, word)  # noqa: E731
        self.colour_ids = {token(c): c for c in COLOUR_NAMES if token(c) is not None}
        self.shape_ids = {
            token(form): s for s in SHAPES for form in (s, questions.plural(s)) if token(form) is not None
        }
        self.accuracy = {}

    def referents(
        self, ids: Sequence[int], points: Sequence, objects: Sequence[SceneObject], location_id: int
    ) -> List[Tuple[int, List[int]]]:
        """(position, indices of the objects it names) for each naming token of a question's ids: a
        shape word (with the colour word before it, if any), a colour word not followed by a shape
        word, a location token (the objects at its point)."""
        out, point = [], 0
        for i, token in enumerate(ids):
            if token == location_id:
                at = token_objects(objects, np.asarray(points[point], dtype=np.float64)[None])[0]
                out.append((i, [int(at)] if at >= 0 else []))
                point += 1
            elif token in self.shape_ids:
                colour = self.colour_ids.get(ids[i - 1]) if i else None
                out.append(
                    (
                        i,
                        [
                            k
                            for k, o in enumerate(objects)
                            if o.shape == self.shape_ids[token] and colour in (None, o.colour_name)
                        ],
                    )
                )
            elif token in self.colour_ids and not (i + 1 < len(ids) and ids[i + 1] in self.shape_ids):
                out.append((i, [k for k, o in enumerate(objects) if o.colour_name == self.colour_ids[token]]))
        return out

    def targets(self, named: Sequence[int], objects: Sequence[SceneObject]) -> dict:
        """Each head's class for one naming token (IGNORE where it names not exactly one object)."""
        target = dict.fromkeys(self.heads, IGNORE)
        target['count'] = min(len(named), MAX_COUNT)
        if len(named) != 1:
            return target
        obj = objects[named[0]]
        target.update(
            colour=obj.colour_index,
            shape=obj.shape_index,
            cell=questions.CELLS.index(questions.cell(*obj.centre[:2])),
            top=int(np.clip((questions.top(obj) - TOP_FROM_M) // TOP_BIN_M, 0, TOP_BINS - 1)),
        )
        others = [o for o in objects if o is not obj]
        if others:
            near = min(others, key=lambda o: np.linalg.norm(np.subtract(o.centre, obj.centre)))
            target.update(near_colour=near.colour_index, near_shape=near.shape_index)
        return target

    def loss(
        self,
        hidden: torch.Tensor,
        names: Sequence[Tuple[int, int, Sequence[int], int]],
        objects_of: Sequence[Sequence[SceneObject]],
    ) -> torch.Tensor:
        """hidden (N, Ts, D): the states after PROBE_LAYER over each question's suffix; names: (question,
        position, objects named, token id) of every naming token (referents); objects_of[n]: the scene
        of question n -> summed cross-entropy of the heads over every naming token.
        self.accuracy: each head's share of right classes in this call (for the training log)."""
        rows, cols, targets = [], [], {name: [] for name in self.heads}
        for n, position, named, _ in names:
            rows.append(n)
            cols.append(position)
            for name, value in self.targets(named, objects_of[n]).items():
                targets[name].append(value)
        if not rows:
            return hidden.sum() * 0.0
        states = hidden[rows, cols]  # (K, D)
        total, self.accuracy = 0.0, {}
        for name, head in self.heads.items():
            target = torch.tensor(targets[name])
            asked = target != IGNORE
            if asked.any():
                logits = head(states)
                total = total + F.cross_entropy(logits, target, ignore_index=IGNORE)
                self.accuracy[name] = float((logits.detach().argmax(-1) == target)[asked].float().mean())
        return total


class ObjectStartProbe(nn.Module):
    """At every spatial token on an object: is it the first token of that object in the sequence?
    (A linear head, not saved; see the module docstring.)"""

    def __init__(self, hidden: int):
        super().__init__()
        self.head = nn.Linear(hidden, 1)
        self.accuracy = {}

    @staticmethod
    def starts(on: np.ndarray) -> np.ndarray:
        """on (M,) object index of each token in sequence order (-1: floor, wall) -> (M,) bool: the
        first token of each object."""
        first = np.zeros(len(on), dtype=bool)
        objects, index = np.unique(on, return_index=True)
        first[index[objects >= 0]] = True
        return first

    def loss(self, hidden: torch.Tensor, on_of: Sequence[np.ndarray]) -> torch.Tensor:
        """hidden (B, M, D): the states after OBJECT_START_LAYER over each scene's spatial tokens,
        on_of[b] (M,) their objects -> binary cross-entropy over the tokens on objects, the starts
        weighing as much as the rest together. self.accuracy['start']: share of tokens right."""
        total, right, counted = 0.0, 0, 0
        for states, on in zip(hidden, on_of):
            on = np.asarray(on)
            target = torch.from_numpy(self.starts(on)[on >= 0]).float()
            if not len(target):
                continue
            logits = self.head(states[torch.from_numpy(on >= 0)]).squeeze(-1)
            # (clamped: a scene whose every object shows as one token has no rest to weigh against)
            weight = torch.where(target > 0, (1 - target).sum().clamp(min=1) / target.sum(), torch.ones_like(target))
            total = total + (
                F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction='sum') / weight.sum()
            )
            right += int(((logits.detach() > 0).float() == target).sum())
            counted += len(target)
        self.accuracy = {'start': right / counted} if counted else {}
        return total / max(len(on_of), 1) if counted else hidden.sum() * 0.0


class CountProbe(nn.Module):
    """At every word that can name several objects (a plural shape word, a colour word alone), after
    COUNT_LAYER layers: how many objects it names (0-MAX_COUNT), the classes balanced in each batch.
    The referent probe's count head learns mostly from "colour shape" names, which always name one
    object; this one learns only where counts vary. (A linear head, not saved.)"""

    def __init__(self, hidden: int, tokenizer):
        super().__init__()
        self.head = nn.Linear(hidden, MAX_COUNT + 1)
        token = lambda word: questions.word_token(tokenizer, word)  # noqa: E731
        self.several_ids = {token(word) for word in [*map(questions.plural, SHAPES), *COLOUR_NAMES]} - {None}
        self.accuracy = {}

    def loss(self, hidden: torch.Tensor, names: Sequence[Tuple[int, int, Sequence[int], int]]) -> torch.Tensor:
        """hidden (N, Ts, D) after COUNT_LAYER; names: (question, position, objects named, token id)
        of every naming token (ReferentProbe.referents) -> class-balanced cross-entropy of the count
        at the words that can name several objects. self.accuracy: 'many' (right counts there),
        'many2' (of counts of two or more)."""
        chosen = [(n, at, min(len(named), MAX_COUNT)) for n, at, named, token in names if token in self.several_ids]
        if not chosen:
            self.accuracy = {}
            return hidden.sum() * 0.0
        rows, cols, target = zip(*chosen)
        target = torch.tensor(target)
        logits = self.head(hidden[list(rows), list(cols)])  # (K, MAX_COUNT + 1)
        frequency = torch.bincount(target, minlength=MAX_COUNT + 1).float()
        weight = torch.where(frequency > 0, len(target) / (frequency.clamp(min=1) * (frequency > 0).sum()), 0.0)
        right = logits.detach().argmax(-1) == target
        self.accuracy = {'many': float(right.float().mean())}
        if (target >= 2).any():
            self.accuracy['many2'] = float(right[target >= 2].float().mean())
        return F.cross_entropy(logits, target, weight=weight)


class RunningCountProbe(nn.Module):
    """At every spatial token, after RUNNING_LAYER layers: for each shape, how many objects of that
    shape have started (ObjectStartProbe.starts) at or before it in the sequence (0-MAX_COUNT).
    (A linear head, not saved; see the module docstring.)"""

    def __init__(self, hidden: int):
        super().__init__()
        self.head = nn.Linear(hidden, len(SHAPES) * (MAX_COUNT + 1))
        self.accuracy = {}

    @staticmethod
    def running(on: np.ndarray, objects: Sequence[SceneObject]) -> np.ndarray:
        """on (M,) object of each token in sequence order -> (M, len(SHAPES)) objects of each shape
        started at or before each token."""
        starts = ObjectStartProbe.starts(on)
        shape = np.array([objects[i].shape_index if i >= 0 else -1 for i in on])
        return np.stack([np.cumsum(starts & (shape == s)) for s in range(len(SHAPES))], axis=1)

    def loss(
        self, hidden: torch.Tensor, on_of: Sequence[np.ndarray], scene_objects: Sequence[Sequence[SceneObject]]
    ) -> torch.Tensor:
        """hidden (B, M, D): the states after RUNNING_LAYER over each scene's spatial tokens, on_of[b]
        (M,) their objects, scene_objects[b] scene b's objects -> cross-entropy of every token's count
        of every shape. self.accuracy: 'running' (share of counts right), 'running_last' (at the
        last spatial token: the scene's counts)."""
        total, right, counted, right_last, last = 0.0, 0, 0, 0, 0
        for states, on, objects in zip(hidden, on_of, scene_objects):
            target = torch.from_numpy(np.minimum(self.running(np.asarray(on), objects), MAX_COUNT))  # (M, S)
            logits = self.head(states).view(len(states), len(SHAPES), MAX_COUNT + 1)
            total = total + F.cross_entropy(logits.flatten(0, 1), target.flatten())
            hit = logits.detach().argmax(-1) == target
            right, counted = right + int(hit.sum()), counted + hit.numel()
            right_last, last = right_last + int(hit[-1].sum()), last + hit.shape[1]
        self.accuracy = {'running': right / counted, 'running_last': right_last / last} if counted else {}
        return total / max(len(on_of), 1)


class Probes(nn.Module):
    """Every probe of the language model's hidden states (training only, not saved), one loss."""

    def __init__(self, hidden: int, tokenizer):
        super().__init__()
        self.referent = ReferentProbe(hidden, tokenizer)
        self.starts = ObjectStartProbe(hidden)
        self.count = CountProbe(hidden, tokenizer)
        self.running = RunningCountProbe(hidden)

    @property
    def accuracy(self) -> dict:
        """Each head's share right in the last loss call (for the training log)."""
        return {**self.referent.accuracy, **self.starts.accuracy, **self.count.accuracy, **self.running.accuracy}

    def naming_tokens(
        self, prompts, asked: Sequence[str], objects_of: Sequence[Sequence[SceneObject]]
    ) -> List[Tuple[int, int, List[int], int]]:
        """(question, position in its suffix, objects named, token id) of every token of the asked
        questions that names objects (ReferentProbe.referents), objects_of[n] the scene of question n."""
        from adatoken3d_node.model.llava3d import LOCATION_TOKEN_INDEX

        names = []
        for n, question in enumerate(asked):
            ids, points = prompts.suffix(question)
            names += [
                (n, at, named, ids[at])
                for at, named in self.referent.referents(ids, points, objects_of[n], LOCATION_TOKEN_INDEX)
            ]
        return names

    def loss(
        self,
        suffix_states,
        prefix_states,
        spatial_from: int,
        prompts,
        qas: Sequence[questions.QA],
        objects_of: Sequence[Sequence[SceneObject]],
        on_of: Sequence[np.ndarray],
    ) -> torch.Tensor:
        """suffix_states, prefix_states: the LLM's hidden states (tuples, one per layer) over the
        questions (N, Ts, D) and over their B scenes' shared prefixes (B, Tp, D), whose spatial tokens
        start at spatial_from; objects_of[n]: question n's scene, on_of[b]: scene b's spatial tokens'
        objects -> the running-count, referent and object-start probes' losses plus COUNT_WEIGHT x the
        count probe's."""
        names = self.naming_tokens(prompts, [qa.question for qa in qas], objects_of)
        scene_objects = objects_of[:: len(qas) // len(on_of)]  # each scene's questions are consecutive
        return (
            self.running.loss(prefix_states[RUNNING_LAYER][:, spatial_from:], on_of, scene_objects)
            + self.referent.loss(suffix_states[PROBE_LAYER], names, objects_of)
            + self.starts.loss(prefix_states[OBJECT_START_LAYER][:, spatial_from:], on_of)
            + COUNT_WEIGHT * self.count.loss(suffix_states[COUNT_LAYER], names)
        )
