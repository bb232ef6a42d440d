"""Spatial-token selection before the language model: which voxel tokens enter the prompt at all. ROS-free.

A cut at the input of layer 0 saves every layer's work on the dropped tokens, where an in-LM cut
(gating.py) saves only the layers after it, and in a LLaVA-3D prompt the question comes after the
spatial tokens, so by layer 1 it has already read all of them. The selections (gating_policy.Selection):

    random   ceil(r * M) of the M tokens, uniformly (a seeded generator: the same scene, the same pick)
    query    the top ceil(r * M) by layer 0's own one-row attention score on the input embeddings (the
             last token's row, or the question's with ~question): GatedLlama.input_scores
    kcentre  a greedy k-centre cover (farthest-point) in the joint space [xyz in metres, w * unit feature],
             started at the token farthest from the mean: every dropped token lies within the last pick
             distance of a kept one, in place and in appearance (DivPrune / 3DZip's coverage idea);
             kcentre~question seeds the cover with the half the layer-0 question score ranks highest
             (relevance first, then coverage, as CDPruner's conditional diversity)
    voxel    LLaVA-3D's own pooling at a coarser voxel size (0.3, 0.4, 0.6 m): the baseline every
             selection has to beat at the same token count

near=R (any but voxel): the tokens within R metres of a point the question names ("[x, y, z]", LLaVA-3D's
location prompt) are kept first, nearest first, and the selection fills the rest of the count. A question
about a place needs the tokens at that place, and a location token is one embedding whose layer-0 score
does not say which voxels surround the point; the geometry does.

merge (any but voxel): every dropped token joins its nearest kept token (3D distance; feature cosine
similarity breaks ties within 1 cm) and each kept token becomes the mean of its members. It works on
the pooled features before the projector, as voxel pooling does, so a merged token is what the model
was trained to read: the mean of the patch features of a region, only a larger one.

FLOPs (flops.kcentre_flops, flops.near_flops, flops.merge_flops; the layer-0 score: flops.input_scoring_flops): matmuls
only, as flops.py counts the prefill; the distance updates are (M, dims) @ (dims, 1) products so
torch's flop counter sees exactly what is counted.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .gating_policy import Selection, selection_count

TIE_M2 = 1e-4  # squared 3D distances within 1 cm^2 are a tie for merging: feature similarity decides


@dataclass
class Selected:
    features: torch.Tensor  # (k, C) pooled spatial features entering the projector
    kept: torch.Tensor  # (k,) int64 indices of the kept tokens among the M input ones, sorted
    owner: torch.Tensor | None  # (M,) int64 position in `kept` each input token was merged into; None without merge
    flops: float  # matmul FLOPs of the selection (kcentre_flops + merge_flops)


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (M, 3), b (K, 3) -> (M, K) squared distances, through one (M, 3) @ (3, K) product (what flops.py counts)."""
    return a.square().sum(1, keepdim=True) + b.square().sum(1)[None] - 2 * (a @ b.t())


def kcentre(
    centres: torch.Tensor, features: torch.Tensor, k: int, feature_weight: float, seeds: torch.Tensor | None = None
) -> torch.Tensor:
    """Greedy k-centre over [xyz, feature_weight * unit feature]. centres (M, 3), features (M, C)
    -> (k,) int64 indices, sorted. Deterministic (ties: the lowest index).

    seeds (s,) int64, s < k: picked first (the query-seeded cover: the tokens the question scores highest),
    the rest farthest from them; without seeds the first pick is the token farthest from the mean."""
    m = centres.shape[0]
    k = min(k, m)
    z = torch.cat([centres.float(), feature_weight * F.normalize(features.float(), dim=1)], dim=1)  # (M, dims)
    sq = z.square().sum(1)  # (M,) |z|^2
    picked = torch.empty(k, dtype=torch.long, device=z.device)
    min_d2 = torch.full((m,), float('inf'), device=z.device)  # squared distance to the nearest pick
    j = 0
    if seeds is not None and seeds.numel():
        s = seeds[: k - 1]
        picked[: s.numel()] = s
        d2 = sq[:, None] + sq[s][None] - 2 * (z @ z[s].t())  # (M, s) one column per seed
        min_d2 = d2.min(1).values
        min_d2[s] = -1.0
        j, i = s.numel(), torch.argmax(min_d2)
    else:
        mean = z.mean(0, keepdim=True)  # (1, dims)
        i = torch.argmax(sq - 2 * (z @ mean.t())[:, 0])  # farthest from the mean (|mean|^2 is common)
    for j in range(j, k):
        picked[j] = i
        if j == k - 1:
            break
        d2 = sq + sq[i] - 2 * (z @ z[i : i + 1].t())[:, 0]  # (M,) squared distance to the new pick
        torch.minimum(min_d2, d2, out=min_d2)
        min_d2[i] = -1.0  # never picked twice (rounding can leave a pick at ~1e-7)
        i = torch.argmax(min_d2)
    return picked.sort().values


def merge_into_kept(features: torch.Tensor, centres: torch.Tensor, kept: torch.Tensor):
    """Every token joins its nearest kept token (a kept one joins itself) -> (merged (k, C), owner (M,)).
    merged[j] is the mean of the features of the tokens whose owner is j."""
    k = kept.numel()
    c = centres.float()
    d2 = squared_distances(c, c[kept])  # (M, k)
    unit = F.normalize(features.float(), dim=1)
    similarity = unit @ unit[kept].t()  # (M, k) cosine, in [-1, 1]
    # lexicographic (distance in 1 cm^2 steps, then the most similar feature); the similarity term is < 1 step
    key = torch.floor(d2.clamp(min=0) / TIE_M2) - 0.49 * similarity
    owner = key.argmin(1)  # (M,)
    owner[kept] = torch.arange(k, device=owner.device)
    sums = torch.zeros(k, features.shape[1], dtype=torch.float32, device=features.device)
    sums = sums.index_add_(0, owner, features.float())
    counts = torch.bincount(owner, minlength=k).clamp(min=1)
    return (sums / counts[:, None]).to(features.dtype), owner


def coarse_voxel_features(model, clip_features: torch.Tensor, scene, voxel_size: float) -> torch.Tensor:
    """LLaVA-3D's voxel pooling of the scene's patches at voxel_size -> (M', C) pooled features."""
    from .llava3d import voxel_mean

    patches = model.patch_features(clip_features, scene)  # (N, C)
    tokens = scene.pooled_at(voxel_size)  # perception.frontend.SceneGeometry
    return voxel_mean(patches, tokens.patch_to_voxel.to(patches.device), tokens.centres.shape[0])


def near_locations(centres: torch.Tensor, locations: torch.Tensor, radius: float, k: int) -> torch.Tensor:
    """The (at most k) tokens within `radius` metres of any of the locations, nearest first.
    centres (M, 3), locations (K, 3) -> (n,) int64, n <= k."""
    d2 = squared_distances(centres.float(), locations.to(centres.device).float())  # (M, K)
    nearest = d2.min(1).values  # (M,) squared distance to the closest location
    inside = (nearest <= radius * radius).nonzero()[:, 0]
    order = torch.sort(nearest[inside], stable=True).indices  # ties: the lower index
    return inside[order][:k]


def select(
    pre: Selection,
    features: torch.Tensor,
    centres: torch.Tensor,
    scores: torch.Tensor | None = None,
    seed: int = 0,
    locations: torch.Tensor | None = None,
) -> Selected:
    """Run a selection (not voxel: coarse_voxel_features) on M pooled tokens. features (M, C), centres (M, 3),
    scores (M,) where policy.selection_scores (GatedLlama.input_scores of the spatial tokens), locations
    (K, 3) the points the question names (Llava3DInputs.locations; used with near=R)."""
    from .flops import kcentre_flops, merge_flops, near_flops

    m, device = features.shape[0], features.device
    centres = centres.to(device)
    k = selection_count(pre.amount, m)
    flops = 0.0
    forced = torch.zeros(0, dtype=torch.long, device=device)  # kept first: near a location in the question
    if pre.near and locations is not None and locations.numel():
        forced = near_locations(centres, locations.reshape(-1, 3), pre.near, k)
        flops += near_flops(m, locations.numel() // 3)
    chosen = torch.zeros(m, dtype=torch.bool, device=device)
    chosen[forced] = True
    if pre.method == 'random':
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(m, generator=generator).to(device)
        kept = torch.cat([forced, order[~chosen[order]][: k - forced.numel()]]).sort().values
    elif pre.method == 'query':
        if scores is None or scores.shape != (m,):
            raise ValueError(f"query selection needs the {m} spatial tokens' scores")
        ranked = scores.float().to(device).masked_fill(chosen, float('inf'))  # the forced ones rank first
        kept = ranked.topk(k).indices.sort().values
    elif pre.method == 'kcentre':
        # with scores (kcentre~question): the top half by score seed the cover, coverage picks the rest;
        # the forced tokens seed it before them
        seeds = forced
        if scores is not None:
            top = scores.float().to(device).masked_fill(chosen, float('-inf')).topk(k // 2).indices
            seeds = torch.cat([forced, top[~chosen[top]]])[: max(k // 2, forced.numel())]
        if seeds.numel() >= k:
            kept = seeds[:k].sort().values
        else:
            kept = kcentre(centres, features, k, pre.feature_weight, seeds if seeds.numel() else None)
            flops += kcentre_flops(m, k, 3 + features.shape[1], seeded=bool(seeds.numel()))
    else:
        raise ValueError(f'{pre.method} is not a token selection')
    if not pre.merge:
        return Selected(features[kept], kept, None, flops)
    merged, owner = merge_into_kept(features, centres, kept)
    return Selected(merged, kept, owner, flops + merge_flops(m, k, features.shape[1]))
