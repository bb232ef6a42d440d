"""A question about a scene -> an answer: LLaVA-3D spatial tokens, gated prefill, greedy decoding. ROS-free.

scene (perception.frontend.SceneGeometry)
  -> vision: CLIP patch features + 3D position embedding -> voxel mean               (vision_ms)
  -> a selection before the language model, if the policy has one (selection.py)   (selection_ms, its own work)
  -> projector -> llava_v1 prompt with the spatial tokens (and [x, y, z] location tokens) spliced in
  -> GatedLlama: prefill pruning spatial tokens by the policy (prefill_ms), decode (decode_ms)

A scene prefix (ScenePrefix): in the llava_v1 prompt everything up to the last spatial token (BOS, the
system prompt, "USER: ", the spatial tokens) does not depend on the question, and attention is causal,
so its KV cache is the same for every question about one scene snapshot. build_prefix prefills it once
(densely, or after a question-independent selection); answer_on_prefix and answer_batch then prefill
only each question's own tokens against it (GatedLlama.extend) and decode: the dense answer, to float
rounding, for a fraction of the prefill.
"""

import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .device import now
from .gating import DecodeRow, GatedLlama, LayerCache
from .flops import extend_flops, input_scoring_flops, prefill_flops
from .gating_policy import GatingPolicy, parse_gating
from .loader import load_llava3d
from .llava3d import parse_locations
from .selection import coarse_voxel_features, select


@dataclass
class SceneAnswer:
    text: str
    token_ids: List[int]
    stop_reason: str  # 'eos' | 'max_new_tokens' | 'cancelled'
    vision_ms: float
    prefill_ms: float
    decode_ms: float
    spatial_tokens: int  # entering the language model
    spatial_tokens_kept: int  # after the last cut
    text_tokens: int  # text and location tokens of the prompt
    prefill_flops: float
    prefill_flops_dense: float
    gating: str  # the policy that ran
    tokens_per_layer: List[int]  # tokens whose attention and MLP ran in each layer
    selection_flops: float = 0.0  # before the language model (in prefill_flops too)
    selection_ms: float = 0.0  # the selection's own work (part of the time before the prefill, not in vision_ms)
    prefix_reused: bool = False  # answered on a scene prefix cached before this question
    prefix_tokens: int = 0  # cached prompt tokens it attended to (0: the whole prompt was prefilled)


@dataclass
class ScenePrefix:
    """The KV cache of a scene prompt's question-independent part, for one scene snapshot and selection.

    Used in place by one question at a time (its tokens are appended, then truncated away) or copied
    into a batch; never changed otherwise."""

    scene: object  # the perception.frontend.SceneGeometry it was built from (identity = its views)
    gating: str  # the question-independent policy that chose its tokens ('none': all of them)
    caches: List[LayerCache]  # one per layer, num_tokens entries each
    num_tokens: int  # P: BOS, system prompt, "USER: " and the spatial tokens
    spatial_tokens: int  # the scene's spatial tokens, before any selection
    spatial_kept: int  # spatial tokens in the prefix
    vision_ms: float
    selection_ms: float
    selection_flops: float
    prefill_ms: float
    prefill_flops: float  # the prefix's prefill, the selection's FLOPs included

    @property
    def nbytes(self) -> int:
        return sum(cache.nbytes for cache in self.caches)


class SceneAnswerer:
    def __init__(self, model, tokenizer, path):
        self.model = model
        self.tokenizer = tokenizer
        self.path = path
        self.gated = GatedLlama(model.language_model)
        config = model.language_model.config
        eos = model.language_model.generation_config.eos_token_id if model.language_model.generation_config else None
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.eos_token_ids = frozenset(eos + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []))
        self.num_layers = config.num_hidden_layers
        self.context = config.max_position_embeddings
        # CLIP features per kept view, (stamp, frame) -> (P, C): a view's features never change, so the
        # vision tower runs once per keyframe, not once per query; entries leave with their views.
        self._view_features: Dict[Tuple[int, str], torch.Tensor] = {}

    @classmethod
    def load(cls, path, vision_tower_path=None, device='auto', dtype='auto', allow_pickle=False) -> 'SceneAnswerer':
        model, tokenizer, _ = load_llava3d(path, vision_tower_path or None, device, dtype, allow_pickle)
        return cls(model, tokenizer, path)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def is_untrained(self) -> bool:
        return self.model.is_untrained

    def policy(self, text: str) -> GatingPolicy:
        return parse_gating(text, self.num_layers)

    def clip_features(self, scene) -> torch.Tensor:
        """model.image_features(scene.images) (V, P, C), with the features of views seen before reused."""
        keys = list(zip(scene.stamps_ns, scene.frame_ids))
        missing = [i for i, key in enumerate(keys) if key not in self._view_features]
        if missing:
            for i, features in zip(missing, self.model.image_features(scene.images[missing])):
                self._view_features[keys[i]] = features
        self._view_features = {key: self._view_features[key] for key in keys}  # forget evicted views
        return torch.stack([self._view_features[key] for key in keys])

    def spatial_embeddings(self, scene) -> torch.Tensor:
        """model.spatial_embeddings(scene), with the CLIP features of views seen before reused."""
        model = self.model
        if scene.num_tokens == 0:
            return torch.zeros(0, model.config.hidden_size, dtype=self.dtype, device=self.device)
        return model.mm_projector(model.spatial_features(self.clip_features(scene), scene).to(self.dtype))  # (M, D)

    def _selected_inputs(self, question: str, scene, policy: GatingPolicy):
        """The prompt after the policy's selection before the language model -> (inputs, selection FLOPs,
        selection ms). Without one: the prompt of every spatial token. The time is the selection's own work
        (coarser pooling; the layer-0 score, with the whole prompt it needs; picking and merging), not the
        pooling, projector and prompt a dense answer runs too."""
        model, pre = self.model, policy.pre
        if pre is None or scene.num_tokens == 0:
            return model.build_inputs(question, self.spatial_embeddings(scene), self.tokenizer), 0.0, 0.0
        clip = self.clip_features(scene)  # (V, P, C)
        if pre.method == 'voxel':
            start = now(self.device)
            pooled = coarse_voxel_features(model, clip, scene, pre.amount)  # (M', C)
            selection_ms = (now(self.device) - start) * 1e3
            inputs = model.build_inputs(question, model.mm_projector(pooled.to(self.dtype)), self.tokenizer)
            return inputs, 0.0, selection_ms
        pooled = model.spatial_features(clip, scene).to(self.dtype)  # (M, C)
        start = now(self.device)
        scores, flops = None, 0.0
        if policy.selection_scores:
            full = model.build_inputs(question, model.mm_projector(pooled), self.tokenizer)
            rows = policy.score_rows(full.spatial_mask)
            scores = self.gated.input_scores(full.inputs_embeds, rows)[full.spatial_mask]  # (M,)
            flops += input_scoring_flops(self.gated.shape, rows, full.num_tokens)
        locations = None
        if pre.near:  # the points the question names, in the scene's fixed frame as its token centres
            locations = torch.tensor(parse_locations(question)[1], dtype=torch.float32).reshape(-1, 3)
        selected = select(pre, pooled, scene.tokens.centres, scores, locations=locations)
        selection_ms = (now(self.device) - start) * 1e3
        inputs = model.build_inputs(question, model.mm_projector(selected.features), self.tokenizer)
        return inputs, flops + selected.flops, selection_ms

    def text_tokens(self, question: str) -> int:
        """Text and location tokens of the prompt for this question (what a scene does not change)."""
        empty = torch.zeros(0, self.model.config.hidden_size, dtype=self.dtype, device=self.device)
        inputs = self.model.build_inputs(question, empty, self.tokenizer)
        return inputs.num_text + inputs.num_location + 1  # + the newline after <image> in a scene prompt

    def question_inputs(self, question: str) -> Tuple[torch.Tensor, int]:
        """The prompt after the last spatial token ("\\n", the question with its location tokens,
        " ASSISTANT:"): embeddings [1, m, d], and the whole prompt's text and location tokens."""
        placeholder = torch.zeros(1, self.model.config.hidden_size, dtype=self.dtype, device=self.device)
        inputs = self.model.build_inputs(question, placeholder, self.tokenizer)
        after = int(inputs.spatial_mask.nonzero()[-1]) + 1
        return inputs.inputs_embeds[:, after:], inputs.num_text + inputs.num_location

    @functools.cached_property
    def prompt_head_tokens(self) -> int:
        """Tokens before the spatial ones in a scene prompt (BOS, system prompt, "USER: "): the same for
        every prompt of this model, counted once."""
        placeholder = torch.zeros(1, self.model.config.hidden_size, dtype=self.dtype, device=self.device)
        return int(self.model.build_inputs('?', placeholder, self.tokenizer).spatial_mask.nonzero()[0])

    def build_prefix(self, scene, policy: GatingPolicy, reserve: int, abandon=None) -> Optional[ScenePrefix]:
        """Prefill the question-independent prefix of this scene's prompt (policy.question_independent),
        with room for `reserve` more tokens per cache. None for a scene without spatial tokens, or when
        abandon(layers done) said to stop between layers (a question came during a background refresh)."""
        if not policy.question_independent:
            raise ValueError(f'{policy} depends on the question: its scene prefix cannot be cached')
        if scene.num_tokens == 0:
            return None
        with torch.inference_mode():
            start = now(self.device)
            # any question: the prefix ends before it (the location tokens, the only question-dependent
            # inputs of a selection, are refused by question_independent)
            inputs, selection_flops, selection_ms = self._selected_inputs('?', scene, policy)
            vision_ms = (now(self.device) - start) * 1e3 - selection_ms
            P = int(inputs.spatial_mask.nonzero()[-1]) + 1
            start = now(self.device)
            embeds = inputs.inputs_embeds[:, :P]  # [1, P, d]
            gated = self.gated
            caches = [LayerCache.empty(embeds, gated.Hkv, gated.hd, P + reserve) for _ in range(self.num_layers)]
            gated.extend(embeds, caches, abandon=abandon, logits=False)
            if caches[-1].n != P:  # abandoned between layers
                return None
            prefill_ms = (now(self.device) - start) * 1e3
        return ScenePrefix(
            scene=scene,
            gating=str(policy),
            caches=caches,
            num_tokens=P,
            spatial_tokens=scene.num_tokens,
            spatial_kept=inputs.num_spatial,
            vision_ms=vision_ms,
            selection_ms=selection_ms,
            selection_flops=selection_flops,
            prefill_ms=prefill_ms,
            prefill_flops=extend_flops(gated.shape, P, 0) + selection_flops,
        )

    def _prefix_answer(
        self,
        prefix: ScenePrefix,
        built_now: bool,
        ids: List[int],
        max_new_tokens: int,
        m: int,
        text_tokens: int,
        prefill_ms: float,
        decode_ms: float,
    ) -> SceneAnswer:
        """The SceneAnswer of a question answered on a prefix; built_now: the prefix was prefilled for it
        (its vision, selection and prefill count in this answer)."""
        P, shape = prefix.num_tokens, self.gated.shape
        flops = extend_flops(shape, m, P)
        dense_tokens = P + m - prefix.spatial_kept + prefix.spatial_tokens
        return SceneAnswer(
            text=self.tokenizer.decode(ids, skip_special_tokens=True).strip(),
            token_ids=list(ids),
            stop_reason=self._stop_reason(ids, max_new_tokens),
            vision_ms=prefix.vision_ms if built_now else 0.0,
            prefill_ms=prefill_ms + (prefix.prefill_ms if built_now else 0.0),
            decode_ms=decode_ms,
            spatial_tokens=prefix.spatial_tokens,
            spatial_tokens_kept=prefix.spatial_kept,
            text_tokens=text_tokens,
            prefill_flops=flops + (prefix.prefill_flops if built_now else 0.0),
            prefill_flops_dense=prefill_flops(shape, [dense_tokens] * self.num_layers),
            gating=prefix.gating,
            tokens_per_layer=[] if not built_now else [P + m] * self.num_layers,
            selection_flops=prefix.selection_flops if built_now else 0.0,
            selection_ms=prefix.selection_ms if built_now else 0.0,
            prefix_reused=not built_now,
            prefix_tokens=P,
        )

    def answer_on_prefix(
        self,
        question: str,
        prefix: ScenePrefix,
        max_new_tokens: int,
        on_token: Optional[Callable[[str, int], None]] = None,
        should_stop: Optional[Callable[[], bool]] = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        built_now: bool = False,
    ) -> SceneAnswer:
        """answer() on a cached scene prefix: only the question's tokens are prefilled (the dense answer)."""
        with torch.inference_mode():
            suffix, text_tokens = self.question_inputs(question)
            m, P = suffix.shape[1], prefix.num_tokens
            self._check_context(P + m, prefix.spatial_kept, max_new_tokens)
            if should_stop is not None and should_stop():
                return self._prefix_answer(prefix, built_now, [], max_new_tokens, m, text_tokens, 0.0, 0.0)
            for cache in prefix.caches:
                cache.ensure_capacity(P + m + max_new_tokens)
            try:
                start = now(self.device)
                logits = self.gated.extend(suffix, prefix.caches)  # [1, V]
                prefill_ms = (now(self.device) - start) * 1e3
                ids, decode_ms = self.gated.decode(
                    logits,
                    prefix.caches,
                    max_new_tokens,
                    self.eos_token_ids,
                    self._streamer(on_token),
                    should_stop,
                    temperature,
                    top_p,
                    seed,
                )
            finally:
                for cache in prefix.caches:
                    cache.truncate(P)  # the prefix is reused as it was
        return self._prefix_answer(prefix, built_now, ids, max_new_tokens, m, text_tokens, prefill_ms, decode_ms)

    def answer_batch(
        self,
        questions: List[str],
        prefix: ScenePrefix,
        rows: List[DecodeRow],
        on_answer: Callable[[int, SceneAnswer], None],
        top_p: float = 1.0,
        on_tokens: Optional[List[Optional[Callable[[str, int], None]]]] = None,
    ) -> None:
        """Several questions on one cached prefix at once: their tokens prefilled as one batch (left-padded
        to the longest), then batched decoding where each stops on its own; on_answer(i, answer) as
        question i finishes. rows[i] carries question i's max_new_tokens, temperature, seed, should_stop."""
        B, P = len(questions), prefix.num_tokens
        dev = self.device
        with torch.inference_mode():
            suffixes = [self.question_inputs(q) for q in questions]
            lengths = [embeds.shape[1] for embeds, _ in suffixes]
            longest = max(lengths)
            for m, row in zip(lengths, rows):
                self._check_context(P + m, prefix.spatial_kept, row.max_new_tokens)
            embeds = torch.zeros(B, longest, self.model.config.hidden_size, dtype=self.dtype, device=dev)
            key_valid = torch.ones(B, longest, dtype=torch.bool, device=dev)  # the rows' own keys
            positions = torch.zeros(B, longest, dtype=torch.long, device=dev)
            for b, ((suffix, _), m) in enumerate(zip(suffixes, lengths)):
                pad = longest - m  # left padding: every question's last token in the last column
                embeds[b, pad:] = suffix[0]
                key_valid[b, :pad] = False
                positions[b] = (P - pad + torch.arange(longest, device=dev)).clamp(min=0)
            for b, on_token in enumerate(on_tokens or []):
                rows[b].on_token = self._streamer(on_token)
            # each question's own keys after the prefix, which all of them read and none copies
            reserve = longest + max(row.max_new_tokens for row in rows)
            gated = self.gated
            caches = [LayerCache.empty(embeds, gated.Hkv, gated.hd, reserve, B) for _ in prefix.caches]
            start = now(dev)
            logits = gated.extend(embeds, caches, positions, key_valid, shared=prefix.caches)  # [B, V]
            prefill_ms = (now(dev) - start) * 1e3

            def done(b: int) -> None:
                row = rows[b]
                answer = self._prefix_answer(
                    prefix, False, row.ids, row.max_new_tokens, lengths[b], suffixes[b][1], prefill_ms, row.decode_ms
                )
                on_answer(b, answer)

            gated.decode_batch(
                logits,
                caches,
                positions[:, -1] + 1,
                key_valid,
                rows,
                self.eos_token_ids,
                top_p,
                on_done=done,
                shared=prefix.caches,
            )

    def _stop_reason(self, ids: List[int], max_new_tokens: int) -> str:
        """Why decoding ended, from the ids it gave (none: cancelled before the first token)."""
        if ids and ids[-1] in self.eos_token_ids:
            return 'eos'
        return 'max_new_tokens' if len(ids) >= max_new_tokens else 'cancelled'

    def _check_context(self, prompt_tokens: int, spatial: int, max_new_tokens: int) -> None:
        if prompt_tokens + max_new_tokens > self.context:
            raise ValueError(
                f'the prompt ({prompt_tokens} tokens, {spatial} of them spatial) '
                f'plus max_new_tokens={max_new_tokens} exceeds the model context of '
                f'{self.context}; lower max_spatial_tokens or max_new_tokens'
            )

    def _streamer(self, on_token):
        """ids -> on_token(partial answer, tokens so far), or None."""
        if on_token is None:
            return None

        def stream(ids):
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            on_token(text.rstrip('\ufffd').strip(), len(ids))  # hold back a half UTF-8 character

        return stream

    def answer(
        self,
        question: str,
        scene,
        policy: GatingPolicy,
        max_new_tokens: int,
        on_token: Optional[Callable[[str, int], None]] = None,
        should_stop: Optional[Callable[[], bool]] = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> SceneAnswer:
        """on_token(partial answer, tokens so far) after each generated token; should_stop() ends it early.
        temperature 0 decodes greedily, > 0 samples (nucleus top_p) reproducibly from `seed`."""
        with torch.inference_mode():
            start = now(self.device)
            inputs, selection_flops, selection_ms = self._selected_inputs(question, scene, policy)
            vision_ms = (now(self.device) - start) * 1e3 - selection_ms
            spatial_tokens = scene.num_tokens if policy.pre is not None else inputs.num_spatial
            dense_tokens = inputs.num_tokens - inputs.num_spatial + spatial_tokens
            in_lm = policy
            if policy.pre is not None:  # the cuts after the selection; their raters only where they score
                in_lm = dataclasses.replace(policy, pre=None, raters=policy.raters if policy.cuts_score else 'last')
            self._check_context(inputs.num_tokens, inputs.num_spatial, max_new_tokens)
            if should_stop is not None and should_stop():
                return SceneAnswer(
                    '',
                    [],
                    'cancelled',
                    vision_ms,
                    0.0,
                    0.0,
                    spatial_tokens,
                    inputs.num_spatial,
                    inputs.num_text + inputs.num_location,
                    0.0,
                    0.0,
                    str(policy),
                    [],
                    selection_flops,
                    selection_ms,
                )

            ids, prefill, decode_ms = self.gated.generate(
                inputs.inputs_embeds,
                inputs.spatial_mask,
                in_lm,
                max_new_tokens,
                self.eos_token_ids,
                on_token=self._streamer(on_token),
                should_stop=should_stop,
                temperature=temperature,
                top_p=top_p,
                sample_seed=seed,
            )
        return SceneAnswer(
            text=self.tokenizer.decode(ids, skip_special_tokens=True).strip(),
            token_ids=ids,
            stop_reason=self._stop_reason(ids, max_new_tokens),
            vision_ms=vision_ms,
            prefill_ms=prefill.prefill_ms,
            decode_ms=decode_ms,
            spatial_tokens=spatial_tokens,
            spatial_tokens_kept=prefill.spatial_per_layer[-1],
            text_tokens=inputs.num_text + inputs.num_location,
            prefill_flops=prefill.prefill_flops + selection_flops,
            prefill_flops_dense=prefill_flops(self.gated.shape, [dense_tokens] * self.num_layers),
            gating=prefill.policy if policy.pre is None else str(policy),
            tokens_per_layer=list(prefill.tokens_per_layer),
            selection_flops=selection_flops,
            selection_ms=selection_ms,
        )

    def warmup(self, scene) -> None:
        """One short answer so the first real query does not pay for lazy initialisation."""
        self.answer('What is in the scene?', scene, parse_gating('none', self.num_layers), 2)
