"""Exact FLOPs of a LLaMA decoder prefill. One multiply-add = 2 FLOPs.

Symbols: n tokens entering a layer, d = hidden, m = intermediate, H = heads, Hkv = kv heads,
hd = head_dim, V = vocab. One decoder layer, prefill with no past (n queries see n keys):

    x [n, d]
    q = x @ Wq [d, H*hd]      -> [n, H*hd]     2*n*d*(H*hd)
    k = x @ Wk [d, Hkv*hd]    -> [n, Hkv*hd]   2*n*d*(Hkv*hd)
    v = x @ Wv [d, Hkv*hd]    -> [n, Hkv*hd]   2*n*d*(Hkv*hd)
    s = q @ k^T per head      -> [H, n, n]     2*n*n*(H*hd)
    a = softmax(s) @ v        -> [H, n, hd]    2*n*n*(H*hd)
    o = a [n, H*hd] @ Wo      -> [n, d]        2*n*d*(H*hd)
    gate, up = x @ Wg, x @ Wu -> [n, m] each   2 * 2*n*d*m
    down = (silu(gate)*up) @ Wd -> [n, d]      2*n*d*m

The attention terms count the full n x n score matrix, not the causal half: that is what the
fused SDPA / math kernels actually compute (the mask is applied to a full matrix) and what
torch.utils.flop_counter reports, so measured and counted FLOPs agree. With grouped-query
attention the kv heads are shared, but every one of the H query heads still does its own
score and weighted-sum matmuls, hence H*hd there and Hkv*hd only in the k/v projections.

Whole prefill = sum over layers (n may differ per layer once tokens are pruned) + lm_head on
the last position only, 2*d*V: prefill needs just the logits of the next token.

Ignored (elementwise, O(n*d) or O(n*n*H), negligible next to the matmuls): RMSNorms, rotary
embedding, softmax, SiLU and the gating product, residual adds, the embedding lookup.

Gated prefill (gating.py). A pruning layer l takes n_in tokens and runs on n_out <= n_in survivors.
Its k projection runs on all n_in tokens (the score needs every key, and the survivors' keys are then
reused for the layer's own attention); q, v, o, attention and MLP run on the n_out survivors only:

    layer(n_out, n_k=n_in) = 2*n_out*d*(H*hd)*2 + 2*(n_out + n_k)*d*(Hkv*hd) + 4*n_out^2*(H*hd) + 6*n_out*d*m

The score itself (r = score_queries rows, usually 1) is counted separately, only where a score ran
(not for the random baseline nor a forced replay, whose layers project k for the survivors only):

    scoring(r, n_in) = 2*r*d*(H*hd)      q projection of the last r rows (again later, for the survivors)
                     + 2*r*n_in*(H*hd)   r rows x n_in keys dot products, every query head

    prefill = sum_l layer(n_out_l, n_k_l) + sum_cuts scoring + 2*d*V
    dense   = prefill_flops(shape, [T] * num_layers)      (no cut: n_out = n_k = T, no scoring)
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class LlamaShape:
    hidden: int  # d
    intermediate: int  # m
    num_layers: int
    num_heads: int  # H
    num_kv_heads: int  # Hkv
    head_dim: int  # hd
    vocab: int  # V

    @classmethod
    def from_config(cls, cfg) -> "LlamaShape":
        """From a transformers LlamaConfig (or anything with the same attribute names)."""
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return cls(
            hidden=cfg.hidden_size,
            intermediate=cfg.intermediate_size,
            num_layers=cfg.num_hidden_layers,
            num_heads=cfg.num_attention_heads,
            num_kv_heads=getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
            head_dim=head_dim,
            vocab=cfg.vocab_size,
        )


def layer_prefill_flops(shape: LlamaShape, n_tokens: int, n_keys_projected: int | None = None) -> float:
    """FLOPs of one decoder layer over n new tokens attending to the same n tokens (no past).

    n_keys_projected: tokens whose k projection ran, when that is more than n_tokens (a pruning layer
    projects k before it drops tokens); defaults to n_tokens.
    """
    n_k = n_tokens if n_keys_projected is None else n_keys_projected
    if n_tokens < 0 or n_k < n_tokens:
        raise ValueError(f"need 0 <= n_tokens <= n_keys_projected, got {n_tokens} and {n_k}")
    n, d, m = n_tokens, shape.hidden, shape.intermediate
    q_dim = shape.num_heads * shape.head_dim
    kv_dim = shape.num_kv_heads * shape.head_dim
    proj = 2 * n * d * q_dim * 2 + 2 * (n + n_k) * d * kv_dim  # q, o on n; v on n, k on n_k
    attn = 2 * (2 * n * n * q_dim)  # scores q@k^T and weighted sum a@v, full n x n
    mlp = 3 * (2 * n * d * m)  # gate, up, down
    return float(proj + attn + mlp)


def scoring_flops(shape: LlamaShape, rows: int, n_keys: int) -> float:
    """One pruning score: q projection of the last `rows` tokens + their dot products with n_keys keys."""
    q_dim = shape.num_heads * shape.head_dim
    return float(2 * rows * shape.hidden * q_dim + 2 * rows * n_keys * q_dim)


def prefill_flops(
    shape: LlamaShape, tokens_per_layer: list[int], keys_per_layer: list[int] | None = None, scoring: float = 0.0
) -> float:
    """Prefill FLOPs when tokens_per_layer[i] tokens run layer i, plus the last-position lm_head.

    keys_per_layer[i]: tokens whose k projection ran in layer i (default: tokens_per_layer);
    scoring: FLOPs of the pruning scores (sum of scoring_flops), added as is.
    """
    if len(tokens_per_layer) != shape.num_layers:
        raise ValueError(f"tokens_per_layer has {len(tokens_per_layer)} entries, model has {shape.num_layers} layers")
    keys = tokens_per_layer if keys_per_layer is None else keys_per_layer
    if len(keys) != shape.num_layers:
        raise ValueError(f"keys_per_layer has {len(keys)} entries, model has {shape.num_layers} layers")
    layers = sum(layer_prefill_flops(shape, n, n_k) for n, n_k in zip(tokens_per_layer, keys))
    lm_head = 2 * shape.hidden * shape.vocab
    return float(layers + lm_head + scoring)


def extend_flops(shape: LlamaShape, m: int, n_past: int) -> float:
    """m new prompt tokens run every layer attending to n_past cached tokens and causally to each other
    (gating.GatedLlama.extend: a question after a cached scene prefix), plus the last-position lm_head.
    The attention terms count the m x (n_past + m) matrix the fused kernel computes; with n_past = 0
    it is a prefill of m tokens."""
    n, d, inter = m, shape.hidden, shape.intermediate
    q_dim = shape.num_heads * shape.head_dim
    kv_dim = shape.num_kv_heads * shape.head_dim
    proj = 2 * n * d * q_dim * 2 + 2 * 2 * n * d * kv_dim  # q, o; k, v
    layer = proj + 2 * (2 * n * (n_past + n) * q_dim) + 3 * (2 * n * d * inter)
    return float(layer * shape.num_layers + 2 * d * shape.vocab)


def dense_prefill_flops(shape: LlamaShape, n_tokens: int) -> float:
    """Prefill FLOPs with nothing pruned: all n tokens go through every layer."""
    return prefill_flops(shape, [n_tokens] * shape.num_layers)


# ---- selection before the language model (selection.py) --------------------------------------


def kcentre_flops(m: int, k: int, dims: int, seeded: bool = False) -> float:
    """Greedy k-centre of k picks among m points of `dims` dimensions: one (m, dims) @ (dims, 1) product
    for the start (distance to the mean; none when seeded) and one per pick but the last (a seed's
    column comes in one (m, dims) @ (dims, s) product)."""
    return float(2 * m * dims * (min(k, m) - seeded)) if m and k else 0.0


def near_flops(m: int, locations: int) -> float:
    """Squared 3D distances of m tokens to the question's locations: one (m, 3) @ (3, K) product."""
    return float(2 * m * 3 * locations)


def merge_flops(m: int, k: int, feature_dim: int) -> float:
    """Assigning m tokens to their nearest of k kept ones: (m, 3) @ (3, k) squared distances and
    (m, C) @ (C, k) cosine similarities (the tie-break)."""
    return float(2 * m * k * (3 + feature_dim))


def input_scoring_flops(shape: LlamaShape, rows: int, n_tokens: int) -> float:
    """Layer 0's score of the input embeddings (a query selection): the k projection of all n tokens,
    then the one-row score (scoring_flops). Layer 0 projects the survivors' keys again when it runs."""
    kv_dim = shape.num_kv_heads * shape.head_dim
    return float(2 * n_tokens * shape.hidden * kv_dim) + scoring_flops(shape, rows, n_tokens)
