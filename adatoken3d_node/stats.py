"""Small running statistics for /diagnostics: message rates and latency percentiles. ROS-free."""

import collections
import threading
import time
from typing import Deque, Dict, Optional, Tuple

import numpy as np


class RateMeter:
    """Arrival rate over a sliding window, safe to feed from callbacks on any thread."""

    def __init__(self, window_s: float = 5.0):
        self.window_s = window_s
        self._times: Deque[float] = collections.deque()
        self._lock = threading.Lock()
        self.count = 0
        self.last_stamp_ns: Optional[int] = None

    def tick(self, stamp_ns: Optional[int] = None, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._times.append(now)
            self.count += 1
            if stamp_ns is not None:
                self.last_stamp_ns = stamp_ns
            self._trim(now)

    def rate_hz(self, now: Optional[float] = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            if len(self._times) < 2:
                return 0.0
            return (len(self._times) - 1) / max(self._times[-1] - self._times[0], 1e-9)

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()


class LatencyStats:
    """Latency percentiles and deadline hit rate over the last `window` answered queries."""

    def __init__(self, window: int = 200):
        self._samples: Deque[Tuple[float, bool]] = collections.deque(maxlen=window)
        self._lock = threading.Lock()
        self.answered = 0
        self.failed = 0

    def add(self, total_ms: float, deadline_met: bool, success: bool) -> None:
        with self._lock:
            if success:
                self.answered += 1
                self._samples.append((total_ms, deadline_met))
            else:
                self.failed += 1

    def summary(self) -> Dict[str, float]:
        with self._lock:
            if not self._samples:
                return {}
            totals = np.array([s[0] for s in self._samples])
            hits = np.array([s[1] for s in self._samples])
        return {
            'latency_p50_ms': float(np.percentile(totals, 50)),
            'latency_p95_ms': float(np.percentile(totals, 95)),
            'latency_max_ms': float(totals.max()),
            'deadline_hit_rate': float(hits.mean()),
        }


PROBLEM_LOG_PERIOD_S = 10.0  # each kind of bad input is logged at most once in this long


class ProblemLog:
    """Log each kind of problem at most once per period, counting the rest (no log flood from bad input)."""

    def __init__(self, period_s: float = PROBLEM_LOG_PERIOD_S):
        self.period_s = period_s
        self._last: Dict[str, float] = {}
        self.counts: Dict[str, int] = collections.Counter()
        self._suppressed: Dict[str, int] = collections.Counter()
        self._lock = threading.Lock()

    def report(self, kind: str, now: Optional[float] = None) -> Optional[str]:
        """Count one occurrence; returns a suffix to log with it when it should be logged, else None."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self.counts[kind] += 1
            last = self._last.get(kind)
            if last is not None and now - last < self.period_s:
                self._suppressed[kind] += 1
                return None
            self._last[kind] = now
            suppressed, self._suppressed[kind] = self._suppressed[kind], 0
        return f' ({suppressed} more since the last report)' if suppressed else ''
