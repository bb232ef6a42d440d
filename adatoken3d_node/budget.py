"""Choosing how hard to prune so that an answer fits a latency budget. ROS-free.

A query's time is   queue (already spent) + scene + vision + prefill(kept tokens) + decode(n tokens),
n = the answer length planned for: the 90th percentile of the recent answers' lengths, capped by the
request's max_new_tokens (which it is until 8 answers were seen). The cost model predicts each term
for the loaded model on this device:

    vision_ms                    a running mean of what was observed: CLIP runs once per new keyframe
                                 (features are cached), so it is about one view's CLIP time or less
    prefill_ms = a * linear GFLOP + a' * attention GFLOP + b + c * cuts
                                 from the token counts that would run in each layer: projections and
                                 MLP grow with n, attention with n^2 and runs at another speed on most
                                 kernels; cuts = pruning layers (scoring, top-k, gathers cost a little
                                 each); one least-squares fit covers dense and every pruned shape
    decode_ms  = (n - 1) * (c + d * cache_tokens / 1000)   per generated token after the first,
                                 cache_tokens = mean cache length

It is fitted at configure from a short warm-up sweep over prompt lengths (dense and pruned prefills
of synthetic embeddings, and questions against their caches: the cached-prefix path) and refitted
online from every answered query (a sliding window). How much later than predicted the budgeted
answers were ready, from the decision on (everything the terms do not model included), sets the safety
margin (its 98th percentile, in ms); the error of each term is reported in /diagnostics.

With a calibrated frontier (`gating: auto` and a profile that has one, calibrate.py), the controller
picks among the frontier's policies: the least pruned whose predicted total fits the time the budget
has left less the safety margin, never one keeping fewer than `min_keep_ratio` of the spatial tokens;
when none fits, the least late, or the least pruned predicted within 10% of it (the frontier's last
points differ little in time and much in their answers: a near tie is decided by the answers). A
selection before the language model adds its own running mean time (k-centre's picks are sequential).
Without a frontier it prunes with one family of schedules, cuts at L/4, L/2 and 3L/4 keeping r^(1/3),
r^(2/3) and r of the spatial tokens (the AdaToken-3D shape), and picks the largest keep ratio r, never
below `min_keep_ratio`; when even that floor does not fit, it runs at the floor. Such a query is
answered late: deadline_met (measured) says so.
"""

import collections
import math
import threading
from dataclasses import dataclass
from typing import Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .model.flops import LlamaShape, extend_flops, prefill_flops
from .model.gating_policy import GatingPolicy, parse_gating, quarter_layers, ratio_count, selection_count, with_raters


TERMS = ('vision', 'prefill', 'decode')  # what a prediction is made of (Prediction), errors tracked per term
LENGTH_QUANTILE = 0.9  # of the recent answers' lengths, planned for (CostModel.planned_new_tokens)
MIN_LENGTHS = 8  # answers seen before their lengths are trusted over max_new_tokens
LATE_QUANTILE = 0.98  # of how late answers were against their prediction, kept free (CostModel.safety_margin_ms)
INITIAL_MARGIN = 0.10  # of the time left, kept free until a few budgeted answers were seen
MARGIN_LIMITS = (0.05, 0.60)  # the margin, as shares of the time left
NEAR_TIE = 0.10  # late frontier policies predicted within this share of the least late: the least pruned runs


def budget_schedule(num_layers: int, keep_ratio: float, raters: str = 'last') -> str:
    """The schedule family the controller picks from: stage i of k keeps keep_ratio^(i/k), the tokens
    scored by `raters` (gating.RATERS)."""
    layers = quarter_layers(num_layers)
    k = len(layers)
    return with_raters(
        'schedule:' + ','.join(f'{layer}:{keep_ratio ** ((i + 1) / k):.4f}' for i, layer in enumerate(layers)), raters
    )


def tokens_per_layer(num_layers: int, text: int, spatial: int, keep_ratio: float) -> List[int]:
    """Tokens entering each layer under budget_schedule(num_layers, keep_ratio)."""
    layers = quarter_layers(num_layers)
    counts, n = [], text + spatial
    for layer in range(num_layers):
        if layer in layers:
            stage = layers.index(layer) + 1
            ratio = round(keep_ratio ** (stage / len(layers)), 4)
            n = text + ratio_count(ratio, spatial)
        counts.append(n)
    return counts


def planned_tokens_per_layer(policy: GatingPolicy, num_layers: int, text: int, spatial: int) -> List[int] | None:
    """Tokens entering each layer under a policy whose counts do not depend on the scores (any but mass
    and voxel, whose counts depend on the scene): a selection first, then the in-LM cuts."""
    if not policy.has_fixed_counts:
        return None
    entering = selection_count(policy.pre.amount, spatial) if policy.pre is not None else spatial
    counts, n = [], entering
    for layer in range(num_layers):
        if layer in policy.layers:
            n = min(n, ratio_count(policy.ratios[policy.layers.index(layer)], entering))
        counts.append(text + n)
    return counts


def prefill_features(shape: LlamaShape, counts: Sequence[int]) -> np.ndarray:
    """(linear GFLOP, attention GFLOP, 1, cuts) of a prefill with counts[i] tokens entering layer i."""
    q_dim = shape.num_heads * shape.head_dim
    attention = sum(4.0 * n * n * q_dim for n in counts)
    linear = prefill_flops(shape, list(counts)) - attention
    return np.array([linear / 1e9, attention / 1e9, 1.0, cuts_of(counts)])


def extend_features(shape: LlamaShape, m: int, cached: int) -> np.ndarray:
    """prefill_features of m question tokens prefilled against a cached scene prefix of `cached` tokens
    (the cache-hit path): the same regression covers it, with attention over m x (cached + m)."""
    attention = 4.0 * m * (cached + m) * shape.num_heads * shape.head_dim * shape.num_layers
    linear = extend_flops(shape, m, cached) - attention
    return np.array([linear / 1e9, attention / 1e9, 1.0, 0.0])


def cuts_of(counts: Sequence[int]) -> int:
    """Pruning layers in a run: where fewer tokens enter than the layer before."""
    return sum(1 for before, after in zip(counts, counts[1:]) if after < before)


@dataclass
class Observation:
    prefill_features: np.ndarray  # prefill_features(shape, tokens per layer)
    prefill_ms: float
    decode_tokens: int
    mean_cache_tokens: float
    decode_ms: float


class CostModel:
    """Predicts prefill and decode time from token counts; refitted from observations (thread-safe)."""

    def __init__(self, shape: LlamaShape, window: int = 64):
        self.shape = shape
        self._obs: Deque[Observation] = collections.deque(maxlen=window)
        self._lock = threading.Lock()
        self.prefill_coef = np.zeros(4)  # ms per linear GFLOP, per attention GFLOP, ms, ms per cut
        self.decode_coef = (0.0, 0.0)  # ms per token, ms per token per 1000 cached tokens
        self._vision_ms: Optional[float] = None  # running mean of observed vision times
        self._selection_ms: dict = {}  # selection method -> running mean of its observed times
        self._errors: Deque[float] = collections.deque(maxlen=window)  # (actual - predicted) / actual
        self._late_ms: Deque[float] = collections.deque(maxlen=window)  # actual - predicted, from the decision on
        self._unmodelled: Deque[float] = collections.deque(maxlen=window)  # ms outside the predicted terms
        self._term_errors = {term: collections.deque(maxlen=window) for term in TERMS}  # |actual - predicted| ms
        self._lengths: Deque[Tuple[int, bool]] = collections.deque(maxlen=window)  # (tokens, cut by its limit)

    # ---------------------------------------------------------------- fitting
    def add(self, obs: Observation) -> None:
        with self._lock:
            self._obs.append(obs)
            self._fit()

    def add_vision_time(self, vision_ms: float) -> None:
        # (the scene snapshot's time is spent before the controller decides: it is never predicted)
        with self._lock:
            first = self._vision_ms is None
            self._vision_ms = vision_ms if first else 0.7 * self._vision_ms + 0.3 * vision_ms

    def add_selection_time(self, method: str, selection_ms: float) -> None:
        with self._lock:
            before = self._selection_ms.get(method)
            self._selection_ms[method] = selection_ms if before is None else 0.7 * before + 0.3 * selection_ms

    def selection_ms(self, method: Optional[str]) -> float:
        return self._selection_ms.get(method, 0.0) if method else 0.0

    def _fit(self) -> None:
        obs = list(self._obs)
        # Recent observations weigh more (half weight 8 observations back): the fit follows the
        # machine as it is now (other load, clocks), not as it was during the configure-time sweep.
        w = np.sqrt(0.917 ** np.arange(len(obs))[::-1])
        y = np.array([o.prefill_ms for o in obs]) * w
        X = np.stack([o.prefill_features for o in obs]) * w[:, None]
        # Least squares with no negative cost: a feature whose coefficient comes out negative (noise,
        # collinearity) is dropped and the rest refitted, rather than clipped (which skews the others).
        active = list(range(X.shape[1]))
        coef = np.zeros(X.shape[1])
        while active:
            sub = X[:, active]
            if np.linalg.matrix_rank(sub) < len(active):
                active.pop()  # too few distinct shapes for all features yet
                continue
            fit = np.linalg.lstsq(sub, y, rcond=None)[0]
            if (fit >= 0).all():
                coef[active] = fit
                break
            active.pop(int(np.argmin(fit)))
        self.prefill_coef = coef
        steps = [o for o in obs if o.decode_tokens > 0]
        if steps:
            per_token = np.array([o.decode_ms / o.decode_tokens for o in steps])
            cache = np.array([o.mean_cache_tokens / 1000 for o in steps])
            if len(set(cache.tolist())) > 1:
                d, c = np.polyfit(cache, per_token, 1)
                self.decode_coef = (max(c, 0.0), max(d, 0.0))
            else:
                self.decode_coef = (float(per_token.mean()), 0.0)

    # ---------------------------------------------------------------- predicting
    def prefill_ms(self, counts: Sequence[int]) -> float:
        return float(self.prefill_coef @ prefill_features(self.shape, counts))

    def extend_ms(self, m: int, cached: int) -> float:
        """A question's m tokens against a cached prefix of `cached` tokens."""
        return float(self.prefill_coef @ extend_features(self.shape, m, cached))

    def decode_ms(self, new_tokens: int, cache_tokens: float) -> float:
        c, d = self.decode_coef
        return max(new_tokens - 1, 0) * (c + d * cache_tokens / 1000)  # the first token comes from prefill

    def vision_ms(self) -> float:
        return self._vision_ms or 0.0

    def add_answer_length(self, tokens: int, limited: bool) -> None:
        """An answer's generated tokens; limited: it was cut by its max_new_tokens (it would have been longer)."""
        with self._lock:
            self._lengths.append((tokens, limited))

    def planned_new_tokens(self, max_new_tokens: int) -> int:
        """The answer length to plan for: the 90th percentile of the recent answers' lengths, an answer cut by
        its limit counting as max_new_tokens (it might have gone on), never more than max_new_tokens; until 8
        answers were seen, max_new_tokens. Planning for max_new_tokens when answers are two tokens long
        prices decoding an order of magnitude too high and prunes for nothing."""
        with self._lock:
            seen = list(self._lengths)
        if len(seen) < MIN_LENGTHS:
            return max_new_tokens
        values = [max_new_tokens if limited else tokens for tokens, limited in seen]
        return int(min(max_new_tokens, max(1, math.ceil(np.quantile(values, LENGTH_QUANTILE)))))

    def record_error(
        self, predicted: 'Prediction', vision_ms: float, prefill_ms: float, decode_ms: float, elapsed_ms: float
    ) -> None:
        """A budgeted answer's measured terms against its prediction (prefill_ms with any selection's time);
        elapsed_ms: the whole time from the decision to the answer being ready, which also holds what no
        term models (the snapshot's checks, other threads holding the interpreter, building the answer)."""
        with self._lock:
            if elapsed_ms > 0:
                self._errors.append((elapsed_ms - predicted.total_ms) / elapsed_ms)
            self._late_ms.append(elapsed_ms - predicted.total_ms)
            for term, actual, guess in zip(TERMS, (vision_ms, prefill_ms, decode_ms), predicted.terms):
                self._term_errors[term].append(abs(actual - guess))
            self._unmodelled.append(elapsed_ms - (vision_ms + prefill_ms + decode_ms))

    def term_errors_ms(self) -> Dict[str, Optional[float]]:
        """Mean |actual - predicted| ms of each term over the recent budgeted answers."""
        with self._lock:
            return {term: float(np.mean(e)) if e else None for term, e in self._term_errors.items()}

    def unmodelled_ms(self) -> Optional[float]:
        """Mean time of the recent budgeted answers outside the predicted terms (ms)."""
        with self._lock:
            return float(np.mean(self._unmodelled)) if self._unmodelled else None

    def mean_relative_error(self) -> Optional[float]:
        """Mean |actual - predicted| / actual of the budgeted queries' time from the decision on."""
        with self._lock:
            return float(np.mean(np.abs(self._errors))) if self._errors else None

    def safety_margin_ms(self, remaining_ms: float) -> float:
        """How far under the time left to aim: the LATE_QUANTILE of how much later than predicted the recent
        budgeted answers were ready (ms; the time from the decision on, so what no term models counts), within
        MARGIN_LIMITS of the time left (INITIAL_MARGIN of it until 3 budgeted answers were seen). The
        lateness is additive on a busy machine (another thread holding the interpreter while a view
        arrives), so it is kept in ms, not as a share of the prediction."""
        with self._lock:
            late = list(self._late_ms)
        if len(late) < 3:
            return INITIAL_MARGIN * remaining_ms
        low, high = MARGIN_LIMITS
        return float(np.clip(np.quantile(late, LATE_QUANTILE), low * remaining_ms, high * remaining_ms))

    def late_ms(self) -> Optional[float]:
        """The LATE_QUANTILE of the recent budgeted answers' lateness (ms), None before any."""
        with self._lock:
            return float(np.quantile(self._late_ms, LATE_QUANTILE)) if self._late_ms else None


@dataclass(frozen=True)
class Prediction:
    """A query's time from the moment it is decided, by term, as the cost model predicts it (ms)."""

    vision_ms: float
    prefill_ms: float  # a selection's own time included
    decode_ms: float
    new_tokens: int  # the answer length planned for (CostModel.planned_new_tokens)

    @property
    def terms(self) -> Tuple[float, float, float]:
        return self.vision_ms, self.prefill_ms, self.decode_ms

    @property
    def model_ms(self) -> float:
        return self.prefill_ms + self.decode_ms

    @property
    def total_ms(self) -> float:
        return self.vision_ms + self.model_ms


@dataclass(frozen=True)
class BudgetDecision:
    keep_ratio: float
    policy_text: str  # the schedule to run ('none' when nothing needs pruning)
    prediction: Prediction
    fits: bool  # False: even the floor is predicted to miss the budget
    reuse_prefix: bool = False  # answer on the cached scene prefix (dense, only the question prefilled)

    @property
    def predicted_ms(self) -> float:  # from now: vision + prefill + decode
        return self.prediction.total_ms

    @property
    def predicted_model_ms(self) -> float:  # prefill + decode
        return self.prediction.model_ms


class BudgetController:
    def __init__(
        self, cost: CostModel, min_keep_ratio: float = 0.1, raters: str = 'last', frontier: Sequence[str] = ()
    ):
        """raters: who scores the spatial tokens in the schedules it picks (the node passes its gating's);
        frontier: calibrated policies to pick from instead, least pruned first (profiles.frontier_gatings)."""
        self.cost = cost
        self.min_keep_ratio = min_keep_ratio
        self.raters = raters
        L = cost.shape.num_layers
        policies = [parse_gating(text, L) for text in frontier]
        self.frontier = [p for p in policies if p.has_fixed_counts]

    def predict_counts(self, counts: Sequence[int], new_tokens: int, selection: Optional[str] = None) -> Prediction:
        """counts[l] tokens entering layer l after a selection of this method, an answer of at most
        new_tokens (planned as CostModel.planned_new_tokens)."""
        cost = self.cost
        n = cost.planned_new_tokens(new_tokens)
        prefill = cost.prefill_ms(counts) + cost.selection_ms(selection)
        return Prediction(cost.vision_ms(), prefill, cost.decode_ms(n, float(np.mean(counts)) + n / 2), n)

    def _decide_on_frontier(self, remaining_ms: float, text: int, spatial: int, new_tokens: int):
        """The first frontier policy (least pruned first) predicted to fit among those keeping at least
        min_keep_ratio of the spatial tokens, else the least pruned of them predicted within NEAR_TIE of
        the least late; None when none keeps that much."""
        L = self.cost.shape.num_layers
        late = []  # least pruned first
        for policy in self.frontier:
            counts = planned_tokens_per_layer(policy, L, text, spatial)
            share = (counts[-1] - text) / spatial
            if share < self.min_keep_ratio:
                continue
            predicted = self.predict_counts(counts, new_tokens, policy.pre and policy.pre.method)
            decision = BudgetDecision(share, str(policy), predicted, predicted.total_ms <= remaining_ms)
            if decision.fits:
                return decision
            late.append(decision)
        if not late:
            return None
        soonest = min(d.predicted_ms for d in late)
        return next(d for d in late if d.predicted_ms <= soonest * (1 + NEAR_TIE))

    def predict(self, keep_ratio: float, text: int, spatial: int, new_tokens: int) -> Prediction:
        """A query at this keep ratio of budget_schedule (the scene snapshot is taken before deciding: its
        time is already spent, not predicted)."""
        L = self.cost.shape.num_layers
        counts = tokens_per_layer(L, text, spatial, keep_ratio) if keep_ratio < 1 else [text + spatial] * L
        return self.predict_counts(counts, new_tokens)

    def predict_hit(self, question_tokens: int, cached_tokens: int, new_tokens: int) -> Prediction:
        """An answer on a cached scene prefix: no vision, the question's prefill, decoding."""
        cost = self.cost
        n = cost.planned_new_tokens(new_tokens)
        cache = cached_tokens + question_tokens + n / 2
        return Prediction(0.0, cost.extend_ms(question_tokens, cached_tokens), cost.decode_ms(n, cache), n)

    def decide(
        self,
        remaining_ms: float,
        text: int,
        spatial: int,
        new_tokens: int,
        cached_tokens: Optional[int] = None,
        question_tokens: int = 0,
    ) -> BudgetDecision:
        """The least pruning predicted to finish within remaining_ms (the budget minus the time already
        spent on this query: queue and scene snapshot). With a cached scene prefix of cached_tokens
        (question_tokens after it), its dense answer when that is predicted to fit, or to be the least late."""
        # Aim under the time left: the prediction is a mean, and publishing the answer after the model
        # is done takes a few ms the cost model does not see.
        remaining_ms = remaining_ms - self.cost.safety_margin_ms(remaining_ms)
        if cached_tokens is None:
            return self._decide_recompute(remaining_ms, text, spatial, new_tokens)
        predicted = self.predict_hit(question_tokens, cached_tokens, new_tokens)
        hit = BudgetDecision(1.0, 'none', predicted, predicted.total_ms <= remaining_ms, reuse_prefix=True)
        if hit.fits:
            return hit
        recompute = self._decide_recompute(remaining_ms, text, spatial, new_tokens)
        return recompute if recompute.fits or recompute.predicted_ms < hit.predicted_ms else hit

    def _decide_recompute(self, remaining_ms: float, text: int, spatial: int, new_tokens: int) -> BudgetDecision:
        L = self.cost.shape.num_layers
        dense = self.predict(1.0, text, spatial, new_tokens)
        if dense.total_ms <= remaining_ms or spatial == 0:
            return BudgetDecision(1.0, 'none', dense, dense.total_ms <= remaining_ms)
        on_frontier = self._decide_on_frontier(remaining_ms, text, spatial, new_tokens) if self.frontier else None
        if on_frontier is not None:
            return on_frontier
        floor = self.predict(self.min_keep_ratio, text, spatial, new_tokens)
        if floor.total_ms > remaining_ms:
            return BudgetDecision(
                self.min_keep_ratio, budget_schedule(L, self.min_keep_ratio, self.raters), floor, False
            )
        lo, hi = self.min_keep_ratio, 1.0  # predicted time grows with the keep ratio: bisect
        for _ in range(20):
            mid = (lo + hi) / 2
            if self.predict(mid, text, spatial, new_tokens).total_ms <= remaining_ms:
                lo = mid
            else:
                hi = mid
        return BudgetDecision(
            lo, budget_schedule(L, lo, self.raters), self.predict(lo, text, spatial, new_tokens), True
        )
