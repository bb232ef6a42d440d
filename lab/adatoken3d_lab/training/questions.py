"""Questions with short exact answers about a synthetic scene (synthetic.make_scene(unique=True)). ROS-free.

Six families; the answers are the ground truth of the generated scene, in the world frame:

    attribute     What color is the cylinder? -> red          What shape is the red object? -> box
    counting      How many spheres are there? -> 2            How many blue objects are there? -> 0
    existence     Is there a green box? / Is there an orange sphere? -> yes / no
    relation      Which object is closest to the red box? -> blue sphere
                  Is the blue sphere higher than the green box? -> yes / no   (top above top)
    localisation  Where is the yellow box? -> north east      (cell of a 3 x 3 grid, below)
    location      What is at [0.8, -1.2, 0.2]? -> yellow box / nothing

Localisation cells split the object area [-2, 2] m x [-2, 2] m of the world frame into thirds;
north is +y, east is +x: "north west", "north", "north east", "west", "centre", "east", ...
Questions whose answer would hang on a few centimetres (an object on a cell border, two
objects almost as close, two tops almost level) are not asked.
"""

from dataclasses import dataclass
from collections import Counter
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

from adatoken3d_node.model.prompt import build_prompt
from ..synthetic import AREA_HALF_M, COLOURS, SHAPES, SceneObject

FAMILIES = ('attribute', 'counting', 'existence', 'relation', 'localisation', 'location')
CELL_EDGES_M = (-AREA_HALF_M / 3, AREA_HALF_M / 3)  # the two inner borders on each axis
CELL_MARGIN_M = 0.15  # an object centre this close to a cell border is not asked about
CLOSEST_MARGIN_M = 0.3  # the closest object must be this much closer than the second
HIGHER_MARGIN_M = 0.1  # tops must differ by this much
NOTHING = 'nothing'
NOTHING_CLEARANCE_M = 0.5  # a "nothing" point is this far from every object's footprint


@dataclass(frozen=True)
class QA:
    family: str
    question: str
    answer: str
    kind: str = ''  # the template within the family (KINDS), e.g. 'colour of a shape'


# The templates of each family. Training draws them evenly (symbolic.family_balanced): a scene has
# ~3 shape-colour questions for every colour-of-a-shape one, and the rare template would starve.
KINDS = {
    'attribute': ('colour of a shape', 'shape of a colour'),
    'counting': ('count a shape', 'count a colour'),
    'existence': ('present', 'absent'),
    'relation': ('closest', 'higher'),
    'localisation': ('cell',),
    'location': ('object at a point', 'nothing at a point'),
}
FAMILY_OF_KIND = {kind: family for family, kinds in KINDS.items() for kind in kinds}


COUNT_WEIGHT_CAP = 3.0  # the most a rare count's question weighs against its kind's commonest count


def count_weights(scenes: Iterable[Sequence[SceneObject]], seed: int = 0) -> Dict[Tuple[str, str], float]:
    """The answer-loss weight of each counting question (kind, answer) over these scenes' candidates:
    the square root of how much rarer the answer is than its kind's commonest, at most COUNT_WEIGHT_CAP.
    Most colours name one object and most shapes one or two, so a model that never says more than
    two is right three times in four; the weights make a count of three
    as worth learning as a count of one without flattening the prior altogether."""
    rng = np.random.default_rng(seed)
    frequency = Counter((qa.kind, qa.answer) for objects in scenes for qa in candidates(objects, rng)['counting'])
    commonest = Counter()
    for (kind, _), n in frequency.items():
        commonest[kind] = max(commonest[kind], n)
    return {
        (kind, answer): float(min(COUNT_WEIGHT_CAP, np.sqrt(commonest[kind] / n)))
        for (kind, answer), n in frequency.items()
    }


def question_weights(qas: Sequence[QA], weights: Dict[Tuple[str, str], float]) -> np.ndarray:
    """(N,) each question's answer-loss weight: count_weights' for a count, 1 for every other question
    (and for a count the table never saw)."""
    return np.array([weights.get((qa.kind, qa.answer), 1.0) if qa.family == 'counting' else 1.0 for qa in qas])


def ask(kind: str, question: str, answer: str) -> QA:
    """A question of one of the KINDS (a KeyError for any other), in that kind's family."""
    return QA(FAMILY_OF_KIND[kind], question, answer, kind)


def name(obj: SceneObject) -> str:
    return f'{obj.colour_name} {obj.shape}'


def a(words: str) -> str:
    """'a red box', 'an orange sphere'."""
    return ('an ' if words[:1] in 'aeiou' else 'a ') + words


def plural(shape: str) -> str:
    return shape + ('es' if shape == 'box' else 's')


def top(obj: SceneObject) -> float:
    return obj.centre[2] + obj.size[2] / 2


def cell(x: float, y: float) -> str:
    """The 3 x 3 cell of a world-frame point: 'north west' ... 'centre' ... 'south east'."""
    lo, hi = CELL_EDGES_M
    ns = 'north' if y >= hi else 'south' if y < lo else ''
    ew = 'east' if x >= hi else 'west' if x < lo else ''
    return f'{ns} {ew}'.strip() or 'centre'


CELLS = tuple(cell(x, y) for y in (1.5, 0.0, -1.5) for x in (-1.5, 0.0, 1.5))  # north west ... south east


def cell_margin(x: float, y: float) -> float:
    """Distance of a point to the nearest inner cell border."""
    return float(min(abs(v - e) for v in (x, y) for e in CELL_EDGES_M))


def word_token(tokenizer, word: str):
    """The one token id of ' word' (as it follows a space in a question or answer); None when the
    tokenizer splits it."""
    ids = tokenizer(' ' + word, add_special_tokens=False).input_ids
    return ids[0] if len(ids) == 1 else None


def fmt_point(p: Sequence[float]) -> str:
    return '[' + ', '.join(f'{float(v):.1f}' for v in p) + ']'


def candidates(objects: Sequence[SceneObject], rng: np.random.Generator) -> Dict[str, List[QA]]:
    """Every question of every family that this scene answers unambiguously (a few drawn at random)."""
    out: Dict[str, List[QA]] = {f: [] for f in FAMILIES}
    by_shape = {s: [o for o in objects if o.shape == s] for s in SHAPES}
    by_colour = {c: [o for o in objects if o.colour_name == c] for c in COLOURS}
    present = {(o.colour_name, o.shape) for o in objects}

    for shape, objs in by_shape.items():
        if len(objs) == 1:
            out['attribute'].append(ask('colour of a shape', f'What color is the {shape}?', objs[0].colour_name))
        out['counting'].append(ask('count a shape', f'How many {plural(shape)} are there?', str(len(objs))))
    for colour, objs in by_colour.items():
        if len(objs) == 1:
            out['attribute'].append(ask('shape of a colour', f'What shape is the {colour} object?', objs[0].shape))
        if objs or rng.random() < 0.15:  # absent colours (count 0) now and then
            out['counting'].append(ask('count a colour', f'How many {colour} objects are there?', str(len(objs))))

    absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
    for o in objects:
        out['existence'].append(ask('present', f'Is there {a(name(o))}?', 'yes'))
    for i in rng.permutation(len(absent))[: len(objects)]:
        c, s = absent[i]
        out['existence'].append(ask('absent', f'Is there {a(f"{c} {s}")}?', 'no'))

    centres = np.array([o.centre for o in objects])
    for i, o in enumerate(objects):
        if len(objects) >= 3:
            d = np.linalg.norm(centres - centres[i], axis=1)
            d[i] = np.inf
            first, second = np.argsort(d)[:2]
            if d[second] - d[first] >= CLOSEST_MARGIN_M:
                out['relation'].append(
                    ask('closest', f'Which object is closest to the {name(o)}?', name(objects[first]))
                )
        for j, other in enumerate(objects):
            if j != i and abs(top(o) - top(other)) >= HIGHER_MARGIN_M:
                out['relation'].append(
                    ask(
                        'higher',
                        f'Is the {name(o)} higher than the {name(other)}?',
                        'yes' if top(o) > top(other) else 'no',
                    )
                )
        x, y, _ = o.centre
        if cell_margin(x, y) >= CELL_MARGIN_M:
            out['localisation'].append(ask('cell', f'Where is the {name(o)}?', cell(x, y)))
        point = np.asarray(o.centre) + rng.uniform(-0.05, 0.05, 3)
        out['location'].append(ask('object at a point', f'What is at {fmt_point(point)}?', name(o)))

    for _ in range(20):  # a few floor points well clear of every object
        p = np.array([*rng.uniform(-AREA_HALF_M, AREA_HALF_M, 2), 0.0])
        if all(np.hypot(*(p[:2] - o.centre[:2])) > o.footprint_radius + NOTHING_CLEARANCE_M for o in objects):
            out['location'].append(ask('nothing at a point', f'What is at {fmt_point(p)}?', NOTHING))
            if sum(qa.answer == NOTHING for qa in out['location']) >= max(1, len(objects) // 3):
                break
    return out


def sample(objects: Sequence[SceneObject], rng: np.random.Generator, per_family: int) -> List[QA]:
    """Up to per_family questions of each family, yes and no balanced where the family has both."""
    chosen: List[QA] = []
    for family, qas in candidates(objects, rng).items():
        if family in ('existence', 'relation'):
            yes = [q for q in qas if q.answer == 'yes']
            no = [q for q in qas if q.answer == 'no']
            other = [q for q in qas if q.answer not in ('yes', 'no')]
            n = min(len(yes), len(no), per_family // 2 if other else (per_family + 1) // 2)
            pools = [(yes, n), (no, n), (other, per_family - 2 * n)]
        else:
            pools = [(qas, per_family)]
        for pool, k in pools:
            for i in rng.permutation(len(pool))[: max(k, 0)]:
                chosen.append(pool[i])
    return chosen


PROMPT_WEIGHT = 20  # copies of the node's prompt text in the tokenizer corpus (below)


def corpus() -> List[str]:
    """Every template and answer word, and the node's prompt around them, for training the tokenizer's
    merges. The prompt (llava_v1's system prompt and roles) precedes every question: PROMPT_WEIGHT
    copies make its words single tokens too (83 -> 39 tokens for a short question), which shortens
    every prefill of training and of the node."""
    lines = [build_prompt('')] * PROMPT_WEIGHT
    for c in COLOURS:
        for s in SHAPES:
            lines += [
                f'What color is the {s}? {c}',
                f'What shape is the {c} object? {s}',
                f'How many {plural(s)} are there? 3',
                f'How many {c} objects are there? 0',
                f'Is there {a(f"{c} {s}")}? yes no',
                f'Which object is closest to the {c} {s}? {c} {s}',
                f'Is the {c} {s} higher than the {c} {s}? yes',
                f'Where is the {c} {s}? north east',
                f'What is at [1.2, -0.5, 0.3]? {c} {s} {NOTHING}',
            ]
    lines += [' '.join(CELLS)]
    lines += [' '.join(str(i) for i in range(10))]
    return lines
