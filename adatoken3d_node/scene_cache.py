"""The query engine's scene prefix cache: one cached scene prefix (model/scene_qa.ScenePrefix) for the
loaded model, which snapshot of the scene memory it is of and how out of date that is. ROS-free; used on
the query worker thread only (AnswerPipeline answers on it and refreshes it when the worker is idle).

Memory is bounded: the cached prefix, plus the one being built while it is built (the old one is
dropped only when the new one is complete, so a question can still use it meanwhile); clear() frees it.
"""

import time
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from .model.gating_policy import GatingPolicy
from .model.scene_qa import SceneAnswerer, ScenePrefix


@dataclass(frozen=True)
class PrefixCacheConfig:
    """What the node's parameters say about the cache (parameters.PARAMETERS)."""

    enabled: bool = True
    refresh: bool = True  # prefill a changed scene's prefix while no question waits
    refresh_min_interval_ms: float = 200.0
    max_scene_age_ms: float = 0.0  # how long after the scene memory changed a prefix may still be used
    # room after the prefix in each cache for a question and its answer; a longer one grows it once
    reserve_tokens: int = 96

    @classmethod
    def from_parameters(cls, config, policy: GatingPolicy) -> 'PrefixCacheConfig':
        """On when the parameter says so and something can use it: a gating that does not depend on the
        question (its prefix is what a question runs), or a default latency budget (which may choose the
        dense prefix over pruning). A question-guided gating without a budget runs as it says, uncached."""
        return cls(
            config['prefix_cache'] and (policy.question_independent or config['latency_budget_ms'] > 0),
            config['prefix_refresh'],
            config['prefix_refresh_min_interval_ms'],
            config['max_scene_age_ms'],
            64 + config['max_new_tokens'],
        )


class ScenePrefixCache:
    def __init__(self, answerer: SceneAnswerer, frontend, policy: GatingPolicy, config: PrefixCacheConfig):
        """policy: the node's gating when it is question independent (its selection is cached), else
        dense: a hit then answers as the dense model would."""
        self.answerer = answerer
        self.frontend = frontend
        self.policy = policy if policy.question_independent else answerer.policy('none')
        self.config = config
        self.prefix: Optional[ScenePrefix] = None
        self._revision = -1  # of the scene memory when the prefix's snapshot was taken
        self.hits = self.misses = self.refreshes = self.abandoned = 0
        self.last_refresh = float('-inf')  # time.monotonic() of the last refresh started

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def snapshot(self) -> Tuple[int, object]:
        """(memory revision, scene): the revision is read first, so a view arriving in between makes the
        prefix look older than it is, never newer."""
        return self.frontend.memory.revision, self.frontend.scene()

    def usable(self, scene) -> Optional[Tuple[ScenePrefix, float]]:
        """The cached prefix a question about the current `scene` may be answered on, with the age of its
        scene in ms (0: it is the current scene; else how long ago the memory changed after it), or None."""
        prefix = self.prefix
        if prefix is None or not self.enabled:
            return None
        if prefix.scene is scene:
            return prefix, 0.0
        changed = self.frontend.memory.changed_since(self._revision)
        age_ms = 0.0 if changed is None else (time.monotonic() - changed) * 1e3
        return (prefix, age_ms) if age_ms <= self.config.max_scene_age_ms else None

    def is_current(self, scene) -> bool:
        return self.prefix is not None and self.prefix.scene is scene

    def build(self, revision: int, scene, abandon=None) -> Optional[ScenePrefix]:
        """Prefill the prefix of this snapshot and keep it in place of the old one; None when abandoned."""
        built = self.answerer.build_prefix(scene, self.policy, self.config.reserve_tokens, abandon)
        if built is not None:
            self.prefix, self._revision = built, revision
        return built

    def clear(self) -> None:
        self.prefix = None

    def values(self) -> Dict[str, str]:
        """For /diagnostics."""
        prefix = self.prefix
        return {
            'prefix_cache.enabled': str(self.enabled).lower(),
            'prefix_cache.hits': str(self.hits),
            'prefix_cache.misses': str(self.misses),
            'prefix_cache.refreshes': str(self.refreshes),
            'prefix_cache.refreshes_abandoned': str(self.abandoned),
            'prefix_cache.tokens': str(prefix.num_tokens if prefix else 0),
            'prefix_cache.views': str(prefix.scene.num_views if prefix else 0),
            'prefix_cache.memory_mb': f'{prefix.nbytes / 2**20:.1f}' if prefix else '0.0',
            'prefix_cache.gating': str(self.policy),
        }
