"""A question about a scene -> an answer: LLaVA-3D spatial tokens, gated prefill, greedy decoding. ROS-free.

scene (perception.frontend.SceneGeometry)
  -> vision: CLIP patch features + 3D position embedding -> voxel mean               (vision_ms)
  -> a selection before the language model, if the policy has one (selection.py)   (selection_ms, its own work)
  -> projector -> llava_v1 prompt with the spatial tokens (and [x, y, z] location tokens) spliced in
  -> GatedLlama: prefill pruning spatial tokens by the policy (prefill_ms), decode (decode_ms)
"""

import dataclasses
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .device import now
from .gating import GatedLlama
from .flops import input_scoring_flops, prefill_flops
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
            if inputs.num_tokens + max_new_tokens > self.context:
                raise ValueError(
                    f'the prompt ({inputs.num_tokens} tokens, {inputs.num_spatial} of them spatial) '
                    f'plus max_new_tokens={max_new_tokens} exceeds the model context of '
                    f'{self.context}; lower max_spatial_tokens or max_new_tokens'
                )
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

            def stream(ids):
                if on_token is not None:
                    text = self.tokenizer.decode(ids, skip_special_tokens=True)
                    on_token(text.rstrip('\ufffd').strip(), len(ids))  # hold back a half UTF-8 character

            ids, prefill, decode_ms = self.gated.generate(
                inputs.inputs_embeds,
                inputs.spatial_mask,
                in_lm,
                max_new_tokens,
                self.eos_token_ids,
                on_token=stream,
                should_stop=should_stop,
                temperature=temperature,
                top_p=top_p,
                sample_seed=seed,
            )
        stop_reason = (
            'eos' if ids[-1] in self.eos_token_ids else 'max_new_tokens' if len(ids) >= max_new_tokens else 'cancelled'
        )
        return SceneAnswer(
            text=self.tokenizer.decode(ids, skip_special_tokens=True).strip(),
            token_ids=ids,
            stop_reason=stop_reason,
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
