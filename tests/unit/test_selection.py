"""Selection before the language model (model/selection.py): k-centre, merging, scores, FLOPs."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from adatoken3d_node.model.flops import input_scoring_flops, kcentre_flops, merge_flops
from adatoken3d_node.model.gating import GatedLlama
from adatoken3d_node.model.gating_policy import Selection, parse_gating, selection_count
from adatoken3d_node.model.selection import kcentre, merge_into_kept, select
from test_gating import prompt, tiny_llama


def cloud(m=200, c=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(m, 3, generator=g) * 4.0, torch.randn(m, c, generator=g)


def test_selection_count_rounds_up_and_keeps_one():
    assert selection_count(0.1, 30) == 3 and selection_count(0.1, 31) == 4
    assert selection_count(0.001, 50) == 1 and selection_count(0.5, 0) == 0 and selection_count(1.0, 7) == 7


def test_kcentre_is_deterministic_distinct_and_covers():
    centres, features = cloud()
    kept = kcentre(centres, features, 20, 0.0)  # positions only: a cover of the points in 3D
    assert torch.equal(kept, kcentre(centres, features, 20, 0.0))
    assert kept.numel() == 20 and kept.unique().numel() == 20 and torch.equal(kept, kept.sort().values)
    # every point lies within the cover radius of a kept one, and that radius is about the spacing a
    # 20-point cover of a 4 m cube needs, far below what 20 random points leave
    radius = torch.cdist(centres, centres[kept]).min(1).values.max()
    random_radius = torch.cdist(centres, centres[torch.randperm(200)[:20]]).min(1).values.max()
    assert radius < 0.8 * random_radius
    # with features weighed in, the cover changes and still has no repeats
    joint = kcentre(centres, features, 20, 2.0)
    assert joint.unique().numel() == 20 and not torch.equal(joint, kept)
    assert kcentre(centres, features, 500, 1.0).numel() == 200  # k > M keeps everything


def test_kcentre_picks_an_outlier_first_and_every_cluster():
    # three tight clusters and a lone point: three picks must land one in each of the far groups
    centres = torch.cat([torch.zeros(50, 3), torch.full((50, 3), 3.0), torch.tensor([[6.0, 0.0, 0.0]])])
    centres = centres + 0.01 * torch.randn(101, 3, generator=torch.Generator().manual_seed(0))
    kept = kcentre(centres, torch.zeros(101, 4), 3, 0.0)
    assert sorted(int(i) // 50 for i in kept) == [0, 1, 2]


def test_merged_tokens_are_the_mean_of_their_members():
    centres, features = cloud(m=120, c=8, seed=3)
    kept = torch.tensor([0, 17, 40, 99])
    merged, owner = merge_into_kept(features, centres, kept)
    assert torch.equal(owner[kept], torch.arange(4))  # a kept token owns itself
    distance = torch.cdist(centres, centres[kept])
    assert torch.equal(owner, distance.argmin(1))  # nearest kept one (no ties in a random cloud)
    for j in range(4):
        assert torch.allclose(merged[j], features[owner == j].mean(0), atol=1e-6)
    assert int((owner >= 0).sum()) == 120  # nothing is thrown away


def test_merge_ties_go_to_the_most_similar_feature():
    centres = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # the third is equidistant
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])  # and looks like the second
    merged, owner = merge_into_kept(features, centres, torch.tensor([0, 1]))
    assert owner.tolist() == [0, 1, 1]
    assert torch.allclose(merged[1], torch.tensor([0.05, 1.0]))


def test_query_seeded_kcentre_keeps_the_top_half_then_covers():
    centres, features = cloud(m=150, c=12, seed=4)
    scores = torch.rand(150, generator=torch.Generator().manual_seed(5))
    kept = select(Selection("kcentre", 0.1), features, centres, scores).kept  # 15 tokens
    assert set(scores.topk(7).indices.tolist()) <= set(kept.tolist())
    plain = select(Selection("kcentre", 0.1), features, centres).kept
    assert kept.unique().numel() == 15 and not torch.equal(kept, plain)
    # the rest is the farthest-point continuation from the seeds
    seeds = scores.topk(7).indices
    assert torch.equal(kept, kcentre(centres, features, 15, 1.0, seeds))


@pytest.mark.parametrize("method", ["random", "query", "kcentre"])
@pytest.mark.parametrize("merge", [False, True])
def test_select_keeps_the_ratio_and_flops_match_the_counter(method, merge):
    centres, features = cloud(m=150, c=12, seed=1)
    scores = torch.rand(150, generator=torch.Generator().manual_seed(2))
    pre = Selection(method, 0.1, merge)
    given = scores if method == "query" else None
    with FlopCounterMode(display=False) as counter:
        out = select(pre, features, centres, given)
    assert out.kept.numel() == 15 == out.features.shape[0]
    assert torch.equal(out.kept, select(pre, features, centres, given).kept)  # deterministic
    assert out.flops == counter.get_total_flops()
    expected = (kcentre_flops(150, 15, 15) if method == "kcentre" else 0.0) + (merge_flops(150, 15, 12) if merge else 0)
    assert out.flops == expected
    if method == "query":
        assert torch.equal(out.kept, scores.topk(15).indices.sort().values)
    if not merge:
        assert torch.equal(out.features, features[out.kept]) and out.owner is None


def test_layer0_scores_are_the_pruning_score_of_layer_0_and_their_flops_are_counted():
    gated = GatedLlama(tiny_llama(kv_heads=2))
    x, mask = prompt()
    with FlopCounterMode(display=False) as counter:
        scores = gated.input_scores(x, 8)
    assert scores.shape == (x.shape[1],) and torch.allclose(scores.sum(), torch.tensor(1.0))
    assert counter.get_total_flops() == input_scoring_flops(gated.shape, 8, x.shape[1])
    # the same rows and keys as a scored cut inside the model, here computed on layer 0's input
    layer = gated.layers[0]
    h = layer.input_layernorm(x)
    reference = gated._score(layer.self_attn, h, layer.self_attn.k_proj(h), torch.arange(x.shape[1]), 8)
    assert torch.equal(scores, reference)


@pytest.mark.parametrize("method", ["random", "query", "kcentre"])
@pytest.mark.parametrize("merge", [False, True])
def test_near_keeps_the_tokens_around_the_questions_point_first(method, merge):
    centres, features = cloud(m=150, c=12, seed=6)
    scores = torch.rand(150, generator=torch.Generator().manual_seed(7))
    given = scores if method in ("query", "kcentre") else None
    point = centres[42:43] + 0.05  # a location prompt next to token 42
    within = (torch.cdist(centres, point)[:, 0] <= 0.8).nonzero()[:, 0]
    assert 1 < within.numel() < 15  # a few tokens near the point, fewer than the 15 kept
    pre = Selection(method, 0.1, merge, near=0.8)
    with FlopCounterMode(display=False) as counter:
        out = select(pre, features, centres, given, locations=point)
    assert out.flops == counter.get_total_flops()
    assert out.kept.numel() == 15 and out.kept.unique().numel() == 15
    assert set(within.tolist()) <= set(out.kept.tolist())
    assert torch.equal(out.kept, select(pre, features, centres, given, locations=point).kept)  # deterministic
    # without a location in the question near changes nothing
    plain = Selection(method, 0.1, merge)
    assert torch.equal(select(pre, features, centres, given).kept, select(plain, features, centres, given).kept)
    if method == "query":  # the rest are the best scored of the others
        rest = scores.masked_fill(torch.isin(torch.arange(150), within), -1.0).topk(15 - within.numel()).indices
        assert torch.equal(out.kept, torch.cat([within, rest]).sort().values)


def test_near_keeps_the_nearest_when_more_than_the_count_are_close():
    centres, features = cloud(m=150, c=12, seed=8)
    point = torch.tensor([[2.0, 2.0, 2.0]])
    out = select(Selection("random", 0.02, near=3.0), features, centres, locations=point)  # 3 tokens
    nearest = torch.cdist(centres, point)[:, 0].topk(3, largest=False).indices
    assert torch.equal(out.kept, nearest.sort().values)


def test_seeded_kcentre_flops_match_the_counter():
    centres, features = cloud(m=150, c=12, seed=9)
    seeds = torch.tensor([3, 77, 120])
    with FlopCounterMode(display=False) as counter:
        kcentre(centres, features, 15, 1.0, seeds)
    assert counter.get_total_flops() == kcentre_flops(150, 15, 15, seeded=True)


@pytest.mark.parametrize(
    "text", ["fastv:0:0.08[near=0.5]~question", "random:0:0.1[merge,near=0.4]", "kcentre:0.1[feature=2.0,near=0.5]"]
)
def test_near_round_trips_through_the_grammar(text):
    policy = parse_gating(text, 6)
    assert policy.pre.near > 0 and str(policy) == text and parse_gating(str(policy), 6) == policy
