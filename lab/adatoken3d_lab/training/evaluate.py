"""Exact-match accuracy of a LLaVA-3D on synthetic scene questions, through the node's own answer path. ROS-free.

Each scene's questions are drawn with a generator seeded by the scene seed, so every policy (and
every run) is asked exactly the same questions about exactly the same spatial tokens.
"""

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import numpy as np

from adatoken3d_node.perception.frontend import FrontEndConfig
from . import questions
from .dataset import SceneRecord

EVAL_QUESTIONS_PER_FAMILY = 2
MAX_ANSWER_TOKENS = 8


def normalise(text: str) -> str:
    return ' '.join(text.lower().replace('.', ' ').split())


def is_correct(answer: str, truth: str) -> bool:
    """Exact match after lower-casing and dropping full stops and extra spaces."""
    return normalise(answer) == normalise(truth)


def scene_questions(record: SceneRecord, per_family: int = EVAL_QUESTIONS_PER_FAMILY) -> List[questions.QA]:
    return questions.sample(record.objects, np.random.default_rng(record.seed), per_family)


@dataclass
class Accuracy:
    correct: Dict[str, int] = field(default_factory=lambda: defaultdict(int))  # per family
    asked: Dict[str, int] = field(default_factory=lambda: defaultdict(int))
    kind_correct: Dict[str, int] = field(default_factory=lambda: defaultdict(int))  # per template (QA.kind)
    kind_asked: Dict[str, int] = field(default_factory=lambda: defaultdict(int))
    flops: float = 0.0
    flops_dense: float = 0.0
    kept_share: List[float] = field(default_factory=list)
    wrong: List[tuple] = field(default_factory=list)  # (scene seed, question, truth, answer), first few
    outcomes: List[bool] = field(default_factory=list)  # every answer, in the order asked (paired comparisons)
    scenes: List[int] = field(default_factory=list)  # the scene seed of each
    selection_flops: float = 0.0  # before the language model (in flops too)

    def add(self, qa: questions.QA, answer, seed: int) -> None:
        ok = is_correct(answer.text, qa.answer)
        self.correct[qa.family] += ok
        self.asked[qa.family] += 1
        self.kind_correct[qa.kind] += ok
        self.kind_asked[qa.kind] += 1
        self.flops += answer.prefill_flops
        self.flops_dense += answer.prefill_flops_dense
        self.kept_share.append(answer.spatial_tokens_kept / max(answer.spatial_tokens, 1))
        self.outcomes.append(ok)
        self.scenes.append(seed)
        self.selection_flops += answer.selection_flops
        if not ok and len(self.wrong) < 20:
            self.wrong.append((seed, qa.question, qa.answer, answer.text))

    def family(self, name: str) -> float:
        return self.correct[name] / self.asked[name] if self.asked[name] else float('nan')

    @property
    def overall(self) -> float:
        return sum(self.correct.values()) / max(sum(self.asked.values()), 1)

    @property
    def flops_reduction(self) -> float:
        return 1.0 - self.flops / self.flops_dense if self.flops_dense else 0.0

    def summary(self) -> dict:
        return {
            'overall': round(self.overall, 4),
            'questions': sum(self.asked.values()),
            'flops_reduction': round(self.flops_reduction, 4),
            'mean_spatial_kept_share': round(float(np.mean(self.kept_share)), 4) if self.kept_share else 1.0,
            'selection_flops_share': round(self.selection_flops / self.flops_dense, 5) if self.flops_dense else 0.0,
            'families': {
                f: {'accuracy': round(self.family(f), 4), 'questions': self.asked[f]} for f in questions.FAMILIES
            },
            'kinds': {
                k: {'accuracy': round(self.kind_correct[k] / self.kind_asked[k], 4), 'questions': self.kind_asked[k]}
                for kinds in questions.KINDS.values()
                for k in kinds
                if self.kind_asked[k]
            },
        }


def evaluate(
    answerer,
    records: Sequence[SceneRecord],
    config: FrontEndConfig,
    policies: Dict[str, object],
    per_family: int = EVAL_QUESTIONS_PER_FAMILY,
) -> Dict[str, Accuracy]:
    """answerer: model.scene_qa.SceneAnswerer; policies: label -> GatingPolicy. Every record's full
    view set, every policy on the same questions; returns label -> Accuracy."""
    results = {label: Accuracy() for label in policies}
    for record in records:
        scene = record.geometry(config)
        for qa in scene_questions(record, per_family):
            for label, policy in policies.items():
                answer = answerer.answer(qa.question, scene, policy, MAX_ANSWER_TOKENS)
                results[label].add(qa, answer, record.seed)
    return results
