"""A question about a scene -> an answer: LLaVA-3D spatial tokens, gated prefill, greedy decoding. ROS-free.

scene (perception.frontend.SceneGeometry)
  -> vision: CLIP patch features + 3D position embedding -> voxel mean -> projector  (vision_ms)
  -> llava_v1 prompt with the spatial tokens (and [x, y, z] location tokens) spliced in
  -> GatedLlama: prefill pruning spatial tokens by the policy (prefill_ms), decode (decode_ms)
"""

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .device import now
from .gating import GatedLlama
from .gating_policy import GatingPolicy, parse_gating
from .loader import load_llava3d


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

    def spatial_embeddings(self, scene) -> torch.Tensor:
        """model.spatial_embeddings(scene), with the CLIP features of views seen before reused."""
        model = self.model
        if scene.num_tokens == 0:
            return torch.zeros(0, model.config.hidden_size, dtype=self.dtype, device=self.device)
        keys = list(zip(scene.stamps_ns, scene.frame_ids))
        missing = [i for i, key in enumerate(keys) if key not in self._view_features]
        if missing:
            for i, features in zip(missing, model.image_features(scene.images[missing])):
                self._view_features[keys[i]] = features
        self._view_features = {key: self._view_features[key] for key in keys}  # forget evicted views
        features = torch.stack([self._view_features[key] for key in keys])  # (V, P, C)
        return model.mm_projector(model.spatial_features(features, scene).to(self.dtype))  # (M, D)

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
            spatial = self.spatial_embeddings(scene)  # (M, D)
            inputs = self.model.build_inputs(question, spatial, self.tokenizer)
            vision_ms = (now(self.device) - start) * 1e3
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
                    inputs.num_spatial,
                    inputs.num_spatial,
                    inputs.num_text + inputs.num_location,
                    0.0,
                    0.0,
                    str(policy),
                    [],
                )

            def stream(ids):
                if on_token is not None:
                    text = self.tokenizer.decode(ids, skip_special_tokens=True)
                    on_token(text.rstrip('\ufffd').strip(), len(ids))  # hold back a half UTF-8 character

            ids, prefill, decode_ms = self.gated.generate(
                inputs.inputs_embeds,
                inputs.spatial_mask,
                policy,
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
            spatial_tokens=inputs.num_spatial,
            spatial_tokens_kept=prefill.spatial_per_layer[-1],
            text_tokens=inputs.num_text + inputs.num_location,
            prefill_flops=prefill.prefill_flops,
            prefill_flops_dense=prefill.prefill_flops_dense,
            gating=prefill.policy,
            tokens_per_layer=list(prefill.tokens_per_layer),
        )

    def warmup(self, scene) -> None:
        """One short answer so the first real query does not pay for lazy initialisation."""
        self.answer('What is in the scene?', scene, parse_gating('none', self.num_layers), 2)
