"""Approximate time synchronisation of several inputs by header stamp. No ROS import here.

The fallback for `message_filters.ApproximateTimeSynchronizer` (Python, ROS 2) when that is not
importable. Like it, matching is driven by the arriving message and looks only at messages within
slop of it; the policy below is stricter about time order and memory.

Policy, for add(key, stamp, msg) with stamps in int nanoseconds:
1. Late: a stamp at or before the stamp last emitted for this key is dropped at once, so the sets
   never go back in time.
2. Queue: the message is inserted into its key's queue in stamp order (arrival order does not
   matter); one with the same stamp as a queued message replaces it. A queue above queue_size
   drops its oldest stamp (possibly the arriving message itself, which then cannot match).
3. Match: a set holds the arriving message plus exactly one queued message per other key, with
   max(stamp) - min(stamp) <= slop (message_filters uses < slop). Of all such sets, the one whose
   total |stamp - arriving stamp| is smallest is chosen: that is each key's candidate closest in
   time to the arriving message whenever those are within slop of each other (message_filters
   takes the first fitting combination of per-key candidates sorted by that distance, which agrees
   in that case); ties go to the older message. Found exactly, without trying every combination:
   each fitting set lies in a window [lo, lo + slop] that contains the arriving stamp and whose lo
   is the arriving stamp or an older candidate, and within a window the per-key closest are best.
4. Emit: the set's messages are removed, and so is every message in each key's queue that is
   older than that key's message in the set (message_filters removes only the used ones; the C++
   policy and the exact TimeSynchronizer also drop older ones). Each message is used at most once.
Only a set containing the arriving message can be new: before it arrived no set existed (any that
did was emitted then, and emitting, trimming and dropping only remove messages).

`dropped[key]` counts messages of that key discarded without being used (late, replaced, pushed
out of a full queue, older than an emitted set, or cleared). A key whose count grows while
`emitted` stays still is the "time-sync callback that never fires" case: stamps never within slop.
"""

import bisect
import threading
from typing import Any, Dict, List, Optional, Sequence


class ApproximateTimeSync:
    """Pairs one message per key whose stamps are within slop_s (seconds) of each other."""

    def __init__(self, keys: Sequence[str], slop_s: float, queue_size: int = 10):
        keys = list(keys)
        if not keys or len(set(keys)) != len(keys):
            raise ValueError(f'need one or more distinct keys, got {keys}')
        if not slop_s >= 0:
            raise ValueError(f'slop_s must be >= 0, got {slop_s}')
        if queue_size < 1:
            raise ValueError(f'queue_size must be >= 1, got {queue_size}')
        self.keys = keys
        self.slop_ns = int(round(slop_s * 1e9))
        self.queue_size = queue_size
        self._lock = threading.Lock()
        self._stamps = {k: [] for k in keys}  # sorted stamps, ns
        self._msgs = {k: [] for k in keys}  # messages, parallel to _stamps
        self._last = {k: None for k in keys}  # stamp of the last emitted message per key, ns
        self._dropped = {k: 0 for k in keys}
        self._emitted = 0

    @property
    def dropped(self) -> Dict[str, int]:
        with self._lock:
            return dict(self._dropped)

    @property
    def emitted(self) -> int:
        """Number of sets emitted so far."""
        with self._lock:
            return self._emitted

    def pending(self) -> Dict[str, int]:
        """Queue length per key."""
        with self._lock:
            return {k: len(s) for k, s in self._stamps.items()}

    def clear(self) -> None:
        """Drop all queued messages and forget the last emitted stamps (time jumped back: a bag looped)."""
        with self._lock:
            for k in self.keys:
                self._dropped[k] += len(self._stamps[k])
                self._stamps[k], self._msgs[k], self._last[k] = [], [], None

    def add(self, key: str, stamp_ns: int, msg: Any) -> List[Dict[str, Any]]:
        """Queue msg; return the sets ({key: msg}) it completed: an empty list or one set."""
        if key not in self._stamps:
            raise KeyError(f'unknown sync input {key!r} (inputs: {", ".join(self.keys)})')
        stamp_ns = int(stamp_ns)
        with self._lock:
            stamps, msgs = self._stamps[key], self._msgs[key]
            if self._last[key] is not None and stamp_ns <= self._last[key]:
                self._dropped[key] += 1
                return []
            i = bisect.bisect_left(stamps, stamp_ns)
            if i < len(stamps) and stamps[i] == stamp_ns:
                msgs[i] = msg
                self._dropped[key] += 1
            else:
                stamps.insert(i, stamp_ns)
                msgs.insert(i, msg)
            if len(stamps) > self.queue_size:
                gone = stamps.pop(0)
                msgs.pop(0)
                self._dropped[key] += 1
                if gone == stamp_ns:
                    return []
            chosen = self._match(key, stamp_ns)
            if chosen is None:
                return []
            out = {}
            for k, s in chosen.items():
                j = bisect.bisect_left(self._stamps[k], s)  # index of the used message
                out[k] = self._msgs[k][j]
                self._dropped[k] += j  # the older ones
                del self._stamps[k][: j + 1], self._msgs[k][: j + 1]
                self._last[k] = s
            self._emitted += 1
            return [out]

    def _match(self, key: str, t: int) -> Optional[Dict[str, int]]:
        """Stamps {key: stamp} of the best set containing stamp t of `key` (policy 3), or None."""
        slop = self.slop_ns
        others = [k for k in self.keys if k != key]
        near = {}
        for k in others:
            near[k] = [s for s in self._stamps[k] if abs(s - t) <= slop]
            if not near[k]:
                return None
        lows = sorted({t} | {s for k in others for s in near[k] if s < t})
        best, best_cost = None, None
        for lo in lows:  # ascending, and only a strictly lower cost replaces: ties keep older sets
            chosen = {key: t}
            for k in others:
                inside = [s for s in near[k] if lo <= s <= lo + slop]
                if not inside:
                    break
                chosen[k] = min(inside, key=lambda s: (abs(s - t), s))
            else:
                cost = sum(abs(s - t) for s in chosen.values())
                if best_cost is None or cost < best_cost:
                    best, best_cost = chosen, cost
        return best
