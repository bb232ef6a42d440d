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

Selections before the language model (selection.py runs them; a cut "at the input of layer 0"):

    random:0:0.1                      keep ceil(0.1 * M) of the M spatial tokens, chosen at random
    fastv:0:0.1                       keep the 10% layer 0's q/k score highest (the last token's row,
                                      or the question's with ~question)
    kcentre:0.1                       keep a k-centre (farthest-point) cover of the tokens in 3D
    kcentre:0.1[feature=1.5]          position and feature (feature: weight of the feature distance);
    kcentre:0.1~question              seeded with the half of them the question's layer-0 score ranks highest
    voxel:0.4                         pool the patches into 0.4 m voxels instead of the model's 0.2 m
                                      (LLaVA-3D's pooling, coarser: the honest baseline)
    <selection>[merge]                every dropped token is averaged into its nearest kept one (3D
                                      distance, feature similarity breaking ties): random, fastv, kcentre
    <selection>[near=0.5]             the tokens within 0.5 m of a point the question names ("[x, y, z]",
                                      a location prompt) are kept first, nearest first; the selection
                                      picks the rest: random, fastv, kcentre
    <selection>+<in-LM policy>        a selection, then in-LM cuts (schedule, random, fastv, mass) whose
                                      ratios are of the spatial tokens entering the language model

ceil(r * N0) is taken after rounding r * N0 to 6 decimals, so 0.1 * 30 keeps 3 tokens, not 4.
"""

import dataclasses
import math
import re
from dataclasses import dataclass

KINDS = ("none", "schedule", "mass", "fastv", "random")
SELECTIONS = ("random", "query", "kcentre", "voxel")  # before the language model; query is written fastv:0:r
KCENTRE_FEATURE_WEIGHT = 1.0  # feature distance (unit features, 0-2) against 3D distance in metres
RATERS = ("last", "question")  # whose attention scores the spatial tokens: the last prompt token's, the question's
SYNTAX = (
    "none | schedule:L:r,L:r,... | random:L:r,L:r,... | fastv:K:r | mass:p[@L,L,...][[min=a,max=b]], "
    "a scored one (schedule, fastv, mass) optionally followed by ~question; before them, a selection "
    "random:0:r | fastv:0:r | kcentre:r[feature=w] | voxel:SIZE, optionally [merge] and [near=R], "
    "then + and an in-LM policy"
)


@dataclass(frozen=True)
class Selection:
    """Which spatial tokens enter the language model at all (selection.py runs it)."""

    method: str  # one of SELECTIONS
    amount: float  # keep ratio of the spatial tokens; voxel: voxel size in metres
    merge: bool = False  # dropped tokens are averaged into their nearest kept one
    feature_weight: float = KCENTRE_FEATURE_WEIGHT  # kcentre only
    near: float = 0.0  # metres: tokens this close to a location in the question are kept first (0: off)

    def __post_init__(self):
        if self.method not in SELECTIONS:
            raise ValueError(f"unknown selection {self.method!r}; expected one of {', '.join(SELECTIONS)}")
        if self.method == "voxel":
            if not 0.0 < self.amount <= 10.0:
                raise ValueError(f"voxel size {self.amount} m must be in (0, 10]")
            if self.merge:
                raise ValueError("voxel pools every patch already: it takes no [merge]")
        elif not 0.0 < self.amount <= 1.0:
            raise ValueError(f"keep ratio {self.amount} must be in (0, 1]")
        if self.feature_weight < 0.0 or (self.method != "kcentre" and self.feature_weight != KCENTRE_FEATURE_WEIGHT):
            raise ValueError("feature=w is a kcentre option, w >= 0")
        if not 0.0 <= self.near <= 10.0 or (self.method == "voxel" and self.near):
            raise ValueError("near=R (metres, in (0, 10]) is an option of random, fastv:0 and kcentre")

    def __str__(self) -> str:
        text = {
            "random": f"random:0:{self.amount!r}",
            "query": f"fastv:0:{self.amount!r}",
            "kcentre": f"kcentre:{self.amount!r}",
            "voxel": f"voxel:{self.amount!r}",
        }[self.method]
        options = (
            (["merge"] if self.merge else [])
            + ([f"feature={self.feature_weight!r}"] if self.feature_weight != KCENTRE_FEATURE_WEIGHT else [])
            + ([f"near={self.near!r}"] if self.near else [])
        )
        return text + (f"[{','.join(options)}]" if options else "")


@dataclass(frozen=True)
class GatingPolicy:
    kind: str = "none"  # one of KINDS
    layers: tuple[int, ...] = ()  # pruning layers: a cut happens at the input of each
    ratios: tuple[float, ...] = ()  # schedule / random / fastv: keep ratio of the ORIGINAL spatial count
    mass: float = 0.0  # mass: score mass p to keep
    min_keep: float = 0.05  # mass: bounds, as ratios of the original spatial count
    max_keep: float = 1.0
    raters: str = "last"  # one of RATERS: the rows of the score (module docstring)
    pre: Selection | None = None  # before the language model; the cuts above then count from what enters it

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
        if self.raters != "last" and not self.scores_tokens:
            name = self.kind if self.pre is None else str(dataclasses.replace(self, raters="last"))
            raise ValueError(f"{name} does not score tokens, so it takes no ~{self.raters}")
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

    @property
    def cuts_score(self) -> bool:
        """Whether the in-LM cuts rank tokens by attention (and so read the raters)."""
        return self.kind in ("schedule", "fastv", "mass")

    @property
    def selection_scores(self) -> bool:
        """Whether the selection before the LM needs layer 0's scores: a query one, or kcentre~question."""
        pre = self.pre
        return pre is not None and (pre.method == "query" or (pre.method == "kcentre" and self.raters == "question"))

    @property
    def scores_tokens(self) -> bool:
        """Whether anything in the policy can be scored by attention, so that ~question applies to it."""
        return self.cuts_score or (self.pre is not None and self.pre.method in ("query", "kcentre"))

    @property
    def question_independent(self) -> bool:
        """Whether the tokens it gives the language model do not depend on the question, so a scene's
        prompt prefix can be prefilled once for every question (scene_qa.ScenePrefix): no in-LM cut,
        and a selection, if any, that neither scores with layer 0 nor keeps what is near a named point."""
        pre = self.pre
        return self.kind == "none" and (pre is None or (not self.selection_scores and not pre.near))

    @property
    def has_fixed_counts(self) -> bool:
        """Whether its token counts follow from the policy alone (not mass's scores, not voxel's scene)."""
        return self.kind != "mass" and (self.pre is None or self.pre.method != "voxel")

    def score_rows(self, spatial_mask) -> int:
        """How many of the last prompt tokens score the spatial tokens: 1 for the last token, or every
        token after the last spatial one (spatial_mask [T] bool) for the question."""
        if self.raters == "last" or not bool(spatial_mask.any()):
            return 1
        return max(1, spatial_mask.numel() - 1 - int(spatial_mask.nonzero()[-1]))

    def __str__(self) -> str:
        cuts = self._cuts_text()
        if self.pre is not None:
            cuts = str(self.pre) if cuts == "none" else f"{self.pre}+{cuts}"
        return with_raters(cuts, self.raters)

    def _cuts_text(self) -> str:
        if self.kind == "none":
            return "none"
        if self.kind == "mass":
            at = ",".join(map(str, self.layers))
            text = f"mass:{self.mass!r}@{at}[min={self.min_keep!r},max={self.max_keep!r}]"
        else:
            text = f"{self.kind}:" + ",".join(f"{layer}:{r!r}" for layer, r in zip(self.layers, self.ratios))
        return text


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
    stages = [stage.strip() for stage in text.split("+")]
    if len(stages) > 2:
        raise ValueError("at most one selection and one in-LM policy: SELECTION+POLICY")
    pre = _parse_selection(stages[0])
    if pre is None and len(stages) == 2:
        raise ValueError(f"{stages[0]!r} is not a selection before the language model; expected {SYNTAX}")
    if pre is None:
        policy = _parse_cuts(stages[0], num_layers)
    else:
        policy = _parse_cuts(stages[1], num_layers) if len(stages) == 2 else GatingPolicy()
        policy = dataclasses.replace(policy, pre=pre)
    return dataclasses.replace(policy, raters=raters.strip()) if tilde else policy


def _parse_selection(text: str) -> Selection | None:
    """A selection before the language model, or None when the text is an in-LM policy."""
    m = re.fullmatch(r"([^\[\]]*)(?:\[([^\[\]]*)\])?", text)
    head, options = m.groups() if m else (text, None)
    kind, _, rest = head.partition(":")
    if kind in ("random", "fastv") and rest.split(":")[0].strip().lstrip("0") == "" and rest[:1] == "0":
        cut = rest.split(":")
        if len(cut) != 2 or "," in rest:
            raise ValueError(
                "a cut at layer 0 is a selection before the language model: write it alone "
                f"({kind}:0:r) or before a '+' and the in-LM cuts"
            )
        method, amount = ("random" if kind == "random" else "query"), _float(cut[1])
    elif kind in ("kcentre", "voxel"):
        method, amount = kind, _float(rest)
    else:
        if options is not None and kind != "mass":
            raise ValueError(f"{kind} takes no [options]")
        return None
    merge, feature, near = False, KCENTRE_FEATURE_WEIGHT, None
    for item in options.split(",") if options else []:
        key, eq, value = (part.strip() for part in item.partition("="))
        if key == "merge" and not eq and not merge:
            merge = True
        elif key == "feature" and eq and feature == KCENTRE_FEATURE_WEIGHT:
            feature = _float(value)
        elif key == "near" and eq and near is None:
            near = _float(value)
            if near <= 0.0:
                raise ValueError(f"near={value} must be a distance in metres > 0")
        else:
            raise ValueError(f"bad option {item!r}; expected [merge], [near=R] and, for kcentre, [feature=w]")
    return Selection(method, amount, merge, feature, near or 0.0)


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


def scores_tokens(text: str) -> bool:
    """Whether a policy text (layers unchecked) scores tokens by attention, so that ~question applies to it."""
    return _parse(text.strip(), 1 << 16).scores_tokens


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


def selection_count(ratio: float, m: int) -> int:
    """Tokens a selection keeps of m: ceil(r * m) (ratio_count), at least one when there is any."""
    return min(m, max(1, ratio_count(ratio, m))) if m else 0


def ratio_count(ratio: float, n: int) -> int:
    """ceil(ratio * n), rounded to 6 decimals first so float noise (0.1 * 30 = 3.0000000000000004) adds no token."""
    return math.ceil(round(ratio * n, 6))
