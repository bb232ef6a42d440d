"""Paired comparisons of policies answering the same questions: cluster bootstrap over scenes. ROS-free.

Every policy answers the same questions about the same scenes, so differences are paired: one bootstrap
resample draws scenes with replacement (the questions of a scene go together: they share its tokens and
are not independent) and scores every policy on that same draw. The 95% interval of a difference or a
ratio is then the 2.5th-97.5th percentile of that statistic over the resamples (percentile bootstrap).
"""

from dataclasses import dataclass
from typing import Dict, Sequence

import numpy as np

RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def as_json(self, scale: float = 1.0, digits: int = 4) -> dict:
        return {
            'value': round(scale * self.value, digits),
            'ci95': [round(scale * self.low, digits), round(scale * self.high, digits)],
        }


class PairedBootstrap:
    """correct: label -> (Q,) bool outcomes in one question order; scenes (Q,) the scene of each question."""

    def __init__(self, correct: Dict[str, Sequence[bool]], scenes: Sequence[int], resamples: int = RESAMPLES, seed=0):
        self.labels = list(correct)
        outcomes = np.array([np.asarray(correct[label], dtype=float) for label in self.labels])  # (P, Q)
        if outcomes.shape[1] != len(scenes):
            raise ValueError(f'{outcomes.shape[1]} outcomes but {len(scenes)} scene ids')
        ids, scene_index = np.unique(np.asarray(scenes), return_inverse=True)
        per_scene = np.zeros((len(self.labels), len(ids)))  # (P, S) right answers per scene
        np.add.at(per_scene.T, scene_index, outcomes.T)
        asked = np.bincount(scene_index, minlength=len(ids)).astype(float)  # (S,)
        draws = np.random.default_rng(seed).multinomial(len(ids), np.full(len(ids), 1 / len(ids)), size=resamples)
        self.point = outcomes.mean(1)  # (P,) accuracy on the questions asked
        self.resampled = (draws @ per_scene.T) / (draws @ asked)[:, None]  # (B, P) accuracy per resample

    def _index(self, label: str) -> int:
        return self.labels.index(label)

    @staticmethod
    def _interval(value: float, samples: np.ndarray) -> Interval:
        low, high = np.percentile(samples, [2.5, 97.5])
        return Interval(float(value), float(low), float(high))

    def accuracy(self, label: str) -> Interval:
        i = self._index(label)
        return self._interval(self.point[i], self.resampled[:, i])

    def difference(self, label: str, reference: str) -> Interval:
        """accuracy(label) - accuracy(reference), paired."""
        i, j = self._index(label), self._index(reference)
        return self._interval(self.point[i] - self.point[j], self.resampled[:, i] - self.resampled[:, j])

    def ratio(self, label: str, reference: str) -> Interval:
        """accuracy(label) / accuracy(reference), paired (resamples where the reference scores 0 are left out)."""
        i, j = self._index(label), self._index(reference)
        ok = self.resampled[:, j] > 0
        value = self.point[i] / self.point[j] if self.point[j] else float('nan')
        return self._interval(value, self.resampled[ok, i] / self.resampled[ok, j])
