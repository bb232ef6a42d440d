"""Tests of the gated prefill / decode loop (model/gating.py) on tiny random LLaMAs built in the test.

float32 on CPU throughout; tolerances are stated where tensors are compared.
"""

import copy
import math
import re

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM

from adatoken3d_node.model.flops import LlamaShape, layer_prefill_flops, prefill_flops, scoring_flops
from adatoken3d_node.model.gating import GatedLlama, keep_count, mass_count
from adatoken3d_node.model.gating_policy import GatingPolicy, Selection, parse_gating

ATOL = 1e-5  # float32, a 4-layer model: differences seen are ~1e-7
T_HEAD, N_SPATIAL, T_TAIL = 10, 60, 8  # text, spatial, text: T = 78
T = T_HEAD + N_SPATIAL + T_TAIL
SCHEDULE = "schedule:1:0.5,2:0.25,3:0.125"


def tiny_llama(kv_heads=2, layers=4, hidden=64, heads=4, intermediate=96, vocab=128, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        initializer_range=0.1,  # sharper attention than the default 0.02, so pruning changes the output
    )
    return LlamaForCausalLM(cfg).eval()


def prompt(d=64, seed=1):
    """Random embeddings [1, T, d] and the spatial mask [T]: 10 text, 60 spatial, 8 text tokens."""
    x = torch.randn(1, T, d, generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(T, dtype=torch.bool)
    mask[T_HEAD : T_HEAD + N_SPATIAL] = True
    return x, mask


@pytest.fixture(scope="module", params=[2, 4], ids=["gqa", "mha"])
def gated(request):
    return GatedLlama(tiny_llama(kv_heads=request.param))


TEXT = torch.cat([torch.arange(T_HEAD), torch.arange(T_HEAD + N_SPATIAL, T)])


# ---- 1. no pruning == transformers' forward ---------------------------------------------------


def test_none_equals_plain_forward(gated):
    x, mask = prompt()
    with torch.inference_mode():
        out = gated.model(inputs_embeds=x, use_cache=True)
    r = gated.prefill(x, mask, parse_gating("none", 4))
    torch.testing.assert_close(r.logits, out.logits[:, -1], atol=ATOL, rtol=0)
    for layer, cache in zip(out.cache.layers, r.caches):  # transformers' DynamicCache
        torch.testing.assert_close(cache.k, layer.keys, atol=ATOL, rtol=0)
        torch.testing.assert_close(cache.v, layer.values, atol=ATOL, rtol=0)
        assert torch.equal(cache.tokens, torch.arange(T)) and torch.equal(cache.positions, torch.arange(T))
        assert cache.next_position == T
    assert r.tokens_per_layer == [T] * 4 and r.spatial_per_layer == [N_SPATIAL] * 4
    assert r.keep_trace == {} and r.scores == {} and r.scoring_flops == 0.0 and r.policy == "none"


# ---- 2. cached decoding == recomputation ----------------------------------------------------


def test_decode_without_pruning_equals_recomputation(gated):
    x, mask = prompt()
    ids, pre, decode_ms = gated.generate(x, mask, parse_gating("none", 4), max_new_tokens=12)
    seq, reference = x, []
    with torch.inference_mode():
        for _ in range(12):  # the plain model over the whole growing sequence, no cache
            nxt = int(gated.model(inputs_embeds=seq).logits[0, -1].argmax())
            reference.append(nxt)
            seq = torch.cat([seq, gated.model.model.embed_tokens(torch.tensor([[nxt]]))], dim=1)
    assert ids == reference and len(set(ids)) > 1
    assert decode_ms > 0 and all(c.n == T + 11 and c.next_position == T + 11 for c in pre.caches)


def test_extending_a_cached_prefix_equals_the_whole_prefill(gated):
    """The scene prefix cache's core: a dense prefill of the prompt's first P tokens, copied, then extended
    with the rest, gives the whole prompt's logits and caches; the copied prefix is left as it was."""
    x, mask = prompt()
    none = parse_gating("none", 4)
    whole = gated.prefill(x, mask, none)
    P = T_HEAD + N_SPATIAL  # everything before the question
    prefix = gated.prefill(x[:, :P], torch.zeros(P, dtype=torch.bool), none)  # dense: nothing to prune
    before = [(c.k.clone(), c.n, c.next_position) for c in prefix.caches]
    for question in (x[:, P:], torch.randn(1, 5, 64, generator=torch.Generator().manual_seed(9))):
        caches = [c.copy() for c in prefix.caches]
        logits = gated.extend(question, caches)
        reference = gated.prefill(torch.cat([x[:, :P], question], dim=1), mask[: P + question.shape[1]], none)
        torch.testing.assert_close(logits, reference.logits, atol=ATOL, rtol=0)
        for cache, ref in zip(caches, reference.caches):
            torch.testing.assert_close(cache.k, ref.k, atol=ATOL, rtol=0)
            torch.testing.assert_close(cache.v, ref.v, atol=ATOL, rtol=0)
            assert cache.n == ref.n and cache.next_position == ref.next_position
        # decoding goes on from the extended caches as from the whole prefill's
        token = torch.tensor([[int(logits.argmax())]])
        torch.testing.assert_close(
            gated.decode_step(token, caches), gated.decode_step(token, reference.caches), atol=ATOL, rtol=0
        )
    torch.testing.assert_close(
        gated.extend(x[:, P:], [c.copy() for c in prefix.caches]), whole.logits, atol=ATOL, rtol=0
    )
    for cache, (k, n, position) in zip(prefix.caches, before):
        assert torch.equal(cache.k, k) and (cache.n, cache.next_position) == (n, position)


def test_extending_by_one_token_is_a_decode_step(gated):
    x, mask = prompt()
    pre = gated.prefill(x, mask, parse_gating("none", 4))
    one = gated.model.model.embed_tokens(torch.tensor([[5]]))
    copied = [c.copy() for c in pre.caches]
    torch.testing.assert_close(gated.extend(one, copied), gated.decode_step(one, pre.caches), atol=ATOL, rtol=0)


@pytest.mark.parametrize("renumber", [False, True], ids=["kept-positions", "renumbered"])
@pytest.mark.parametrize("policy", [SCHEDULE, "mass:0.6"])
def test_decode_with_pruning_equals_recomputation(gated, policy, renumber):
    """Decode logits == a gated prefill over prompt + generated tokens replaying the same cuts."""
    x, mask = prompt()
    policy = parse_gating(policy, 4)
    pre = gated.prefill(x, mask, policy, renumber_positions=renumber)
    ids, logits = [int(pre.logits.argmax())], [pre.logits]
    for _ in range(8):
        logits.append(gated.decode_step(torch.tensor([[ids[-1]]]), pre.caches))
        ids.append(int(logits[-1].argmax()))
    for t in range(1, len(ids)):  # prompt + ids[:t], generated tokens appended as text
        gen = gated.model.model.embed_tokens(torch.tensor([ids[:t]]))
        mask_t = torch.cat([mask, torch.zeros(t, dtype=torch.bool)])
        re = gated.prefill(
            torch.cat([x, gen], dim=1), mask_t, policy, renumber_positions=renumber, forced_keep=pre.keep_trace
        )
        torch.testing.assert_close(re.logits, logits[t], atol=ATOL, rtol=0)
        assert int(re.logits.argmax()) == ids[t]
        assert re.tokens_per_layer == [n + t for n in pre.tokens_per_layer]
    assert len(set(ids)) > 1
    dense = gated.generate(x, mask, parse_gating("none", 4), max_new_tokens=len(ids))[0]
    assert ids != dense  # the cuts do change this random model's answer: the test is not vacuous
    # decode positions: T + t with kept positions, n_l + t with renumbered ones, per layer
    for n, c in zip(pre.tokens_per_layer, pre.caches):
        assert c.n == n + 8 and c.next_position == (n if renumber else T) + 8


# ---- 3. the one-row score == the eager attention row ----------------------------------------


@pytest.mark.parametrize("rows", [1, 3])
def test_score_equals_eager_attention_row(gated, rows):
    x, mask = prompt()
    eager = copy.deepcopy(gated.model)
    eager.set_attn_implementation("eager")
    with torch.inference_mode():
        att = eager(inputs_embeds=x, output_attentions=True).attentions  # per layer [1, H, T, T]
    # ratio 1.0 scores at every layer and keeps everything: no pruning before any scored layer
    r = gated.prefill(x, mask, parse_gating("schedule:1:1.0,2:1.0,3:1.0", 4), score_queries=rows)
    assert r.tokens_per_layer == [T] * 4
    for layer in (1, 2, 3):
        row = att[layer][0, :, -rows:].mean(dim=(0, 1))  # [T] last rows averaged over heads
        torch.testing.assert_close(r.scores[layer], row, atol=1e-6, rtol=0)
        assert r.scores[layer].dtype == torch.float32


# ---- 4. what each layer's cache holds ---------------------------------------------------------


@pytest.mark.parametrize("renumber", [False, True], ids=["kept-positions", "renumbered"])
def test_pruning_removes_exactly_the_expected_tokens(gated, renumber):
    x, mask = prompt()
    dense = gated.prefill(x, mask, parse_gating("none", 4))
    r = gated.prefill(x, mask, parse_gating(SCHEDULE, 4), renumber_positions=renumber)
    ratios = {1: 0.5, 2: 0.25, 3: 0.125}
    assert torch.equal(r.caches[0].tokens, torch.arange(T))  # before the first cut: all T
    torch.testing.assert_close(r.caches[0].k, dense.caches[0].k, atol=1e-6, rtol=0)
    previous = torch.arange(T_HEAD, T_HEAD + N_SPATIAL)
    for layer, ratio in ratios.items():
        kept = r.keep_trace[layer]  # original indices of the spatial tokens kept at this cut
        assert kept.numel() == math.ceil(ratio * N_SPATIAL) == r.spatial_per_layer[layer]
        assert torch.isin(kept, previous).all() and torch.equal(kept, kept.sort().values)
        assert mask[kept].all()
        c = r.caches[layer]
        expected = torch.cat([TEXT, kept]).sort().values  # text tokens always, plus the kept spatial ones
        assert torch.equal(c.tokens, expected)
        assert c.k.shape == c.v.shape == (1, gated.Hkv, expected.numel(), gated.hd)
        assert r.tokens_per_layer[layer] == TEXT.numel() + kept.numel()
        assert torch.equal(c.positions, torch.arange(expected.numel()) if renumber else expected)
        previous = kept
    assert torch.equal(r.kept_spatial, r.keep_trace[3])
    # the first cut layer's input is the dense run's: its cached keys/values are the dense ones at the
    # kept original indices (with kept positions; renumbering rotates the keys differently)
    if not renumber:
        idx = r.caches[1].tokens
        torch.testing.assert_close(r.caches[1].k, dense.caches[1].k[:, :, idx], atol=1e-6, rtol=0)
        torch.testing.assert_close(r.caches[1].v, dense.caches[1].v[:, :, idx], atol=1e-6, rtol=0)


# ---- 5. policy text ---------------------------------------------------------------------------


def test_parse_gating_syntax_and_round_trip():
    cases = {
        "none": GatingPolicy(),
        "schedule:8:0.5,16:0.25,24:0.125": GatingPolicy("schedule", (8, 16, 24), (0.5, 0.25, 0.125)),
        "random:8:0.5,16:0.5": GatingPolicy("random", (8, 16), (0.5, 0.5)),
        "fastv:2:0.5": GatingPolicy("fastv", (2,), (0.5,)),
        "mass:0.9": GatingPolicy("mass", (8, 16, 24), (), 0.9, 0.05, 1.0),
        "mass:0.8@4,12[min=0.1,max=0.5]": GatingPolicy("mass", (4, 12), (), 0.8, 0.1, 0.5),
        " mass:0.7[max=0.5] ": GatingPolicy("mass", (8, 16, 24), (), 0.7, 0.05, 0.5),
        "mass:0.7@4[min=0.02]~question": GatingPolicy("mass", (4,), (), 0.7, 0.02, 1.0, "question"),
        "fastv:2:0.5 ~ question": GatingPolicy("fastv", (2,), (0.5,), raters="question"),
        "schedule:8:0.5~last": GatingPolicy("schedule", (8,), (0.5,)),
    }
    for text, policy in cases.items():
        parsed = parse_gating(text, 32)
        assert parsed == policy
        assert parse_gating(str(parsed), 32) == parsed  # canonical text round trip
    assert str(parse_gating("schedule:8:0.5,16:0.25,24:0.125", 32)) == "schedule:8:0.5,16:0.25,24:0.125"
    assert str(parse_gating("mass:0.9", 32)) == "mass:0.9@8,16,24[min=0.05,max=1.0]"
    assert str(parse_gating("fastv:2:1", 32)) == "fastv:2:1.0"
    assert parse_gating("mass:0.9", 4).layers == (1, 2, 3)
    assert str(parse_gating("schedule:1:0.3~question", 32)) == "schedule:1:0.3~question"
    assert str(parse_gating("schedule:1:0.3~last", 32)) == "schedule:1:0.3"  # the default is not written


def test_parse_selections_before_the_language_model():
    cases = {
        "random:0:0.1": GatingPolicy(pre=Selection("random", 0.1)),
        "fastv:0:0.05~question": GatingPolicy(raters="question", pre=Selection("query", 0.05)),
        "kcentre:0.1": GatingPolicy(pre=Selection("kcentre", 0.1)),
        "kcentre:0.1[merge,feature=2]": GatingPolicy(pre=Selection("kcentre", 0.1, True, 2.0)),
        "random:00:0.5[merge]": GatingPolicy(pre=Selection("random", 0.5, True)),
        "voxel:0.4": GatingPolicy(pre=Selection("voxel", 0.4)),
        "kcentre:0.1[merge]~question": GatingPolicy(raters="question", pre=Selection("kcentre", 0.1, True)),
        "kcentre:0.25[merge]+schedule:8:0.5,16:0.25": GatingPolicy(
            "schedule", (8, 16), (0.5, 0.25), pre=Selection("kcentre", 0.25, True)
        ),
        "fastv:0:0.2+random:8:0.5~question": GatingPolicy(
            "random", (8,), (0.5,), raters="question", pre=Selection("query", 0.2)
        ),
    }
    for text, policy in cases.items():
        parsed = parse_gating(text, 32)
        assert parsed == policy
        assert parse_gating(str(parsed), 32) == parsed
    assert str(parse_gating("kcentre:0.1[feature=1.0]", 32)) == "kcentre:0.1"  # the default is not written
    assert str(parse_gating("random:00:0.5[merge]", 32)) == "random:0:0.5[merge]"


SELECTION_ERRORS = [
    ("voxel:0.4[near=0.5]", r"near=R \(metres, in \(0, 10\]\) is an option of random, fastv:0 and kcentre"),
    ("fastv:0:0.1[near=0]", r"near=0 must be a distance in metres > 0"),
    ("kcentre:0.1[near=0.5,near=0.6]", r"bad option 'near=0\.6'"),
    ("random:0:0.5,8:0.25", r"a cut at layer 0 is a selection before the language model"),
    ("fastv:0:0.5:1", r"a cut at layer 0 is a selection"),
    ("voxel:0.4[merge]", r"voxel pools every patch already"),
    ("kcentre:0", r"keep ratio 0\.0 must be in \(0, 1\]"),
    ("voxel:0", r"voxel size 0\.0 m must be in \(0, 10\]"),
    ("random:0:0.1[feature=2]", r"feature=w is a kcentre option"),
    ("kcentre:0.1[merge,merge]", r"bad option 'merge'"),
    ("fastv:2:0.5[merge]", r"fastv takes no \[options\]"),
    ("schedule:8:0.5+kcentre:0.1", r"'schedule:8:0\.5' is not a selection before the language model"),
    ("kcentre:0.1+fastv:2:0.5+fastv:4:0.2", r"at most one selection and one in-LM policy"),
    ("voxel:0.4~question", r"voxel:0\.4 does not score tokens"),
    ("random:0:0.1+random:8:0.5~question", r"does not score tokens"),
]


def test_a_selection_is_refused_inside_the_language_model(gated):
    x, mask = prompt()
    with pytest.raises(ValueError, match="selects tokens before the language model"):
        gated.prefill(x, mask, parse_gating("kcentre:0.5", 4))


@pytest.mark.parametrize(
    "text, message",
    [
        ("schedule:0:0.5", r"pruning layer 0 is out of range: must be in 1\.\.31 for a 32-layer model"),
        ("schedule:8:0.5,32:0.25", r"pruning layer 32 is out of range"),
        ("fastv:40:0.5", r"pruning layer 40 is out of range"),
        ("schedule:8:1.5", r"keep ratio 1\.5 at layer 8 must be in \(0, 1\]"),
        ("random:8:0", r"keep ratio 0\.0 at layer 8 must be in \(0, 1\]"),
        ("schedule:8:0.25,16:0.5", r"non-increasing.*0\.25 at layer 8 then 0\.5 at layer 16"),
        ("schedule:16:0.5,8:0.25", r"strictly increasing"),
        ("pdrop:8:0.5", r"unknown gating kind 'pdrop'; expected none \| schedule"),
        ("", r"unknown gating kind ''"),
        ("schedule:8:x", r"'x' is not a number"),
        ("schedule:a:0.5", r"'a' is not a layer index"),
        ("schedule:8", r"expected schedule:L1:r1,L2:r2"),
        ("fastv:2", r"expected fastv:K:keep_ratio"),
        ("none:3", r"'none' takes no arguments"),
        ("mass:1.5", r"score mass p=1\.5 must be in \(0, 1\]"),
        ("mass:0.9[min=0.5,max=0.2]", r"need 0 <= min <= max <= 1"),
        ("mass:0.9[mean=0.5]", r"bad bound 'mean=0\.5'"),
        ("mass:0.9~everyone", r"unknown raters 'everyone'; expected one of last, question"),
        ("random:8:0.5~question", r"random does not score tokens, so it takes no ~question"),
        ("none~question", r"none does not score tokens"),
    ]
    + SELECTION_ERRORS,
)
def test_parse_gating_errors(text, message):
    with pytest.raises(ValueError, match=rf"^bad gating {re.escape(repr(text))}: .*{message}"):
        parse_gating(text, 32)


def test_question_raters_are_the_rows_after_the_last_spatial_token(gated):
    x, mask = prompt()
    policy = parse_gating("schedule:1:0.5,2:0.25~question", 4)
    assert policy.score_rows(mask) == T_TAIL and parse_gating("schedule:1:0.5", 4).score_rows(mask) == 1
    r = gated.prefill(x, mask, policy)
    explicit = gated.prefill(x, mask, parse_gating("schedule:1:0.5,2:0.25", 4), score_queries=T_TAIL)
    last = gated.prefill(x, mask, parse_gating("schedule:1:0.5,2:0.25", 4))
    assert all(torch.equal(r.keep_trace[i], explicit.keep_trace[i]) for i in (1, 2))
    assert r.scoring_flops == explicit.scoring_flops > last.scoring_flops
    assert any(not torch.equal(r.keep_trace[i], last.keep_trace[i]) for i in (1, 2))  # other rows, other tokens
    assert r.policy.endswith("~question")


def test_policy_checked_at_prefill():
    gated = GatedLlama(tiny_llama())
    x, mask = prompt()
    with pytest.raises(ValueError, match="pruning layer 6 is out of range"):
        gated.prefill(x, mask, GatingPolicy("fastv", (6,), (0.5,)))
    with pytest.raises(ValueError, match="last prompt token must be text"):
        gated.prefill(x, torch.ones(T, dtype=torch.bool), GatingPolicy())


# ---- 6. the mass gate -------------------------------------------------------------------------


def test_mass_selection_hand_computed():
    s = torch.tensor([0.5, 0.125, 0.25, 0.125])  # exact in float32; sorted 0.5, 0.25, 0.125, 0.125
    assert [mass_count(s, p) for p in (0.4, 0.5, 0.75, 0.76, 0.875, 0.9, 1.0)] == [1, 1, 2, 3, 3, 4, 4]
    assert mass_count(s * 7, 0.75) == 2  # relative to the mass present, not to 1
    assert mass_count(torch.empty(0), 0.9) == 0

    def count(p, lo, hi, n_original=4):
        return keep_count(GatingPolicy("mass", (1,), (), p, lo, hi), 1, n_original, s.numel(), s)

    assert count(0.75, 0.0, 1.0) == 2
    assert count(0.75, 0.75, 1.0) == 3  # raised to ceil(0.75 * 4)
    assert count(0.75, 0.0, 0.25) == 1  # lowered to ceil(0.25 * 4)
    assert count(0.75, 0.5, 1.0, n_original=40) == 4  # floor of 20, but only 4 are left


def test_mass_policy_on_tiny_model(gated):
    x, mask = prompt()
    kept = []
    for p in (0.3, 0.6, 0.9):
        r = gated.prefill(x, mask, parse_gating(f"mass:{p}", 4))
        kept.append(r.spatial_per_layer)
        alive = torch.arange(T_HEAD, T_HEAD + N_SPATIAL)
        for layer in (1, 2, 3):
            s = r.scores[layer][alive]  # the surviving spatial tokens' scores at this layer
            chosen = r.scores[layer][r.keep_trace[layer]]
            assert chosen.sum() >= p * s.sum() - 1e-6  # reaches p of the mass ...
            n = chosen.numel()
            if n > math.ceil(0.05 * N_SPATIAL):  # not raised to the min bound: the smallest such set
                assert s.sort(descending=True).values[: n - 1].sum() < p * s.sum()
            rest = s.sort(descending=True).values[n:]
            assert rest.numel() == 0 or chosen.min() >= rest.max()  # the top n
            alive = r.keep_trace[layer]
    for a, b in zip(kept, kept[1:]):
        assert all(x <= y for x, y in zip(a, b)) and a[-1] < b[-1]  # higher p keeps more
    bounded = gated.prefill(x, mask, parse_gating("mass:0.1[min=0.5]", 4))
    assert bounded.spatial_per_layer == [60, 30, 30, 30]
    capped = gated.prefill(x, mask, parse_gating("mass:0.99[max=0.2]", 4))
    assert capped.spatial_per_layer == [60, 12, 12, 12]  # 0.99 of the mass needs more than ceil(0.2 * 60)


# ---- 7. FastV and the random baseline ---------------------------------------------------------


def test_fastv_counts(gated):
    x, mask = prompt()
    r = gated.prefill(x, mask, parse_gating("fastv:2:0.5", 4))
    assert r.tokens_per_layer == [T, T, 18 + 30, 18 + 30] and r.spatial_per_layer == [60, 60, 30, 30]
    assert list(r.keep_trace) == [2] and list(r.scores) == [2]
    assert all(torch.isin(TEXT, c.tokens).all() for c in r.caches)


def test_random_baseline(gated):
    x, mask = prompt()
    policy = parse_gating("random:1:0.5,2:0.25,3:0.125", 4)
    a, b = gated.prefill(x, mask, policy, seed=3), gated.prefill(x, mask, policy, seed=3)
    c = gated.prefill(x, mask, policy, seed=4)
    assert a.spatial_per_layer == [60, 30, 15, 8] == gated.prefill(x, mask, parse_gating(SCHEDULE, 4)).spatial_per_layer
    assert all(torch.equal(a.keep_trace[i], b.keep_trace[i]) for i in (1, 2, 3))  # reproducible
    assert not torch.equal(a.keep_trace[1], c.keep_trace[1])  # seed matters
    torch.testing.assert_close(a.logits, b.logits, atol=0, rtol=0)
    for r in (a, c):
        assert all(torch.isin(TEXT, cache.tokens).all() for cache in r.caches)  # text never pruned
        assert r.scores == {} and r.scoring_flops == 0.0
    assert a.policy == "random:1:0.5,2:0.25,3:0.125 seed=3"


# ---- 8. FLOPs ---------------------------------------------------------------------------------


def test_flops_hand_computed_pruned_run():
    # d=8, m=16, H=2, Hkv=1, hd=4, V=10, 2 layers; tokens: text, 4 spatial, text; one cut keeping 2 at layer 1
    model = tiny_llama(kv_heads=1, layers=2, hidden=8, heads=2, intermediate=16, vocab=10)
    gated = GatedLlama(model)
    shape = LlamaShape(hidden=8, intermediate=16, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=4, vocab=10)
    assert gated.shape == shape
    x = torch.randn(1, 6, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([False, True, True, True, True, False])
    r = gated.prefill(x, mask, parse_gating("schedule:1:0.5", 2))
    assert r.tokens_per_layer == [6, 4] and r.keys_per_layer == [6, 6]
    # layer 0, n=6: q,o 2*(2*6*8*8)=1536; k,v 2*(2*6*8*4)=768; attention 2*(2*6*6*8)=1152; mlp 3*(2*6*8*16)=4608
    layer0 = 1536 + 768 + 1152 + 4608
    # layer 1, 6 in -> 4 out: k on 6: 2*6*8*4=384; v on 4: 2*4*8*4=256; q,o on 4: 2*(2*4*8*8)=1024;
    # attention 2*(2*4*4*8)=512; mlp 3*(2*4*8*16)=3072
    layer1 = 384 + 256 + 1024 + 512 + 3072
    score = 2 * 1 * 8 * 8 + 2 * 1 * 6 * 8  # q of the last row 128 + one row x 6 keys x 8 = 96
    lm_head = 2 * 8 * 10
    assert r.scoring_flops == score == scoring_flops(shape, 1, 6) == 224
    assert r.prefill_flops == layer0 + layer1 + score + lm_head == 13696
    assert r.prefill_flops_dense == prefill_flops(shape, [6, 6]) == 2 * layer0 + lm_head == 16288
    assert layer_prefill_flops(shape, 4, 6) == layer1
    # torch's counter agrees to the FLOP (math SDPA backend: the fused CPU kernel has no counting formula)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        gated.prefill(x, mask, parse_gating("schedule:1:0.5", 2))
    assert counter.get_total_flops() == r.prefill_flops


@pytest.mark.parametrize("policy", ["none", SCHEDULE, "mass:0.6", "fastv:2:0.5", "random:1:0.5,2:0.25"])
def test_flops_as_run(gated, policy):
    x, mask = prompt()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        r = gated.prefill(x, mask, parse_gating(policy, 4), score_queries=2)
    assert counter.get_total_flops() == r.prefill_flops  # exact
    assert r.prefill_flops_dense == prefill_flops(gated.shape, [T] * 4)
    assert r.prefill_flops == prefill_flops(gated.shape, r.tokens_per_layer, r.keys_per_layer, r.scoring_flops)
    n_scored = len(r.scores)
    assert r.scoring_flops == sum(scoring_flops(gated.shape, 2, r.keys_per_layer[i]) for i in r.scores)
    if policy == "none":
        assert r.prefill_flops == r.prefill_flops_dense
    else:
        assert r.prefill_flops < r.prefill_flops_dense and (n_scored > 0) == (not policy.startswith("random"))


def test_sampled_decoding_is_reproducible_and_reduces_to_greedy(gated):
    embeds, mask = prompt()
    policy = parse_gating("schedule:1:0.5,2:0.25", 4)
    greedy, _, _ = gated.generate(embeds, mask, policy, 10)
    hot = dict(temperature=5.0, top_p=1.0)
    first, _, _ = gated.generate(embeds, mask, policy, 10, sample_seed=3, **hot)
    again, _, _ = gated.generate(embeds, mask, policy, 10, sample_seed=3, **hot)
    other = [gated.generate(embeds, mask, policy, 10, sample_seed=s, **hot)[0] for s in range(4, 8)]
    assert first == again and any(o != first for o in other)
    # a nucleus so small that only the most likely token is inside it is greedy decoding
    assert gated.generate(embeds, mask, policy, 10, temperature=1.0, top_p=1e-6, sample_seed=1)[0] == greedy
    with pytest.raises(ValueError, match="top_p"):
        gated.generate(embeds, mask, policy, 2, temperature=1.0, top_p=0.0)
