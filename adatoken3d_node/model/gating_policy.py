"""Gating policies: which spatial tokens a prefill drops, and where. Torch-free; gating.py runs them.

Policies (`parse_gating(text, num_layers)`; `str(policy)` gives the canonical text back):

    none                              dense
    schedule:8:0.5,16:0.25,24:0.125   at the input of layer Li keep ceil(ri * N0) spatial tokens, N0 = the
                                      ORIGINAL spatial count (layers increasing, ratios non-increasing)
    random:8:0.5,16:0.25              same counts, chosen uniformly at random (prefill's `seed`)
    fastv:2:0.5                       one cut at the input of layer K keeping ceil(r * N0)
    mass:0.9                          at layers L//4, L//2, 3L//4 keep the smallest set of the surviving
    mass:0.9@8,16,24[min=0.05,max=1.0]  spatial tokens holding >= p of their score mass, clamped to
                                      [ceil(min * N0), ceil(max * N0)] (defaults 0.05 and 1.0)
    <any scored policy>~question      score with the question's rows, not only the last token's (below)

ceil(r * N0) is taken after rounding r * N0 to 6 decimals, so 0.1 * 30 keeps 3 tokens, not 4.
"""

import dataclasses
import math
import re
from dataclasses import dataclass

KINDS = ("none", "schedule", "mass", "fastv", "random")
RATERS = ("last", "question")  # whose attention scores the spatial tokens: the last prompt token's, the question's
SYNTAX = (
    "none | schedule:L:r,L:r,... | random:L:r,L:r,... | fastv:K:r | mass:p[@L,L,...][[min=a,max=b]], "
    "a scored one (schedule, fastv, mass) optionally followed by ~question"
)


@dataclass(frozen=True)
class GatingPolicy:
    kind: str = "none"  # one of KINDS
    layers: tuple[int, ...] = ()  # pruning layers: a cut happens at the input of each
    ratios: tuple[float, ...] = ()  # schedule / random / fastv: keep ratio of the ORIGINAL spatial count
    mass: float = 0.0  # mass: score mass p to keep
    min_keep: float = 0.05  # mass: bounds, as ratios of the original spatial count
    max_keep: float = 1.0
    raters: str = "last"  # one of RATERS: the rows of the score (module docstring)

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        object.__setattr__(self, "ratios", tuple(float(x) for x in self.ratios))
        if self.kind not in KINDS:
            raise ValueError(f"unknown gating kind {self.kind!r}; expected {SYNTAX}")
        if self.kind == "none" and self.layers:
            raise ValueError("'none' has no pruning layers")
        if self.kind != "none" and not self.layers:
            raise ValueError(f"{self.kind} needs at least one pruning layer")
        if any(b <= a for a, b in zip(self.layers, self.layers[1:])):
            raise ValueError(f"pruning layers must be strictly increasing, got {list(self.layers)}")
        if self.kind in ("schedule", "random", "fastv"):
            if len(self.ratios) != len(self.layers):
                raise ValueError(f"{len(self.layers)} layers but {len(self.ratios)} ratios")
            if self.kind == "fastv" and len(self.layers) != 1:
                raise ValueError("fastv prunes once: fastv:K:keep_ratio")
            for layer, r in zip(self.layers, self.ratios):
                if not 0.0 < r <= 1.0:
                    raise ValueError(f"keep ratio {r} at layer {layer} must be in (0, 1]")
            for (l1, r1), (l2, r2) in zip(zip(self.layers, self.ratios), zip(self.layers[1:], self.ratios[1:])):
                if r2 > r1:
                    raise ValueError(
                        f"keep ratios must be non-increasing (a cut keeps a subset of the previous one), "
                        f"got {r1} at layer {l1} then {r2} at layer {l2}"
                    )
        elif self.ratios:
            raise ValueError(f"{self.kind} takes no keep ratios")
        if self.raters not in RATERS:
            raise ValueError(f"unknown raters {self.raters!r}; expected one of {', '.join(RATERS)}")
        if self.raters != "last" and self.kind in ("none", "random"):
            raise ValueError(f"{self.kind} does not score tokens, so it takes no ~{self.raters}")
        if self.kind == "mass":
            if not 0.0 < self.mass <= 1.0:
                raise ValueError(f"score mass p={self.mass} must be in (0, 1]")
            if not 0.0 <= self.min_keep <= self.max_keep <= 1.0 or self.max_keep == 0.0:
                raise ValueError(f"need 0 <= min <= max <= 1 and max > 0, got min={self.min_keep} max={self.max_keep}")

    def check_layers(self, num_layers: int) -> None:
        """ValueError unless every pruning layer is in 1..num_layers-1 (layer 0 would prune the input)."""
        for layer in self.layers:
            if not 0 < layer < num_layers:
                raise ValueError(
                    f"pruning layer {layer} is out of range: must be in 1..{num_layers - 1} "
                    f"for a {num_layers}-layer model"
                )

    def score_rows(self, spatial_mask) -> int:
        """How many of the last prompt tokens score the spatial tokens: 1 for the last token, or every
        token after the last spatial one (spatial_mask [T] bool) for the question."""
        if self.raters == "last" or not bool(spatial_mask.any()):
            return 1
        return max(1, spatial_mask.numel() - 1 - int(spatial_mask.nonzero()[-1]))

    def __str__(self) -> str:
        if self.kind == "none":
            return "none"
        if self.kind == "mass":
            at = ",".join(map(str, self.layers))
            text = f"mass:{self.mass!r}@{at}[min={self.min_keep!r},max={self.max_keep!r}]"
        else:
            text = f"{self.kind}:" + ",".join(f"{layer}:{r!r}" for layer, r in zip(self.layers, self.ratios))
        return with_raters(text, self.raters)


def with_raters(text: str, raters: str) -> str:
    """A scored policy's text with its raters written the canonical way: nothing for the default."""
    return text if raters == "last" else f"{text}~{raters}"


def parse_gating(text: str, num_layers: int) -> GatingPolicy:
    """Policy text (see the module docstring) -> GatingPolicy checked for a num_layers model, or ValueError."""
    try:
        policy = _parse(text.strip(), num_layers)
        policy.check_layers(num_layers)
        return policy
    except ValueError as e:
        raise ValueError(f"bad gating {text!r}: {e}") from None


def _parse(text: str, num_layers: int) -> GatingPolicy:
    text, tilde, raters = text.partition("~")
    policy = _parse_cuts(text.strip(), num_layers)
    return dataclasses.replace(policy, raters=raters.strip()) if tilde else policy


def _parse_cuts(text: str, num_layers: int) -> GatingPolicy:
    kind, _, rest = text.partition(":")
    if kind == "none":
        if rest:
            raise ValueError("'none' takes no arguments")
        return GatingPolicy()
    if kind in ("schedule", "random"):
        pairs = [item.split(":") for item in rest.split(",")] if rest else []
        if not pairs or any(len(p) != 2 for p in pairs):
            raise ValueError(f"expected {kind}:L1:r1,L2:r2,...")
        return GatingPolicy(kind, [_int(p[0]) for p in pairs], [_float(p[1]) for p in pairs])
    if kind == "fastv":
        parts = rest.split(":")
        if len(parts) != 2:
            raise ValueError("expected fastv:K:keep_ratio, e.g. fastv:2:0.5")
        return GatingPolicy("fastv", [_int(parts[0])], [_float(parts[1])])
    if kind == "mass":
        m = re.fullmatch(r"([^@\[\]]+)(?:@([^\[\]]+))?(?:\[([^\[\]]*)\])?", rest)
        if m is None:
            raise ValueError("expected mass:p, mass:p@L1,L2,... and/or a [min=a,max=b] suffix")
        p, at, bounds = m.groups()
        if at is not None:
            layers = [_int(x) for x in at.split(",")]
        else:
            layers = quarter_layers(num_layers)
        opts = {}
        for item in bounds.split(",") if bounds else []:
            key, eq, value = item.partition("=")
            if key.strip() not in ("min", "max") or not eq or key.strip() in opts:
                raise ValueError(f"bad bound {item!r}; expected [min=a,max=b]")
            opts[key.strip()] = _float(value)
        return GatingPolicy("mass", layers, (), _float(p), opts.get("min", 0.05), opts.get("max", 1.0))
    raise ValueError(f"unknown gating kind {kind!r}; expected {SYNTAX}")


def _int(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise ValueError(f"{s!r} is not a layer index") from None


def _float(s: str) -> float:
    try:
        x = float(s)
    except ValueError:
        raise ValueError(f"{s!r} is not a number") from None
    if not math.isfinite(x):
        raise ValueError(f"{s!r} is not a finite number")
    return x


def quarter_layers(num_layers: int) -> list[int]:
    """Layers L//4, L//2 and 3L//4 (those in 1..L-1): where `mass` cuts by default and the budget
    controller's schedules cut, a quarter, half and three quarters of the way through the model."""
    return sorted(
        {layer for layer in (num_layers // 4, num_layers // 2, 3 * num_layers // 4) if 0 < layer < num_layers}
    )


def ratio_count(ratio: float, n: int) -> int:
    """ceil(ratio * n), rounded to 6 decimals first so float noise (0.1 * 30 = 3.0000000000000004) adds no token."""
    return math.ceil(round(ratio * n, 6))
