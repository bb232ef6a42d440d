"""Gated prefill: a LLaMA forward pass that drops spatial tokens between layers, and its decode loop.

AdaToken-3D / PyramidDrop / FastV prune the spatial (3D patch) tokens of a LLaVA-3D prompt inside the
language model's prefill: layer l sees fewer tokens than layer l-1, and its KV cache keeps only the
tokens that ran in it. transformers' forward runs every layer on the same sequence, so this file is
its own explicit loop (nanoGPT style) over the modules and weights of a `LlamaForCausalLM`.
Attention runs in torch's fused scaled_dot_product_attention; no full attention matrix is ever built.

Policies (what to cut, where): gating_policy.py.

Score at a pruning layer l, n tokens entering it with hidden states x [n, d] and positions p [n]:
    h = input_layernorm_l(x);  K = rope(k_proj_l(h), p)          [Hkv, n, hd]  (all n keys)
    Q = rope(q_proj_l(h[-r:]), p[-r:])                           [H, r, hd]    r = score rows
    A = softmax(Q K^T / sqrt(hd)) in float32, causal (row j sees keys <= n-r+j); query head i uses
        kv head i // (H / Hkv), as transformers' repeat_kv
    score = A averaged over heads and rows                       [n]
r = 1 (the last prompt token) by default; with `~question` r = every token after the last spatial
token (the question and "ASSISTANT:"), the text-guided raters of SparseVLM: a question names the
objects it is about, and by the first cut the words naming them already attend to their tokens,
where the last token may not yet (docs/gating.md measures both raters on the shipped model).

Text and location tokens (spatial_mask False) are always kept; among the spatial columns the top-k
(k from the policy) survive, in original order. This is the released AdaToken-3D / PyramidDrop rule
(last prompt token, the pruning layer's own norm, q/k and rotary), computed inside layer l: the k
projection of layer l is done once for all n tokens, the score uses it, then layer l's attention
and MLP run on the survivors only, with the survivors' rows of that k (q, v projected for the
survivors). FLOPs: see flops.py, "Gated prefill".

Positions. Default (FastV): a token keeps its original rotary position (its prompt index) in every
layer. renumber_positions=True (PyramidDrop): at each cut the survivors are renumbered 0..n_l-1.
Decoding, one rule for both: in each layer the t-th generated token (t = 0, 1, ...) has position
(last prompt position in that layer's cache) + 1 + t, i.e. T + t when positions are kept and
n_l + t when renumbered (n_l prompt tokens in layer l). The last prompt token must be text (it is the
scoring query), so it is never pruned and the new token always sits right after it. A gated prefill
over prompt + generated tokens, replaying the same cuts (forced_keep), computes the same numbers.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from .device import now
from .flops import LlamaShape, prefill_flops, scoring_flops
from .gating_policy import GatingPolicy, ratio_count


# ---- keep counts -----------------------------------------------------------------------------


def mass_count(scores: torch.Tensor, p: float) -> int:
    """Size of the smallest set of scores [n] (>= 0) whose sum is at least p of their total."""
    if scores.numel() == 0:
        return 0
    c = scores.float().sort(descending=True).values.cumsum(0)  # [n]
    # first prefix reaching p * total; the total is the same cumsum's last entry, so p = 1 ends there
    return min(int(torch.searchsorted(c, (p * c[-1]).reshape(1)).item()) + 1, scores.numel())


def keep_count(
    policy: GatingPolicy, layer: int, n_original: int, n_current: int, spatial_scores: torch.Tensor | None = None
) -> int:
    """Spatial tokens to keep at pruning layer `layer`, n_current of them alive (never more than that).

    spatial_scores [n_current]: the alive spatial tokens' scores, needed by mass only.
    """
    if policy.kind == "mass":
        k = mass_count(spatial_scores, policy.mass)
        k = min(max(k, ratio_count(policy.min_keep, n_original)), ratio_count(policy.max_keep, n_original))
    else:
        k = ratio_count(policy.ratios[policy.layers.index(layer)], n_original)
    return min(k, n_current)


# ---- KV cache -------------------------------------------------------------------------------


class LayerCache:
    """One layer's keys and values: the prompt tokens that ran in this layer, then the decoded tokens.

    Stored in a buffer with room for `reserve` decoded tokens (it grows by doubling past that), so a
    decode step writes one slot instead of copying the whole cache.
    """

    def __init__(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        next_position: int,
        reserve: int = 0,
    ):
        b, hkv, n, hd = k.shape  # [1, Hkv, n, hd], rotary already applied to k
        self._k = k.new_empty(b, hkv, n + reserve, hd)
        self._v = v.new_empty(b, hkv, n + reserve, hd)
        self._k[:, :, :n] = k
        self._v[:, :, :n] = v
        self.n = n  # valid entries
        self.tokens = tokens  # [n_prompt] original prompt index of each cached prompt token
        self.positions = positions  # [n_prompt] their rotary positions
        self.next_position = next_position  # rotary position of the next appended token

    @property
    def k(self) -> torch.Tensor:
        return self._k[:, :, : self.n]  # [1, Hkv, n, hd]

    @property
    def v(self) -> torch.Tensor:
        return self._v[:, :, : self.n]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add m tokens' k, v [1, Hkv, m, hd]; return the whole cache [1, Hkv, n+m, hd]."""
        m = k.shape[2]
        if self.n + m > self._k.shape[2]:
            self.ensure_capacity(self.n + max(self.n, 16, m))  # doubling
        self._k[:, :, self.n : self.n + m] = k
        self._v[:, :, self.n : self.n + m] = v
        self.n += m
        self.next_position += m
        return self.k, self.v

    def copy(self, reserve: int = 0) -> "LayerCache":
        """An independent copy (a cached prefix that several continuations extend)."""
        return LayerCache(self.k, self.v, self.tokens, self.positions, self.next_position, reserve)

    @classmethod
    def empty(cls, like: torch.Tensor, num_kv_heads: int, head_dim: int, reserve: int, batch: int = 1) -> "LayerCache":
        """No tokens yet, room for `reserve` (a scene prefix is built by extending an empty cache; batched
        questions each get an empty row after a shared prefix)."""
        k = like.new_empty(batch, num_kv_heads, 0, head_dim)
        none = torch.zeros(0, dtype=torch.long, device=like.device)
        return cls(k, k, none, none, 0, reserve)

    def ensure_capacity(self, total: int) -> None:
        """Room for `total` entries, grown once to exactly that if needed (a long question or answer after
        a cached prefix), rather than doubled by append."""
        if total > self._k.shape[2]:
            more = total - self._k.shape[2]
            self._k = torch.cat([self._k, self._k.new_empty(*self._k.shape[:2], more, self._k.shape[3])], dim=2)
            self._v = torch.cat([self._v, self._v.new_empty(*self._v.shape[:2], more, self._v.shape[3])], dim=2)

    def truncate(self, n: int) -> None:
        """Forget everything after the first n entries (a question's tokens after a cached prefix):
        the prefix's entries are untouched by appends, so no copy is needed to reuse it."""
        self.next_position -= self.n - n
        self.n = n

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (questions that have not finished)."""
        self._k, self._v = self._k[rows], self._v[rows]

    @property
    def nbytes(self) -> int:
        return self._k.numel() * self._k.element_size() * 2


# ---- the gated model ------------------------------------------------------------------------


@dataclass
class PrefillResult:
    logits: torch.Tensor  # [1, V] of the last prompt position
    caches: list[LayerCache]  # one per layer, holding that layer's surviving tokens
    tokens_per_layer: list[int]  # tokens whose attention and MLP ran in layer i
    spatial_per_layer: list[int]  # spatial tokens among them
    keys_per_layer: list[int]  # tokens whose k projection ran in layer i (> tokens at a scored cut)
    kept_spatial: torch.Tensor  # [k] original indices of the spatial tokens surviving the last cut
    keep_trace: dict[int, torch.Tensor]  # pruning layer -> original indices of the spatial tokens kept there
    scores: dict[int, torch.Tensor]  # scored layer -> [T] float32 score of each prompt token, NaN if already pruned
    prefill_flops: float  # as run, scoring included
    prefill_flops_dense: float  # same inputs, nothing pruned
    scoring_flops: float
    scoring_ms: float  # scoring and selection (top-k / random draw / replay lookup)
    prefill_ms: float
    policy: str  # str(policy), plus the seed for random and "replayed" for a forced_keep run


class GatedLlama:
    """Prefill with per-layer token pruning and greedy decoding over the weights of a LlamaForCausalLM."""

    def __init__(self, model):
        self.model = model
        cfg = model.config
        self.shape = LlamaShape.from_config(cfg)
        self.layers = model.model.layers[: cfg.num_hidden_layers]
        self.rotary = model.model.rotary_emb
        self.H, self.Hkv, self.hd = self.shape.num_heads, self.shape.num_kv_heads, self.shape.head_dim

    @property
    def device(self) -> torch.device:
        return self.model.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.lm_head.weight.dtype

    # ---- prefill -----------------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(
        self,
        inputs_embeds: torch.Tensor,
        spatial_mask: torch.Tensor,
        policy: GatingPolicy,
        *,
        renumber_positions: bool = False,
        score_queries: int | None = None,
        seed: int = 0,
        forced_keep: dict[int, torch.Tensor] | None = None,
        reserve: int = 0,
    ) -> PrefillResult:
        """inputs_embeds [1, T, d], spatial_mask [T] bool (True = prunable spatial token) -> PrefillResult.

        score_queries: rows of the score, overriding the policy's raters (policy.score_rows).

        forced_keep: {layer: original indices of the spatial tokens to keep} (a keep_trace) replaces the
        policy's cuts and scoring. reserve: decode slots to preallocate in each layer's cache.
        """
        t_start = now(self.device)
        L, H, Hkv, hd = self.shape.num_layers, self.H, self.Hkv, self.hd
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[0] != 1 or inputs_embeds.shape[2] != self.shape.hidden:
            raise ValueError(f"inputs_embeds must be [1, T, {self.shape.hidden}], got {list(inputs_embeds.shape)}")
        T = inputs_embeds.shape[1]
        if spatial_mask.shape != (T,) or spatial_mask.dtype != torch.bool:
            raise ValueError(
                f"spatial_mask must be a bool tensor of shape [{T}], "
                f"got {spatial_mask.dtype} {list(spatial_mask.shape)}"
            )
        if policy.pre is not None:
            raise ValueError(
                f"{policy} selects tokens before the language model: run it through SceneAnswerer "
                "(selection.py), and only its in-LM cuts here"
            )
        if score_queries is None:
            score_queries = policy.score_rows(spatial_mask)
        if not 1 <= score_queries <= T:
            raise ValueError(f"score_queries must be in 1..{T}, got {score_queries}")
        policy.check_layers(L)
        for layer in forced_keep or ():
            if not 0 < layer < L:
                raise ValueError(f"forced_keep layer {layer} is out of range: must be in 1..{L - 1}")
        dev = self.device

        x = inputs_embeds.to(dev, self.dtype)  # [1, n, d], n = tokens alive (T before any cut)
        spatial = spatial_mask.to(dev)  # [n]
        if bool(spatial[-1]):
            raise ValueError("the last prompt token must be text: it is the scoring query and the decode anchor")
        tokens = torch.arange(T, device=dev)  # [n] original index of each alive token
        pos = tokens  # [n] rotary positions
        last_pos = T - 1  # python copy of pos[-1] (the last token is text, never pruned): no device sync
        n_spatial0 = int(spatial.sum())
        n_spatial = n_spatial0
        cuts = set(forced_keep) if forced_keep is not None else set(policy.layers)
        gen = torch.Generator().manual_seed(seed) if policy.kind == "random" else None

        caches, tokens_per_layer, spatial_per_layer, keys_per_layer = [], [], [], []
        keep_trace, scores = {}, {}
        scoring, scoring_ms = 0.0, 0.0
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)  # [1, n, d]
            n_in, k = x.shape[1], None
            if i in cuts and n_spatial > 0:
                t0 = now(self.device)
                sp = spatial.nonzero()[:, 0]  # [n_spatial] alive indices of the spatial tokens
                if forced_keep is not None:
                    chosen = self._replay(forced_keep[i], tokens, spatial)
                elif policy.kind == "random":
                    k_keep = keep_count(policy, i, n_spatial0, n_spatial)
                    chosen = sp[torch.randperm(n_spatial, generator=gen)[:k_keep].to(dev)]
                else:
                    k = attn.k_proj(h)  # [1, n_in, Hkv*hd]: every key, the score needs them all
                    s = self._score(attn, h, k, pos, score_queries)  # [n_in] float32
                    scores[i] = torch.full((T,), float("nan"), device=dev).index_copy_(0, tokens, s)
                    scoring += scoring_flops(self.shape, score_queries, n_in)
                    k_keep = keep_count(policy, i, n_spatial0, n_spatial, s[sp])
                    chosen = sp[s[sp].topk(k_keep).indices]
                keep = ~spatial  # text and location tokens always stay
                keep[chosen] = True
                keep = keep.nonzero()[:, 0]  # [n_out] alive indices, in original order
                x, h, tokens, spatial, pos = x[:, keep], h[:, keep], tokens[keep], spatial[keep], pos[keep]
                if k is not None:
                    k = k[:, keep]
                n_spatial = chosen.numel()
                keep_trace[i] = tokens[spatial]
                if renumber_positions:
                    pos = torch.arange(keep.numel(), device=dev)
                    last_pos = keep.numel() - 1
                scoring_ms += (now(self.device) - t0) * 1e3

            n = x.shape[1]
            keys_per_layer.append(n_in if k is not None else n)
            if k is None:
                k = attn.k_proj(h)
            q = attn.q_proj(h).view(1, n, H, hd).transpose(1, 2)  # [1, H, n, hd]
            k = k.view(1, n, Hkv, hd).transpose(1, 2)  # [1, Hkv, n, hd]
            v = attn.v_proj(h).view(1, n, Hkv, hd).transpose(1, 2)  # [1, Hkv, n, hd]
            cos, sin = self.rotary(x, pos[None])  # [1, n, hd]
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            # causal over the survivors in original order, which is also their position order
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True, scale=attn.scaling)
            x = x + attn.o_proj(a.transpose(1, 2).reshape(1, n, H * hd))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
            caches.append(LayerCache(k, v, tokens, pos, last_pos + 1, reserve))
            tokens_per_layer.append(n)
            spatial_per_layer.append(n_spatial)

        logits = self.model.lm_head(self.model.model.norm(x[:, -1:]))[:, -1]  # [1, V], last position only
        prefill_ms = (now(self.device) - t_start) * 1e3
        description = str(policy)
        if forced_keep is not None:
            description += " replayed"
        elif policy.kind == "random":
            description += f" seed={seed}"
        return PrefillResult(
            logits=logits,
            caches=caches,
            tokens_per_layer=tokens_per_layer,
            spatial_per_layer=spatial_per_layer,
            keys_per_layer=keys_per_layer,
            kept_spatial=tokens[spatial],
            keep_trace=keep_trace,
            scores=scores,
            prefill_flops=prefill_flops(self.shape, tokens_per_layer, keys_per_layer, scoring),
            prefill_flops_dense=prefill_flops(self.shape, [T] * L),
            scoring_flops=scoring,
            scoring_ms=scoring_ms,
            prefill_ms=prefill_ms,
            policy=description,
        )

    @torch.inference_mode()
    def input_scores(self, inputs_embeds: torch.Tensor, rows: int) -> torch.Tensor:
        """Layer 0's score of its input (a cut at the input of layer 0, selection.py): inputs_embeds [1, T, d]
        -> [T] float32, the attention of the last `rows` tokens, as at any pruning layer (_score)."""
        layer = self.layers[0]
        x = inputs_embeds.to(self.device, self.dtype)
        h = layer.input_layernorm(x)  # [1, T, d]
        pos = torch.arange(x.shape[1], device=self.device)
        return self._score(layer.self_attn, h, layer.self_attn.k_proj(h), pos, rows)

    def _score(self, attn, h: torch.Tensor, k: torch.Tensor, pos: torch.Tensor, rows: int) -> torch.Tensor:
        """Attention of the last `rows` tokens to all n keys, averaged over heads and rows: [n] float32.

        h [1, n, d] normed hidden states, k [1, n, Hkv*hd] their k projection (before rotary), pos [n].
        Only `rows` query rows are computed, never the n x n matrix.
        """
        H, Hkv, hd = self.H, self.Hkv, self.hd
        n, G = h.shape[1], H // Hkv
        q = attn.q_proj(h[:, -rows:]).view(1, rows, H, hd).transpose(1, 2)  # [1, H, r, hd]
        kk = k.view(1, n, Hkv, hd).transpose(1, 2)  # [1, Hkv, n, hd]
        cos, sin = self.rotary(h, pos[None])  # [1, n, hd]
        # apply_rotary_pos_emb rotates a pair of same-length tensors; q and k differ in length here
        q = apply_rotary_pos_emb(q, q, cos[:, -rows:], sin[:, -rows:])[0]
        kk = apply_rotary_pos_emb(kk, kk, cos, sin)[0]
        # group query heads by their kv head (head i uses kv head i // G): no repeated keys needed
        s = q.float().reshape(Hkv, G * rows, hd) @ kk[0].float().transpose(1, 2)  # [Hkv, G*r, n]
        s = s.view(Hkv, G, rows, n) * attn.scaling
        row_at = torch.arange(n - rows, n, device=h.device)  # each row's own index
        s = s.masked_fill(torch.arange(n, device=h.device) > row_at[:, None], float("-inf"))  # causal
        return s.softmax(dim=-1).mean(dim=(0, 1, 2))  # [n]

    @staticmethod
    def _replay(kept: torch.Tensor, tokens: torch.Tensor, spatial: torch.Tensor) -> torch.Tensor:
        """Original indices of spatial tokens to keep -> their alive indices; ValueError if one is not alive."""
        kept = kept.to(tokens.device)
        idx = torch.searchsorted(tokens, kept).clamp(max=tokens.numel() - 1)  # tokens is sorted
        if not bool((tokens[idx] == kept).all() & spatial[idx].all()):
            raise ValueError("forced_keep names tokens that are not alive spatial tokens at that layer")
        return idx

    # ---- decoding ----------------------------------------------------------------------------

    @torch.inference_mode()
    def extend(
        self,
        inputs_embeds: torch.Tensor,
        caches: list[LayerCache],
        positions: torch.Tensor | None = None,
        key_valid: torch.Tensor | None = None,
        abandon=None,
        logits: bool = True,
        shared: list[LayerCache] | None = None,
    ) -> torch.Tensor | None:
        """Continue a prefill: m more prompt tokens [B, m, d] attend to every layer's cache and causally
        to each other -> logits [B, V] of the last position; appends them to the caches.

        What a cached scene prefix needs: a dense prefill of the prefix (extending empty caches), then
        extend with the question's tokens, equals the dense prefill of the whole prompt (to float rounding).
        positions [B, m]: the new tokens' rotary positions, the same in every layer (a dense cache);
        default, B = 1: in layer l they continue from caches[l].next_position, as decoding does (the
        module docstring). key_valid [B, n + m] bool: the keys each row may see (False: the left padding
        of a shorter question in a batch). abandon(layers_done) -> True stops between layers and
        returns None, the caches then half-written. logits=False returns None when done (a prefix).
        Fused attention: no mask for one token or an empty cache, else [B, 1, m, n + m] booleans.

        shared: one-row caches every row attends to before its own (a scene prefix under a batch of
        questions; key_valid then covers the rows' own keys only): read once for the whole batch, never
        copied per row (shared_prefix_attention).
        """
        H, Hkv, hd = self.H, self.Hkv, self.hd
        x = inputs_embeds.to(self.device, self.dtype)
        B, m = x.shape[:2]
        step = torch.arange(m, device=self.device)
        if positions is None:
            pos = torch.cat([c.next_position + step for c in caches])[None]  # [1, L*m]
            cos, sin = self.rotary(x, pos)  # [1, L*m, hd]: one rotary call for all layers
        else:
            cos, sin = self.rotary(x, positions.to(self.device))  # [B, m, hd]
        n = caches[0].n  # a dense or batched cache: the same length in every layer
        mask = None
        if m > 1 and n > 0 or key_valid is not None:
            # new token j sees the n cached ones and new tokens 0..j; padding nowhere
            mask = torch.arange(n + m, device=self.device)[None] <= (n + step)[:, None]  # [m, n+m]
            if key_valid is not None:
                mask = mask[None, None] & key_valid.to(self.device)[:, None, None, :]  # [B, 1, m, n+m]
        if shared is not None:  # the rows' own keys each query sees, the same in every layer
            own = mask if mask is not None else torch.ones(1, 1, m, n + m, dtype=torch.bool, device=self.device)
            own = own.expand(B, 1, m, n + m)
        for i, (layer, cache) in enumerate(zip(self.layers, caches)):
            if abandon is not None and abandon(i):
                return None
            if positions is None:
                cos_i, sin_i = cos[:, i * m : (i + 1) * m], sin[:, i * m : (i + 1) * m]
            else:
                cos_i, sin_i = cos, sin
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(B, m, H, hd).transpose(1, 2)  # [B, H, m, hd]
            k = attn.k_proj(h).view(B, m, Hkv, hd).transpose(1, 2)  # [B, Hkv, m, hd]
            v = attn.v_proj(h).view(B, m, Hkv, hd).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos_i, sin_i)
            k, v = cache.append(k, v)  # [B, Hkv, n+m, hd]
            if shared is not None:
                a = shared_prefix_attention(q, shared[i].k, shared[i].v, k, v, own, attn.scaling)
            else:
                a = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, is_causal=mask is None and m > 1, enable_gqa=True, scale=attn.scaling
                )
            x = x + attn.o_proj(a.transpose(1, 2).reshape(B, m, H * hd))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        if not logits:
            return None
        return self.model.lm_head(self.model.model.norm(x[:, -1:]))[:, -1]  # [B, V]

    @torch.inference_mode()
    def decode_step(self, token: torch.Tensor, caches: list[LayerCache]) -> torch.Tensor:
        """token ids [1, 1] (or embeddings [1, 1, d]) -> logits [1, V]; appends to every layer's cache
        (extend by one token)."""
        if token.dtype in (torch.long, torch.int):
            token = self.model.model.embed_tokens(token.to(self.device))  # [1, 1, d]
        return self.extend(token, caches)

    def generate(
        self,
        inputs_embeds: torch.Tensor,
        spatial_mask: torch.Tensor,
        policy: GatingPolicy,
        max_new_tokens: int,
        eos_token_ids=(),
        on_token=None,
        should_stop=None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        sample_seed: int = 0,
        **prefill_kwargs,
    ) -> tuple[list[int], PrefillResult, float]:
        """Gated prefill, then decode steps -> (generated ids, PrefillResult, decode_ms); see decode."""
        check_sampling(max_new_tokens, temperature, top_p)
        pre = self.prefill(inputs_embeds, spatial_mask, policy, reserve=max_new_tokens, **prefill_kwargs)
        ids, decode_ms = self.decode(
            pre.logits,
            pre.caches,
            max_new_tokens,
            eos_token_ids,
            on_token,
            should_stop,
            temperature,
            top_p,
            sample_seed,
        )
        return ids, pre, decode_ms

    def decode(
        self,
        logits: torch.Tensor,
        caches: list[LayerCache],
        max_new_tokens: int,
        eos_token_ids=(),
        on_token=None,
        should_stop=None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        sample_seed: int = 0,
    ) -> tuple[list[int], float]:
        """From the prompt's last logits [1, V] and its caches: decode steps -> (generated ids, decode_ms).

        temperature 0 is greedy; temperature > 0 samples from softmax(logits / temperature) restricted
        to the smallest set of tokens holding top_p of the probability (nucleus), with a torch
        generator seeded by sample_seed, so a sampled answer is reproducible.

        on_token(ids) is called after each generated token with the ids so far (EOS included; do not
        modify the list). should_stop() is checked before each decode step. The stop reason follows from
        the ids: last id in eos_token_ids -> eos; max_new_tokens ids -> limit; otherwise cancelled.
        decode_ms is the model time of the decode steps only (callbacks excluded).
        """
        check_sampling(max_new_tokens, temperature, top_p)
        eos = frozenset(eos_token_ids)
        generator = torch.Generator(device=self.device).manual_seed(sample_seed) if temperature > 0 else None
        token = pick_token(logits, temperature, top_p, generator)  # [1, 1]
        ids = [int(token)]
        decode_ms = 0.0
        while True:
            if on_token is not None:
                on_token(ids)
            if ids[-1] in eos or len(ids) >= max_new_tokens:
                break
            if should_stop is not None and should_stop():
                break
            t0 = now(self.device)
            token = pick_token(self.decode_step(token, caches), temperature, top_p, generator)  # [1, 1]
            ids.append(int(token))  # int() waits for the device
            decode_ms += (now(self.device) - t0) * 1e3
        return ids, decode_ms

    @torch.inference_mode()
    def decode_batch(
        self,
        logits: torch.Tensor,
        caches: list[LayerCache],
        positions: torch.Tensor,
        key_valid: torch.Tensor,
        rows: list["DecodeRow"],
        eos_token_ids=(),
        top_p: float = 1.0,
        on_done=None,
        shared: list[LayerCache] | None = None,
    ) -> None:
        """decode for B questions at once: logits [B, V] of their prompts' last tokens, caches with B rows,
        positions [B] of each row's next token, key_valid [B, n] (False: padding). Each row stops on its
        own (EOS, its max_new_tokens, its should_stop) and leaves the batch; rows[b].ids and decode_ms are
        filled in, and on_done(b) is called as row b finishes. shared: a prefix every row attends to (extend).
        Per row the same choices as decode with its temperature and seed, so a batched answer is the answer
        the row would get alone."""
        eos = frozenset(eos_token_ids)
        for row in rows:
            check_sampling(row.max_new_tokens, row.temperature, top_p)
            if row.temperature > 0:
                row.generator = torch.Generator(device=self.device).manual_seed(row.seed)
        alive = list(range(len(rows)))  # batch row i is question alive[i]
        t0 = now(self.device)
        while alive:
            tokens = [
                pick_token(logits[i : i + 1], rows[b].temperature, top_p, rows[b].generator)
                for i, b in enumerate(alive)
            ]
            finished = []
            for i, (b, token) in enumerate(zip(alive, tokens)):
                row = rows[b]
                row.ids.append(int(token))
                row.decode_ms = (now(self.device) - t0) * 1e3
                if row.on_token is not None:
                    row.on_token(row.ids)
                if row.ids[-1] in eos or len(row.ids) >= row.max_new_tokens or (row.should_stop and row.should_stop()):
                    finished.append(i)
                    if on_done is not None:
                        on_done(b)
            if finished:
                keep = [i for i in range(len(alive)) if i not in finished]
                if not keep:
                    return
                index = torch.tensor(keep, device=self.device)
                for cache in caches:
                    cache.select_rows(index)
                tokens = [tokens[i] for i in keep]
                positions, key_valid = positions[index], key_valid[index]
                alive = [alive[i] for i in keep]
            token = torch.cat(tokens)  # [B', 1]
            embeds = self.model.model.embed_tokens(token.to(self.device))  # [B', 1, d]
            key_valid = torch.cat([key_valid, key_valid.new_ones(len(alive), 1)], dim=1)
            logits = self.extend(embeds, caches, positions[:, None], key_valid, shared=shared)
            positions = positions + 1


@dataclass
class DecodeRow:
    """One question of a batched decode (GatedLlama.decode_batch): its settings in, its answer out."""

    max_new_tokens: int
    temperature: float = 0.0
    seed: int = 0
    on_token: object = None  # (ids so far) -> None
    should_stop: object = None  # () -> bool
    ids: list = None
    decode_ms: float = 0.0
    generator: object = None

    def __post_init__(self):
        self.ids = [] if self.ids is None else self.ids


def shared_prefix_attention(
    q: torch.Tensor,
    shared_k: torch.Tensor,
    shared_v: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Attention of B rows' queries q [B, H, m, hd] to one shared prefix (shared_k, shared_v [1, Hkv, P, hd],
    no mask) and then to each row's own keys (k, v [B, Hkv, n, hd], mask [B, 1, m, n] True = visible)
    -> [B, H, m, hd], as if every row's cache were prefix + own keys.

    The prefix part folds all rows' queries into one product per kv head, so the prefix is read once
    per step for the whole batch (decoding a batch is then not B times the prefix's memory traffic);
    the two softmaxes are joined by their log-sum-exp. float32 throughout."""
    B, H, m, hd = q.shape
    Hkv = shared_k.shape[1]
    G = H // Hkv  # query head i uses kv head i // G (transformers' repeat_kv)
    qg = q.float().reshape(B, Hkv, G * m, hd)  # [B, Hkv, G*m, hd]
    # prefix: [Hkv, B*G*m, hd] @ [Hkv, hd, P]
    folded = qg.transpose(0, 1).reshape(Hkv, B * G * m, hd)
    s_p = (folded @ shared_k[0].float().transpose(1, 2)) * scale  # [Hkv, B*G*m, P]
    out_p, lse_p = _softmax_weighted(s_p, shared_v[0].float())  # [Hkv, B*G*m, hd], [Hkv, B*G*m, 1]
    out_p = out_p.reshape(Hkv, B, G * m, hd).transpose(0, 1)  # [B, Hkv, G*m, hd]
    lse_p = lse_p.reshape(Hkv, B, G * m, 1).transpose(0, 1)
    # own keys: [B, Hkv, G*m, hd] @ [B, Hkv, hd, n]
    s_o = (qg @ k.float().transpose(2, 3)) * scale  # [B, Hkv, G*m, n]
    visible = mask[:, :, None].expand(B, 1, G, m, mask.shape[-1]).reshape(B, 1, G * m, -1)
    out_o, lse_o = _softmax_weighted(s_o.masked_fill(~visible, float("-inf")), v.float())
    lse = torch.logaddexp(lse_p, lse_o)
    out = out_p * (lse_p - lse).exp() + out_o * (lse_o - lse).exp()  # [B, Hkv, G*m, hd]
    return out.reshape(B, H, m, hd).to(q.dtype)


def _softmax_weighted(s: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(s) @ v and logsumexp(s) (keepdim) with one exp pass; a row of only -inf gives 0 and -inf."""
    top = s.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    e = (s - top).exp_()
    total = e.sum(-1, keepdim=True)
    return ((e @ v) / total).nan_to_num_(0.0), top + total.log()


def check_sampling(max_new_tokens: int, temperature: float, top_p: float) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature} and {top_p}")


def pick_token(logits: torch.Tensor, temperature: float, top_p: float, generator) -> torch.Tensor:
    """logits [1, V] -> the next token [1, 1]: argmax without a generator, else a nucleus sample."""
    if generator is None:
        return logits.argmax(dim=-1, keepdim=True)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= top_p  # beyond the nucleus
    sorted_probs[outside] = 0.0
    choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
    return order.gather(-1, choice)
