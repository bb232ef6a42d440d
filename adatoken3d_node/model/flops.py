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


def layer_prefill_flops(shape: LlamaShape, n_tokens: int) -> float:
    """FLOPs of one decoder layer over n new tokens attending to the same n tokens (no past)."""
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")
    n, d, m = n_tokens, shape.hidden, shape.intermediate
    q_dim = shape.num_heads * shape.head_dim
    kv_dim = shape.num_kv_heads * shape.head_dim
    proj = 2 * n * d * q_dim * 2 + 2 * n * d * kv_dim * 2  # q, o and k, v
    attn = 2 * (2 * n * n * q_dim)  # scores q@k^T and weighted sum a@v, full n x n
    mlp = 3 * (2 * n * d * m)  # gate, up, down
    return float(proj + attn + mlp)


def prefill_flops(shape: LlamaShape, tokens_per_layer: list[int]) -> float:
    """Prefill FLOPs when tokens_per_layer[i] tokens enter layer i, plus the last-position lm_head."""
    if len(tokens_per_layer) != shape.num_layers:
        raise ValueError(f"tokens_per_layer has {len(tokens_per_layer)} entries, model has {shape.num_layers} layers")
    layers = sum(layer_prefill_flops(shape, n) for n in tokens_per_layer)
    lm_head = 2 * shape.hidden * shape.vocab
    return float(layers + lm_head)


def dense_prefill_flops(shape: LlamaShape, n_tokens: int) -> float:
    """Prefill FLOPs with nothing pruned: all n tokens go through every layer."""
    return prefill_flops(shape, [n_tokens] * shape.num_layers)
