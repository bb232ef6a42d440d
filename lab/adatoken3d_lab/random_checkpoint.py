"""The random checkpoint: a tiny, random-weight, *untrained* LLaVA-3D plus its CLIP, in the released on-disk layout.

Same architecture as LLaVA-3D-7B, only small, so the loader, the model and the node run end to end
without downloading anything. The files are what the released checkpoint has:

    OUT_DIR/   config.json (model_type llava_llama, mm_* keys; mm_vision_tower = CLIP_DIR, absolute)
               model-00001-of-00002.safetensors, model-00002-of-00002.safetensors (bf16, released names)
               model.safetensors.index.json, tokenizer files, generation_config.json,
               adatoken3d_provenance.json (trained: false)
    CLIP_DIR/  config.json (CLIPVisionConfig: 336 px, 14 px patches -> 24 x 24 = 576 patches as
               LLaVA-3D's CLIP ViT-L/14-336, width 32),
               model.safetensors (vision_model.* names, like openai/clip-vit-large-patch14-336),
               preprocessor_config.json (CLIP mean/std, crop 336), adatoken3d_provenance.json

    adatoken3d-make-random-llava3d [OUT_DIR] [--clip-dir D] [--seed N] [--tokenizer bpe|sentencepiece] [--force]

--tokenizer sentencepiece writes tokenizer.model (SentencePiece, LLaMA's settings) and no tokenizer.json,
as LLaVA checkpoints built on Vicuna ship it; the default is a byte-level BPE tokenizer.json.

Same seed => byte-identical files (config.json differs only by where CLIP_DIR is). Its answers are noise.
"""

import argparse
import json
import os
import pathlib
import shutil
import sys

from adatoken3d_node.model.llava3d import CLIP_MEAN, CLIP_STD
from adatoken3d_node.model.loader import FAST_TOKENIZER_FILE, PROVENANCE_FILE, SENTENCEPIECE_FILE

from .tokenizer_files import _make_tokenizer_files_portable, build_tokenizer, cache_dir, write_sentencepiece_tokenizer

SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
INDEX = "model.safetensors.index.json"
TINY_CLIP = dict(
    image_size=336,
    patch_size=14,
    hidden_size=32,
    intermediate_size=128,  # 24 x 24 patches of width 32
    num_hidden_layers=2,
    num_attention_heads=2,
    projection_dim=32,
)
TINY_LLAMA = dict(
    hidden_size=64,
    intermediate_size=176,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
)
TOKENIZERS = ("bpe", "sentencepiece")


def _json(path: pathlib.Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _provenance(kind: str, seed: int, **extra) -> dict:
    return {
        "kind": kind,
        "seed": seed,
        "trained": False,
        **extra,
        "note": "Random weights, never trained: answers are meaningless. For tests and plumbing only; "
        "made by adatoken3d_lab.random_checkpoint.",
    }


def _read_provenance(path: pathlib.Path) -> dict:
    try:
        return json.loads((path / PROVENANCE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def released_config(tokenizer, clip_dir, mm_hidden_size: int, llama=None) -> dict:
    """config.json as LLaVA-3D's released one is written (transformers 4.37 key names, every key its
    training script sets, including those its inference never reads), tiny sizes."""
    return {
        "_name_or_path": "adatoken3d-tiny-llava3d",
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava_llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": len(tokenizer),
        **(llama or TINY_LLAMA),
        "image_aspect_ratio": "pad",
        "freeze_mm_mlp_adapter": False,
        "mm_hidden_size": mm_hidden_size,
        "mm_patch_merge_type": "flat",
        "mm_projector_lr": None,
        "mm_projector_type": "mlp2x_gelu",
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_video_tower": "SpatialAwareModule",
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": str(clip_dir),
        "num_frames": 20,
        "num_sample_tokens": 1152,  # read by LLaVA-3D's video tower and never used
        "tokenizer_model_max_length": 2048,
        "tokenizer_padding_side": "right",
        "transformers_version": "4.37.2",
        "tune_mm_mlp_adapter": False,
        "use_mm_proj": True,
    }


def create_random_clip(clip_dir, seed: int = 0) -> pathlib.Path:
    """Write the tiny random CLIP vision tower to clip_dir."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(**TINY_CLIP)
    with torch.random.fork_rng(devices=[]):  # the caller's RNG stream is left alone
        torch.manual_seed(seed)
        model = CLIPVisionModel(config)
    return write_clip(model, clip_dir, _provenance("random-clip", seed))


def write_clip(model, clip_dir, marker: dict) -> pathlib.Path:
    """Save a transformers CLIPVisionModel as a CLIP checkpoint directory (config, safetensors,
    preprocessor_config.json) plus the adatoken3d marker; returns clip_dir."""
    from safetensors.torch import save_file

    out = pathlib.Path(clip_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / PROVENANCE_FILE).unlink(
        missing_ok=True
    )  # removed first, written last: an interrupted run never looks complete
    model.config.save_pretrained(out)
    # transformers 5 saves CLIPVisionModel without the "vision_model." prefix; the real CLIP (and
    # transformers 4.x) use it, so ours do too and load through the same name mapping.
    state = {f"vision_model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    size = model.config.image_size
    _json(
        out / "preprocessor_config.json",
        {
            "crop_size": {"height": size, "width": size},
            "do_center_crop": True,
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_processor_type": "CLIPImageProcessor",
            "resample": 3,
            "rescale_factor": 1 / 255,
            "size": {"shortest_edge": size},
            "image_mean": list(CLIP_MEAN),
            "image_std": list(CLIP_STD),
        },
    )
    _json(out / PROVENANCE_FILE, marker)
    return out


def _create_llava_part(out_dir, clip_dir, seed: int, llama=None, tokenizer_kind: str = "bpe") -> pathlib.Path:
    """Write the LLaVA-3D part to out_dir; its config points at clip_dir (must already exist).
    llama: LLaMA sizes replacing TINY_LLAMA (e.g. a bigger random model for latency tests).
    tokenizer_kind: 'bpe' (tokenizer.json) or 'sentencepiece' (tokenizer.model only)."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from adatoken3d_node.model.llava3d import Llava3D, Llava3DConfig

    if tokenizer_kind not in TOKENIZERS:
        raise ValueError(f"tokenizer_kind must be one of {TOKENIZERS}, got {tokenizer_kind!r}")
    out, clip_dir = pathlib.Path(out_dir), pathlib.Path(clip_dir).resolve()
    if tokenizer_kind == "sentencepiece":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(write_sentencepiece_tokenizer(out), local_files_only=True)
    else:
        tokenizer = build_tokenizer()
    clip_config = CLIPVisionConfig.from_pretrained(clip_dir)
    raw = released_config(tokenizer, clip_dir, clip_config.hidden_size, llama)
    config = Llava3DConfig.from_dict(raw)
    with torch.device("meta"):  # only its width matters here; CLIP weights live in clip_dir
        tower = CLIPVisionModel(clip_config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Llava3D(config, tower)

    marker = _provenance("random-llava3d", seed, clip_dir=str(clip_dir), tokenizer=tokenizer_kind)
    return write_llava3d(model, raw, tokenizer, out, marker, save_tokenizer=tokenizer_kind == "bpe")


def write_llava3d(
    model, raw_config: dict, tokenizer, out_dir, marker: dict, dtype=None, save_tokenizer: bool = True
) -> pathlib.Path:
    """Save a Llava3D (without its vision tower) in the released layout: config.json, two safetensors
    shards under the released names + index, generation config, tokenizer, and the marker.
    dtype: of the stored weights (default bfloat16, as released). save_tokenizer: False when the
    tokenizer's files are already in out_dir (a SentencePiece tokenizer.model is kept as it is)."""
    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    from adatoken3d_node.model.loader import to_released

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / PROVENANCE_FILE).unlink(missing_ok=True)
    dtype = dtype or torch.bfloat16
    # Released names, in state-dict order; split at half the bytes.
    state = {
        to_released(k): v.detach().to(dtype).contiguous()
        for k, v in model.state_dict().items()
        if not k.startswith("vision_tower.")
    }
    total = sum(t.numel() * t.element_size() for t in state.values())
    shards, running = ({}, {}), 0
    for k, t in state.items():
        shards[0 if running < total // 2 else 1][k] = t
        running += t.numel() * t.element_size()
    for name, shard in zip(SHARDS, shards):
        save_file(shard, out / name, metadata={"format": "pt"})
    _json(
        out / INDEX,
        {"metadata": {"total_size": total}, "weight_map": {k: SHARDS[i] for i, s in enumerate(shards) for k in s}},
    )
    _json(out / "config.json", {**raw_config, "torch_dtype": str(dtype).removeprefix("torch.")})
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    ).save_pretrained(out)
    if save_tokenizer:
        (out / SENTENCEPIECE_FILE).unlink(missing_ok=True)  # never beside a tokenizer.json it does not match
        tokenizer.save_pretrained(out)
        _make_tokenizer_files_portable(out, tokenizer)
    _json(out / PROVENANCE_FILE, marker)
    return out


def create_random_llava3d(out_dir, clip_dir, seed: int = 0, llama=None, tokenizer: str = "bpe") -> pathlib.Path:
    """Write the tiny CLIP to clip_dir and the tiny LLaVA-3D (pointing at it) to out_dir; return out_dir.
    llama: LLaMA sizes replacing TINY_LLAMA's (hidden_size, num_hidden_layers, ...), for a bigger random model.
    tokenizer: 'bpe' (tokenizer.json) or 'sentencepiece' (tokenizer.model only, as Vicuna-based checkpoints)."""
    create_random_clip(clip_dir, seed)
    return _create_llava_part(out_dir, clip_dir, seed, llama, tokenizer)


def is_random_clip(clip_dir, seed: int) -> bool:
    clip = pathlib.Path(clip_dir)
    m = _read_provenance(clip)
    return (m.get("kind"), m.get("seed")) == ("random-clip", seed) and all(
        (clip / n).is_file() for n in ("config.json", "model.safetensors", "preprocessor_config.json")
    )


def is_random_llava3d(out_dir, clip_dir, seed: int, tokenizer: str = "bpe") -> bool:
    """True when out_dir holds a complete tiny LLaVA-3D of this seed and tokenizer kind that uses the
    tiny CLIP at clip_dir."""
    out = pathlib.Path(out_dir)
    m = _read_provenance(out)
    tokenizer_file = SENTENCEPIECE_FILE if tokenizer == "sentencepiece" else FAST_TOKENIZER_FILE
    needed = ("config.json", "generation_config.json", INDEX, *SHARDS, tokenizer_file, "tokenizer_config.json")
    return (
        (m.get("kind"), m.get("seed"), m.get("tokenizer", "bpe")) == ("random-llava3d", seed, tokenizer)
        and m.get("clip_dir") == str(pathlib.Path(clip_dir).resolve())
        and all((out / n).is_file() for n in needed)
        and is_random_clip(clip_dir, seed)
    )


def _staged(out: pathlib.Path, create, is_complete) -> None:
    """Create into a private staging dir and rename into place: safe when several processes race."""
    if is_complete(out):
        return
    staging = out.with_name(f"{out.name}.tmp{os.getpid()}")
    create(staging)
    shutil.rmtree(out, ignore_errors=True)  # an incomplete earlier attempt
    try:
        os.rename(staging, out)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    if not is_complete(out):
        raise RuntimeError(f"could not create the random checkpoint at {out}")


def default_random_llava3d_dir() -> pathlib.Path:
    """Where adatoken3d-make-random-llava3d writes by default: in the cache (tokenizer_files.cache_dir())."""
    return cache_dir() / "random-llava3d-seed0"


def default_clip_dir(out_dir) -> pathlib.Path:
    out = pathlib.Path(out_dir)
    return out.with_name(f"{out.name}-clip")


def ensure_random_llava3d(out_dir, clip_dir=None, seed: int = 0) -> pathlib.Path:
    """The tiny LLaVA-3D at out_dir (and its CLIP at clip_dir, default OUT_DIR-clip), created if missing."""
    out = pathlib.Path(out_dir)
    clip = pathlib.Path(clip_dir) if clip_dir is not None else default_clip_dir(out)
    _staged(clip, lambda d: create_random_clip(d, seed), lambda d: is_random_clip(d, seed))
    # The config must name the final CLIP dir, so the LLaVA part is staged after the CLIP is in place.
    _staged(out, lambda d: _create_llava_part(d, clip, seed), lambda d: is_random_llava3d(d, clip, seed))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="adatoken3d-make-random-llava3d",
        description="Create the random checkpoint: a tiny random-weight (untrained) LLaVA-3D and its CLIP, for tests.",
    )
    parser.add_argument("out_dir", type=pathlib.Path, nargs="?", default=default_random_llava3d_dir())
    parser.add_argument("--clip-dir", type=pathlib.Path, default=None, help="default: OUT_DIR-clip")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tokenizer",
        choices=TOKENIZERS,
        default="bpe",
        help="bpe: tokenizer.json (default); sentencepiece: tokenizer.model only, as Vicuna-based checkpoints",
    )
    parser.add_argument("--force", action="store_true", help="recreate even if it already exists")
    args = parser.parse_args(argv)
    clip = args.clip_dir if args.clip_dir is not None else default_clip_dir(args.out_dir)

    if not args.force and is_random_llava3d(args.out_dir, clip, args.seed, args.tokenizer):
        print(
            f"random LLaVA-3D (seed {args.seed}) already at {args.out_dir} (CLIP at {clip}); nothing to do "
            "(use --force to recreate)"
        )
        return 0
    create_random_llava3d(args.out_dir, clip, seed=args.seed, tokenizer=args.tokenizer)
    print(
        f"created the random checkpoint, a random-weight LLaVA-3D (seed {args.seed}, untrained, "
        f"{args.tokenizer} tokenizer) at {args.out_dir}, CLIP at {clip}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
