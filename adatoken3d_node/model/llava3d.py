"""LLaVA-3D (Zhu et al. 2024) as released, built from transformers' own LLaMA and CLIP modules.

    images (V, S, S, 3) uint8 --CLIP ViT, hidden_states[select_layer], CLS dropped--> (V, P, C)
      valid patches (N, C) + video_pos_emb(patch xyz)                               (N, C)
      mean per kept voxel (tokens.patch_to_voxel)                                    (M, C)
      mm_projector (mlp2x_gelu)                                                      (M, D)   spatial tokens
    "{SYSTEM} USER: <image>\\n{question} ASSISTANT:"
      <image>        -> the M spatial tokens
      "[x, y, z]"    -> one location token = prompt_pos_emb(xyz)                     (1, D)
      other text     -> embed_tokens
    -> inputs_embeds (1, T, D) for language_model (LlamaForCausalLM)

C = mm_hidden_size (CLIP width, 1024), D = LLaMA hidden size (4096). The on-disk names of the
released checkpoint and how they map onto these modules live in loader.py. Timing, grad mode and
context-length limits are the caller's business. No ROS imports.
"""

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from .prompt import PROMPT_HEAD, PROMPT_TAIL

if TYPE_CHECKING:  # transformers is imported where it is used: importing this module stays cheap
    from transformers import LlamaConfig

IMAGE_TOKEN_INDEX = -200  # LLaVA's placeholder id for "<image>" (spatial tokens go there)
LOCATION_TOKEN_INDEX = -300  # LLaVA-3D's placeholder id for a location prompt ("<boxes>")
# OpenAI CLIP's normalisation, used when the CLIP directory has no preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_NUM = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
# "[1.0, -2.5, 0.3]", "[ +1 ,-2.50,.3 ]", "[1e-1, 2, 3]": a point in metres in the fixed frame.
LOCATION_RE = re.compile(rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]")

# LLaMA architecture keys of a LLaVA config.json (LlavaConfig subclasses LlamaConfig). Only these
# reach LlamaConfig: the mm_* and training keys (image_aspect_ratio, tune_mm_mlp_adapter, ...)
# are not LLaMA's business.
LLAMA_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "attention_bias",
    "attention_dropout",
    "mlp_bias",
    "pretraining_tp",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "use_cache",
)
REQUIRED_LLAMA_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
_PROJECTOR_RE = re.compile(r"mlp(\d+)x_gelu")


@dataclass
class Llava3DConfig:
    """The parts of a LLaVA-3D config.json this implementation uses, checked on construction."""

    text_config: "LlamaConfig"  # the language model (LLaMA keys of config.json)
    mm_vision_tower: str  # CLIP checkpoint: hub name as released, or a local directory
    mm_vision_select_layer: int = -2  # index into CLIP's hidden_states (embeddings output is 0)
    mm_vision_select_feature: str = "patch"  # "patch": CLS dropped
    mm_projector_type: str = "mlp2x_gelu"
    mm_hidden_size: int = 1024  # CLIP width C
    mm_video_tower: str = "SpatialAwareModule"
    num_frames: int = 20  # views per scene the model was trained with
    # adatoken3d_patch_xyz: how the checkpoint was trained to place patches in 3D (the front end's
    # patch_xyz); None = LLaVA-3D's 'nearest'. The node's patch_xyz: auto follows it.
    patch_xyz: Optional[str] = None

    def __post_init__(self):
        if self.mm_vision_select_feature != "patch":
            # "cls_patch" (LLaVA's other option) keeps CLS, which has no 3D position to pool by.
            raise ValueError(
                f"mm_vision_select_feature {self.mm_vision_select_feature!r} is not supported: LLaVA-3D pools "
                "patch features by their 3D position, so only 'patch' (CLS dropped) makes sense"
            )
        if not (self.mm_projector_type == "linear" or _PROJECTOR_RE.fullmatch(self.mm_projector_type)):
            raise ValueError(
                f"mm_projector_type {self.mm_projector_type!r} is not supported (known: 'mlp2x_gelu' as released, "
                "'mlpNx_gelu', 'linear')"
            )
        if self.mm_video_tower != "SpatialAwareModule":
            raise ValueError(f"mm_video_tower {self.mm_video_tower!r} is not supported (known: 'SpatialAwareModule')")
        if not isinstance(self.mm_vision_select_layer, int) or isinstance(self.mm_vision_select_layer, bool):
            raise ValueError(f"mm_vision_select_layer must be an integer, got {self.mm_vision_select_layer!r}")
        if self.patch_xyz not in (None, "nearest", "centre", "median"):
            raise ValueError(f"adatoken3d_patch_xyz {self.patch_xyz!r} is not one of nearest, centre, median")
        if not isinstance(self.mm_hidden_size, int) or self.mm_hidden_size < 1:
            raise ValueError(f"mm_hidden_size must be a positive integer, got {self.mm_hidden_size!r}")

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @classmethod
    def from_dict(cls, d: dict) -> "Llava3DConfig":
        """From a released config.json dict (model_type 'llava_llama'); ValueError if it is not LLaVA-3D."""
        from transformers import LlamaConfig

        archs = d.get("architectures") or []
        if d.get("model_type") != "llava_llama" or (archs and "LlavaLlamaForCausalLM" not in archs):
            raise ValueError(
                f"model_type={d.get('model_type')!r}, architectures={archs}: not a LLaVA-3D checkpoint "
                "(needs model_type 'llava_llama', LlavaLlamaForCausalLM)"
            )
        if not d.get("mm_vision_tower"):
            raise ValueError("no mm_vision_tower: not a LLaVA (multimodal) checkpoint")
        if not d.get("mm_video_tower"):
            raise ValueError("no mm_video_tower: a 2D LLaVA checkpoint, not LLaVA-3D (no 3D position embedding)")
        if d.get("mm_use_im_start_end"):
            # Would wrap the spatial tokens in <im_start>/<im_end>; LLaVA-3D never trained that way.
            raise ValueError("mm_use_im_start_end=true is not supported (LLaVA-3D is released with false)")
        missing = [k for k in REQUIRED_LLAMA_KEYS if k not in d]
        if missing:
            raise ValueError(f"LLaMA key(s) {missing} missing")
        # rope_scaling null (as released) is LLaMA's default; transformers 5 warns about the old key name.
        text_config = LlamaConfig(
            **{k: d[k] for k in LLAMA_KEYS if k in d and not (k == "rope_scaling" and d[k] is None)}
        )
        mm = {
            k: d[k]
            for k in (
                "mm_vision_select_layer",
                "mm_vision_select_feature",
                "mm_projector_type",
                "mm_hidden_size",
                "mm_video_tower",
                "num_frames",
            )
            if d.get(k) is not None
        }
        return cls(
            text_config=text_config,
            mm_vision_tower=str(d["mm_vision_tower"]),
            patch_xyz=d.get("adatoken3d_patch_xyz"),
            **mm,
        )


class PositionEmbedding3D(nn.Module):
    """Learned embedding of a metric 3D point: Linear, LayerNorm, ReLU, Linear (LLaVA-3D's
    PositionEmbeddingLearnedMLP; the attribute name keeps the released state-dict names)."""

    def __init__(self, out_dim: int):
        super().__init__()
        self.position_embedding_head = nn.Sequential(
            nn.Linear(3, out_dim), nn.LayerNorm(out_dim), nn.ReLU(), nn.Linear(out_dim, out_dim)
        )

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:  # (..., 3) metres -> (..., out_dim)
        return self.position_embedding_head(xyz)


def build_projector(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """LLaVA's projectors: 'linear' or 'mlpNx_gelu' = Linear, (GELU, Linear) x (N-1); state-dict
    indices 0, 2, 4, ... like LLaVA's nn.Sequential."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    m = _PROJECTOR_RE.fullmatch(kind)
    if m is None:
        raise ValueError(f"unknown projector type {kind!r}")
    layers = [nn.Linear(in_dim, out_dim)]
    for _ in range(int(m.group(1)) - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


def voxel_mean(features: torch.Tensor, patch_to_voxel: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Mean feature per token. features (N, C), patch_to_voxel (N,) int64 in [-1, num_tokens)
    -> (num_tokens, C) in features' dtype. Patches mapped to -1 (voxel capped away) are ignored.

    What torch_scatter.scatter_mean does in the reference code, with torch's index_add_ (on CUDA
    only deterministic under torch.use_deterministic_algorithms(True)).
    """
    if patch_to_voxel.shape != features.shape[:1]:
        raise ValueError(
            f"patch_to_voxel {tuple(patch_to_voxel.shape)} does not match features {tuple(features.shape)}"
        )
    keep = patch_to_voxel >= 0
    index = patch_to_voxel[keep]  # (N_kept,)
    # Sum in at least float32: a bf16 running sum over hundreds of patches loses the mean.
    acc = torch.promote_types(features.dtype, torch.float32)
    sums = torch.zeros(num_tokens, features.shape[1], dtype=acc, device=features.device)
    sums.index_add_(0, index, features[keep].to(acc))  # (M, C)
    counts = torch.bincount(index, minlength=num_tokens)  # (M,) kept patches per token
    if counts.shape[0] != num_tokens or bool((counts == 0).any()):
        raise ValueError(f"patch_to_voxel does not describe {num_tokens} tokens that each own >= 1 patch")
    return (sums / counts[:, None]).to(features.dtype)


@dataclass
class Llava3DInputs:
    """One assembled prompt. T = num_text + num_spatial + num_location."""

    inputs_embeds: torch.Tensor  # (1, T, D) model dtype and device
    input_ids: torch.Tensor  # (T,) int64 on the CPU: token ids, IMAGE_/LOCATION_TOKEN_INDEX at placeholders
    spatial_mask: torch.Tensor  # (T,) bool, model device: positions holding spatial tokens (one contiguous run)
    location_mask: torch.Tensor  # (T,) bool, model device: positions holding location tokens
    locations: torch.Tensor  # (K, 3) float32 on the CPU: parsed points, in question order
    num_text: int  # BOS included
    num_spatial: int  # M
    num_location: int  # K

    @property
    def num_tokens(self) -> int:
        return self.num_text + self.num_spatial + self.num_location


def parse_locations(question: str) -> tuple[list[str], list[tuple[float, float, float]]]:
    """Split question at "[x, y, z]" points -> (K + 1 text pieces, K points)."""
    texts, points, start = [], [], 0
    for m in LOCATION_RE.finditer(question):
        texts.append(question[start : m.start()])
        points.append(tuple(float(v) for v in m.groups()))
        start = m.end()
    texts.append(question[start:])
    return texts, points


class Llava3D(nn.Module):
    def __init__(self, config: Llava3DConfig, vision_tower: nn.Module, image_mean=CLIP_MEAN, image_std=CLIP_STD):
        """vision_tower: a transformers CLIPVisionModel of width config.mm_hidden_size (not in LLaVA-3D's
        checkpoint: it comes from the CLIP checkpoint)."""
        super().__init__()
        from transformers import LlamaForCausalLM

        width = vision_tower.config.hidden_size
        if width != config.mm_hidden_size:
            raise ValueError(f"vision tower width {width} != mm_hidden_size {config.mm_hidden_size}")
        self.config = config
        C, D = config.mm_hidden_size, config.hidden_size
        self.language_model = LlamaForCausalLM(config.text_config)
        self.vision_tower = vision_tower
        self.video_pos_emb = PositionEmbedding3D(C)  # patch xyz -> added to CLIP features
        self.prompt_pos_emb = PositionEmbedding3D(D)  # location in the question -> one LLM token
        self.mm_projector = build_projector(config.mm_projector_type, C, D)
        # Plain tuples, not buffers: they are constants of the CLIP preprocessor, not weights.
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.provenance: dict = {}  # loader.PROVENANCE_FILE of a checkpoint made here ({"trained": false, ...})

    # ---- properties ----------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.language_model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.dtype

    @property
    def image_size(self) -> int:
        """Input side S the front end must resize/crop views to (336 for the released CLIP)."""
        return self.vision_tower.config.image_size

    @property
    def patch_grid(self) -> int:
        """Patches per side (24 for the released CLIP): P = patch_grid ** 2."""
        return self.vision_tower.config.image_size // self.vision_tower.config.patch_size

    @property
    def patch_xyz(self) -> str:
        """The patch position mode this checkpoint was trained with ('nearest' unless its config says)."""
        return self.config.patch_xyz or "nearest"

    @property
    def is_untrained(self) -> bool:
        return self.provenance.get("trained") is False

    # ---- spatial tokens ------------------------------------------------------------------

    def image_features(self, images) -> torch.Tensor:
        """images (V, S, S, 3) uint8 (numpy or torch), already resized/cropped to S = image_size
        -> CLIP patch features (V, P, C) from hidden_states[mm_vision_select_layer], CLS dropped."""
        images = torch.as_tensor(images)
        S = self.image_size
        if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != (S, S, 3):
            raise ValueError(
                f"images must be (V, {S}, {S}, 3) uint8 (resized/cropped to the vision tower's input), "
                f"got {tuple(images.shape)} {images.dtype}"
            )
        tower = self.vision_tower
        mean = torch.tensor(self.image_mean, device=tower.device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, device=tower.device).view(1, 3, 1, 1)
        # uint8 travels to the device (4x less than float), the CLIP preprocessor's maths happens there.
        x = images.to(tower.device).permute(0, 3, 1, 2).float() / 255.0  # (V, 3, S, S) in [0, 1]
        x = ((x - mean) / std).to(tower.dtype)
        out = tower(pixel_values=x, output_hidden_states=True)
        return out.hidden_states[self.config.mm_vision_select_layer][:, 1:]  # (V, 1 + P, C) -> (V, P, C)

    def patch_features(self, features: torch.Tensor, scene) -> torch.Tensor:
        """features (V, P, C) of scene.images -> (N, C): every valid patch's feature with
        video_pos_emb(its xyz) added (LLaVA-3D's SpatialAwareModule), in (view, patch) order.
        scene: perception.frontend.SceneGeometry."""
        device = features.device
        valid = torch.as_tensor(scene.patch_valid, device=device)  # (V, P) bool
        if valid.shape != features.shape[:2]:
            raise ValueError(
                f"scene has {tuple(valid.shape)} (views, patches) but the vision tower gave "
                f"{tuple(features.shape[:2])}; "
                f"the front end's patch_grid must be {self.patch_grid} for this vision tower"
            )
        xyz = torch.as_tensor(scene.patch_xyz, device=device)[valid]  # (N, 3) metres, (view, patch) order
        feats = features[valid]  # (N, C)
        return feats + self.video_pos_emb(xyz.to(feats.dtype))

    def spatial_features(self, features: torch.Tensor, scene) -> torch.Tensor:
        """features (V, P, C) of scene.images -> pooled spatial features (M, C), before the projector:
        patch_features averaged per kept voxel (scene.tokens.patch_to_voxel)."""
        feats = self.patch_features(features, scene)  # (N, C)
        patch_to_voxel = scene.tokens.patch_to_voxel.to(feats.device)  # (N,) token index or -1
        if patch_to_voxel.shape[0] != feats.shape[0]:
            raise ValueError(
                f"scene.tokens covers {patch_to_voxel.shape[0]} patches, scene has {feats.shape[0]} valid ones"
            )
        return voxel_mean(feats, patch_to_voxel, scene.num_tokens)  # (M, C)

    def spatial_embeddings(self, scene) -> torch.Tensor:
        """SceneGeometry -> spatial token embeddings (M, D) in the token order of scene.tokens."""
        if scene.num_tokens == 0:  # no views, or no valid patch: no CLIP work at all
            return torch.zeros(0, self.config.hidden_size, dtype=self.dtype, device=self.device)
        features = self.image_features(scene.images)  # (V, P, C)
        pooled = self.spatial_features(features, scene)  # (M, C)
        return self.mm_projector(pooled.to(self.dtype))  # (M, D)

    def location_embeddings(self, points) -> torch.Tensor:
        """points (K, 3) metres, fixed frame -> location tokens (K, D)."""
        xyz = torch.as_tensor(points, dtype=torch.float32).reshape(-1, 3)
        return self.prompt_pos_emb(xyz.to(device=self.device, dtype=self.dtype))

    # ---- prompt --------------------------------------------------------------------------

    def build_inputs(self, question: str, spatial_embeds: torch.Tensor, tokenizer) -> Llava3DInputs:
        """llava_v1 prompt with spatial and location tokens spliced in.

            M > 0:  "{SYSTEM} USER: <image>\\n{question} ASSISTANT:"
            M = 0:  "{SYSTEM} USER: {question} ASSISTANT:"   (LLaVA's text-only prompt, = prompt.build_prompt)

        spatial_embeds (M, D) from spatial_embeddings. Every "[x, y, z]" in the question becomes one
        location token. The prompt is assembled from pieces, so "<image>" typed by a user stays text.
        Text pieces are tokenized one by one without special tokens (as LLaVA's tokenizer_image_token
        does) and BOS comes first.
        """
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question must be a non-empty string")
        D = self.config.hidden_size
        if spatial_embeds.ndim != 2 or spatial_embeds.shape[1] != D:
            raise ValueError(f"spatial_embeds must be (M, {D}), got {tuple(spatial_embeds.shape)}")
        M = spatial_embeds.shape[0]
        texts, points = parse_locations(question.strip())

        # pieces: str (text), IMAGE_TOKEN_INDEX, LOCATION_TOKEN_INDEX, in prompt order
        pieces = [PROMPT_HEAD, IMAGE_TOKEN_INDEX, "\n"] if M > 0 else [PROMPT_HEAD]
        for i, text in enumerate(texts):
            pieces += [text, LOCATION_TOKEN_INDEX] if i < len(points) else [text]
        pieces.append(PROMPT_TAIL)

        ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        text_run = ""  # adjacent text pieces are tokenized together, as one string
        for piece in pieces + [None]:
            if isinstance(piece, str):
                text_run += piece
                continue
            if text_run:
                ids += tokenizer(text_run, add_special_tokens=False).input_ids
                text_run = ""
            if piece == IMAGE_TOKEN_INDEX:
                ids += [IMAGE_TOKEN_INDEX] * M
            elif piece == LOCATION_TOKEN_INDEX:
                ids.append(LOCATION_TOKEN_INDEX)
        input_ids = torch.tensor(ids, dtype=torch.long)  # (T,)

        device, dtype = self.device, self.dtype
        ids_dev = input_ids.to(device)
        spatial_mask = ids_dev == IMAGE_TOKEN_INDEX  # (T,)
        location_mask = ids_dev == LOCATION_TOKEN_INDEX  # (T,)
        text_mask = ids_dev >= 0
        embeds = torch.empty(len(ids), D, dtype=dtype, device=device)  # (T, D), every row written below
        embeds[text_mask] = self.language_model.get_input_embeddings()(ids_dev[text_mask]).to(dtype)
        embeds[spatial_mask] = spatial_embeds.to(device=device, dtype=dtype)
        locations = torch.tensor(points, dtype=torch.float32).reshape(-1, 3)  # (K, 3)
        if points:
            embeds[location_mask] = self.location_embeddings(locations)
        n_text = sum(1 for i in ids if i >= 0)
        return Llava3DInputs(
            embeds[None],
            input_ids,
            spatial_mask,
            location_mask,
            locations,
            num_text=n_text,
            num_spatial=M,
            num_location=len(points),
        )


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGE_TOKEN_INDEX",
    "LOCATION_RE",
    "LOCATION_TOKEN_INDEX",
    "Llava3D",
    "Llava3DConfig",
    "Llava3DInputs",
    "PositionEmbedding3D",
    "build_projector",
    "parse_locations",
    "voxel_mean",
]
