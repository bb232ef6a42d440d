"""Load a released LLaVA-3D checkpoint directory (plus a local CLIP directory) into llava3d.Llava3D.

    LLaVA-3D dir:  config.json (model_type llava_llama), model.safetensors or model-0000N-of-0000K.safetensors
                   + model.safetensors.index.json, tokenizer files, generation_config.json (optional)
    CLIP dir:      a transformers CLIP (vision or full) checkpoint; config.json's mm_vision_tower names it

Weights are read with safetensors.safe_open straight onto the target device, under the released
names (NAME_MAP). Everything is checked before anything large is read, and any mismatch is one
Llava3DLoadError naming the file and keys: nothing is ever left randomly initialised, which is
what from_pretrained quietly does with a missing weight. Pickled weights (.bin) are only read when
allow_pickle is set and no safetensors exist.
"""

import importlib
import json
import pathlib
from dataclasses import dataclass

import torch

from .device import resolve_device, resolve_dtype
from .llava3d import CLIP_MEAN, CLIP_STD, Llava3D, Llava3DConfig

FAST_TOKENIZER_FILE = "tokenizer.json"  # a tokenizers pipeline
SENTENCEPIECE_FILE = "tokenizer.model"  # a SentencePiece model (what LLaMA/Vicuna checkpoints ship)
TOKENIZER_FILES = (FAST_TOKENIZER_FILE, SENTENCEPIECE_FILE)  # a checkpoint needs at least one
# Written by this project's checkpoint makers: {"kind", "trained", "seed", "note"}; "trained": false
# marks random weights, whose answers the node warns about.
PROVENANCE_FILE = "adatoken3d_provenance.json"
LEGACY_PROVENANCE_FILE = "adatoken3d_tiny.json"  # its name in checkpoints written before the lab split

# Released name prefix -> Llava3D module prefix. First match wins: the mm prefixes sit under
# "model." too, so they come before the language model's catch-all.
NAME_MAP = (
    ("model.mm_projector.", "mm_projector."),
    ("model.video_tower.video_tower.positional_embedding.", "video_pos_emb."),
    ("model.video_tower.prompt_encoder.pos_emb3d.", "prompt_pos_emb."),
    ("model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)
# Derived buffers some older transformers versions saved; recomputed from the config, never weights.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_INDEX = "pytorch_model.bin.index.json"
HUB_HINT = "huggingface-cli download {name} --local-dir DIR"
SPIECE_SPACE = "\u2581"  # SentencePiece's visible space
# What transformers needs to read a tokenizer.model: pip package -> module.
SENTENCEPIECE_MODULES = {"sentencepiece": "sentencepiece", "protobuf": "google.protobuf"}


class ModelLoadError(RuntimeError):
    """The checkpoint at a path cannot be used; the message names the path and what to do."""


class Llava3DLoadError(ModelLoadError):
    """A LLaVA-3D checkpoint (or its CLIP) cannot be used; the message names the file and what to do."""


def to_ours(released: str) -> str:
    """Released state-dict name -> Llava3D state-dict name (names with no known prefix pass unchanged)."""
    for theirs, ours in NAME_MAP:
        if released.startswith(theirs):
            return ours + released[len(theirs) :]
    return released


def to_released(ours: str) -> str:
    """Llava3D state-dict name -> released name; the inverse of to_ours."""
    for theirs, mine in NAME_MAP:
        if ours.startswith(mine):
            return theirs + ours[len(mine) :]
    raise KeyError(f"{ours} has no released name")


@dataclass
class _Weights:
    """Where each released tensor is, and its shape, read from file headers only."""

    files: dict  # released name -> pathlib.Path of the file holding it
    shapes: dict  # released name -> tuple shape
    pickled: dict  # released name -> tensor, for .bin checkpoints (which must be read whole); else {}


def _safetensors_headers(files, path: pathlib.Path) -> _Weights:
    from safetensors import safe_open

    where, shapes = {}, {}
    for file in files:
        try:
            with safe_open(file, framework="pt") as f:
                for key in f.keys():
                    if key in where:
                        raise Llava3DLoadError(f"weight {key} is in both {where[key].name} and {file.name} in {path}")
                    where[key], shapes[key] = file, tuple(f.get_slice(key).get_shape())
        except Llava3DLoadError:
            raise
        except Exception as e:
            raise Llava3DLoadError(
                f"cannot read {file} as safetensors ({type(e).__name__}: {e}); re-download it"
            ) from e
    return _Weights(where, shapes, {})


def _index_files(index_file: pathlib.Path) -> tuple[dict, list]:
    """index.json -> (weight_map, shard files); Llava3DLoadError naming the index and the absent shards."""
    try:
        weight_map = json.loads(index_file.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise Llava3DLoadError(f"{index_file} is not a readable shard index with a weight_map ({e})") from e
    shards = sorted({index_file.parent / name for name in weight_map.values()})
    absent = [s for s in shards if not s.is_file()]
    if absent:
        keys = [k for k, v in weight_map.items() if index_file.parent / v == absent[0]]
        raise Llava3DLoadError(
            f"{index_file} lists shard(s) that do not exist: {[s.name for s in absent]} "
            f"({len(keys)} weight(s) of {absent[0].name}, e.g. {keys[:3]}); the download is incomplete"
        )
    return weight_map, shards


def _find_weights(path: pathlib.Path, allow_pickle: bool) -> _Weights:
    index = path / SAFETENSORS_INDEX
    if index.is_file():
        weight_map, shards = _index_files(index)
        weights = _safetensors_headers(shards, path)
        wrong = [k for k, v in weight_map.items() if weights.files.get(k) != path / v]
        if wrong:
            k = wrong[0]
            raise Llava3DLoadError(
                f"{index} says {len(wrong)} weight(s) are in shards that do not hold them, e.g. {k} in "
                f"{weight_map[k]}; the shards and the index are from different downloads"
            )
        return weights
    files = sorted(path.glob("*.safetensors"))
    if files:
        return _safetensors_headers(files, path)

    pickles = sorted(path.glob("pytorch_model*.bin"))
    if not pickles:
        raise Llava3DLoadError(f"{path} has no model weights (*.safetensors); copy the LLaVA-3D weights there")
    if not allow_pickle:
        raise Llava3DLoadError(
            f"{path} has no *.safetensors weights, only {pickles[0].name}, and pickle loading is disabled "
            "(a .bin file can run arbitrary code when unpickled). Convert it to safetensors, or pass "
            "allow_pickle=True if you trust its source."
        )
    if (path / PICKLE_INDEX).is_file():
        _, pickles = _index_files(path / PICKLE_INDEX)
    where, tensors = {}, {}
    for file in pickles:
        try:
            # weights_only: even when pickles are allowed, only tensors and plain containers are unpickled
            sd = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:
            raise Llava3DLoadError(f"cannot read {file} ({type(e).__name__}: {e})") from e
        for key, t in sd.items():
            where[key], tensors[key] = file, t
    return _Weights(where, {k: tuple(t.shape) for k, t in tensors.items()}, tensors)


def _read_tensors(weights: _Weights, keys, device: torch.device, dtype: torch.dtype) -> dict:
    """released names -> {our name: tensor on device in dtype}, one shard open at a time."""
    from safetensors import safe_open

    out, by_file = {}, {}
    for key in keys:
        by_file.setdefault(weights.files[key], []).append(key)
    for file, file_keys in by_file.items():
        if weights.pickled:
            for key in file_keys:
                out[to_ours(key)] = weights.pickled[key].to(device=device, dtype=dtype)
            continue
        # Straight onto the device: a 7B bf16 model never sits in host memory as a whole.
        with safe_open(file, framework="pt", device=str(device)) as f:
            for key in file_keys:
                out[to_ours(key)] = f.get_tensor(key).to(dtype)
    return out


def _vision_tower_dir(config: Llava3DConfig, vision_tower_path, config_file: pathlib.Path) -> pathlib.Path:
    name = vision_tower_path if vision_tower_path is not None else config.mm_vision_tower
    candidate = pathlib.Path(name).expanduser()
    if not candidate.is_absolute() and vision_tower_path is None and (config_file.parent / candidate).is_dir():
        candidate = config_file.parent / candidate  # a path relative to the checkpoint
    if candidate.is_dir():
        return candidate
    if vision_tower_path is not None:
        raise Llava3DLoadError(
            f"vision_tower_path {vision_tower_path} is not a directory; point it at a local CLIP checkpoint"
        )
    if pathlib.Path(name).is_absolute() or name.startswith((".", "~")):  # a path, not a hub name
        raise Llava3DLoadError(
            f"{config_file}: mm_vision_tower {name} is not a directory; "
            "pass vision_tower_path=DIR of the CLIP checkpoint"
        )
    raise Llava3DLoadError(
        f"{config_file}: mm_vision_tower is {name!r}, which is not a local directory (LLaVA-3D's checkpoint does "
        f"not contain the CLIP weights, and nothing is downloaded here). Download it, e.g. "
        f"`{HUB_HINT.format(name=name)}`, and pass vision_tower_path=DIR"
    )


def _clip_config(clip_dir: pathlib.Path, config: Llava3DConfig, allow_pickle: bool):
    """Cheap checks of the CLIP directory -> (CLIPVisionConfig, image_mean, image_std)."""
    from transformers import CLIPVisionConfig

    try:
        clip_config = CLIPVisionConfig.from_pretrained(clip_dir, local_files_only=True)
    except Exception as e:
        raise Llava3DLoadError(f"cannot read a CLIP vision config from {clip_dir}: {type(e).__name__}: {e}") from e
    if clip_config.hidden_size != config.mm_hidden_size:
        raise Llava3DLoadError(
            f"CLIP at {clip_dir} has hidden_size {clip_config.hidden_size} but the LLaVA-3D config's "
            f"mm_hidden_size is {config.mm_hidden_size}: this is not the vision tower the model was trained with"
        )
    n_hidden = clip_config.num_hidden_layers + 1  # hidden_states: embeddings output, then every layer
    if not -n_hidden <= config.mm_vision_select_layer < n_hidden:
        raise Llava3DLoadError(
            f"mm_vision_select_layer {config.mm_vision_select_layer} is out of range for the "
            f"{clip_config.num_hidden_layers}-layer CLIP at {clip_dir}"
        )
    if not any(clip_dir.glob("*.safetensors")) and not allow_pickle:
        bins = sorted(clip_dir.glob("*.bin"))
        what = (
            f"only {bins[0].name}, and pickle loading is disabled; pass allow_pickle=True if you trust it"
            if bins
            else "none at all"
        )
        raise Llava3DLoadError(f"CLIP at {clip_dir} has no *.safetensors weights: {what}")

    mean, std = CLIP_MEAN, CLIP_STD
    pre = clip_dir / "preprocessor_config.json"
    if pre.is_file():
        try:
            p = json.loads(pre.read_text())
            mean, std = tuple(p.get("image_mean", mean)), tuple(p.get("image_std", std))
        except (OSError, ValueError) as e:
            raise Llava3DLoadError(f"{pre} cannot be read as JSON ({e})") from e
        if len(mean) != 3 or len(std) != 3:
            raise Llava3DLoadError(f"{pre}: image_mean / image_std need 3 values, got {mean} / {std}")
    return clip_config, mean, std


def _load_clip(clip_dir: pathlib.Path, dtype, device):
    """The CLIP vision tower, every vision weight from clip_dir, on device."""
    from transformers import CLIPVisionModel
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    # A full CLIP checkpoint also holds the text tower: from_pretrained's report of those "unexpected"
    # keys is noise here. Missing vision weights are checked below instead.
    hf_logging.set_verbosity_error()
    try:
        tower, info = CLIPVisionModel.from_pretrained(
            clip_dir,
            dtype=dtype,
            use_safetensors=any(clip_dir.glob("*.safetensors")),
            local_files_only=True,
            output_loading_info=True,
        )
    except Exception as e:
        raise Llava3DLoadError(f"cannot load the CLIP vision tower from {clip_dir}: {type(e).__name__}: {e}") from e
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    missing = sorted(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    if missing or mismatched:
        raise Llava3DLoadError(
            f"CLIP weights in {clip_dir} do not match its config.json: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(mismatched)} with the wrong shape (e.g. {mismatched[:3]})"
        )
    try:
        return tower.to(device).eval()
    except Exception as e:  # e.g. CUDA out of memory
        raise Llava3DLoadError(f"cannot move the CLIP vision tower from {clip_dir} to {device}: {e}") from e


def _check_weights(weights: _Weights, expected: dict, optional: set, path: pathlib.Path) -> None:
    """All problems of the checkpoint against the config in one Llava3DLoadError."""
    found = {k for k in weights.shapes if not k.endswith(IGNORED_SUFFIXES)}
    missing = sorted(set(expected) - found - optional)
    unexpected = sorted(found - set(expected))
    wrong = [k for k in sorted(found & set(expected)) if weights.shapes[k] != expected[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} weight(s) missing from the checkpoint, e.g. {missing[:4]}")
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected weight(s), e.g. "
            + ", ".join(f"{k} (in {weights.files[k].name})" for k in unexpected[:4])
        )
    for k in wrong[:4]:
        problems.append(
            f"{k}: expected shape {list(expected[k])}, found {list(weights.shapes[k])} in {weights.files[k].name}"
        )
    if len(wrong) > 4:
        problems.append(f"... {len(wrong) - 4} more weight(s) with the wrong shape")
    if problems:
        files = sorted({f.name for f in weights.files.values()})
        raise Llava3DLoadError(
            f"weights in {path} ({', '.join(files)}) do not match its config.json (not the LLaVA-3D checkpoint "
            "the config describes, or an incomplete download):\n  - " + "\n  - ".join(problems)
        )


def _missing_modules(modules: dict) -> list:
    """{pip package: module} -> the packages whose module cannot be imported."""
    missing = []
    for package, module in modules.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    return missing


def _require_sentencepiece(path: pathlib.Path) -> None:
    """Llava3DLoadError naming the packages missing to read path's tokenizer.model, if any."""
    missing = _missing_modules(SENTENCEPIECE_MODULES)
    if missing:
        alone = "" if (path / FAST_TOKENIZER_FILE).is_file() else f", no {FAST_TOKENIZER_FILE}"
        raise Llava3DLoadError(
            f"{path} has a SentencePiece tokenizer ({SENTENCEPIECE_FILE}{alone}), and reading it needs the "
            f"Python package(s) {' and '.join(missing)}, which are not installed: "
            f"pip install -c requirements/constraints.txt {' '.join(missing)}"
        )


def load_tokenizer(path: pathlib.Path, config: Llava3DConfig):
    """The checkpoint's tokenizer, encoding text as LLaVA-3D's own code does.

    LLaVA-3D loads LLaMA tokenizers with use_fast=False, i.e. tokenizer.model through SentencePiece,
    which puts its dummy prefix "▁" before every text chunk, even one that starts with a space
    (" standing on?" after a location token). transformers 5 converts tokenizer.model to a
    tokenizers pipeline that skips the prefix there; where tokenizer.model exists, the prefix is
    made SentencePiece's again (as transformers 4's legacy fast LLaMA tokenizer did).
    """
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise Llava3DLoadError(
            f"{path} has no tokenizer ({' or '.join(TOKENIZER_FILES)}); "
            "copy the tokenizer files that belong to this checkpoint"
        )
    sentencepiece_model = path / SENTENCEPIECE_FILE
    if sentencepiece_model.is_file() and not (path / FAST_TOKENIZER_FILE).is_file():
        _require_sentencepiece(path)  # transformers would fail with a message about tiktoken
    from transformers import AutoTokenizer

    try:
        # config=: otherwise AutoTokenizer re-reads config.json, whose model_type (llava_llama) it does
        # not know; LLaMA's is the right fallback when tokenizer_config.json names no class.
        tokenizer = AutoTokenizer.from_pretrained(path, config=config.text_config, local_files_only=True)
    except Exception as e:
        raise Llava3DLoadError(f"cannot load the tokenizer from {path}: {type(e).__name__}: {e}") from e
    if sentencepiece_model.is_file():
        _use_sentencepiece_prefix(tokenizer, sentencepiece_model)
    return tokenizer


def _use_sentencepiece_prefix(tokenizer, model_file: pathlib.Path) -> None:
    """Give a converted SentencePiece tokenizer SentencePiece's own prefix rule: "▁" before every
    encoded text when the model's add_dummy_prefix is set (its default), spaces as "▁"."""
    from tokenizers import normalizers, pre_tokenizers

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not isinstance(backend.pre_tokenizer, pre_tokenizers.Metaspace):
        return  # not a Metaspace (SentencePiece-style) pipeline: it was built from tokenizer.json as it is
    _require_sentencepiece(model_file.parent)
    try:
        from sentencepiece import sentencepiece_model_pb2

        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(model_file.read_bytes())
        dummy_prefix = proto.normalizer_spec.add_dummy_prefix
    except Exception as e:
        raise Llava3DLoadError(f"cannot read {model_file} as a SentencePiece model: {type(e).__name__}: {e}") from e
    steps = [normalizers.Prepend(SPIECE_SPACE)] if dummy_prefix else []
    backend.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", SPIECE_SPACE)])
    backend.pre_tokenizer = None


def load_llava3d(path, vision_tower_path=None, device: str = "auto", dtype: str = "auto", allow_pickle: bool = False):
    """Load a local LLaVA-3D checkpoint -> (Llava3D in eval mode without grads, tokenizer, Llava3DConfig).

    vision_tower_path: local CLIP directory; default config.json's mm_vision_tower, which must then be
    a local directory. dtype 'auto': bf16 (fp16 before Ampere) on GPU, fp32 on CPU.
    ValueError for a bad device/dtype argument, Llava3DLoadError (a ModelLoadError) for anything
    wrong with the files.
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)

    path = pathlib.Path(path).expanduser()
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise Llava3DLoadError(
            f"model path {path} {what}. Point it at a LLaVA-3D checkpoint directory, or create a tiny untrained "
            f"test checkpoint with: adatoken3d-make-random-llava3d {path}"
        )
    config_file = path / "config.json"
    if not config_file.is_file():
        raise Llava3DLoadError(f"{config_file} is missing: {path} is not a Hugging Face checkpoint directory")
    try:
        raw_config = json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        raise Llava3DLoadError(f"{config_file} cannot be read as JSON ({e}); re-download or recreate it") from e
    try:
        config = Llava3DConfig.from_dict(raw_config)
    except (ValueError, TypeError) as e:
        raise Llava3DLoadError(f"{config_file}: {e}") from e

    # ---- tokenizer (cheap, and a wrong one explains a vocab mismatch better than weight shapes do)
    tokenizer = load_tokenizer(path, config)
    from transformers import CLIPVisionModel, GenerationConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    vocab = config.text_config.vocab_size
    if len(tokenizer) > vocab:
        raise Llava3DLoadError(
            f"tokenizer in {path} has {len(tokenizer)} tokens but {config_file} vocab_size is {vocab}; "
            "the tokenizer files belong to another model"
        )

    # ---- configs and file headers: everything is validated before a large tensor is read
    weights = _find_weights(path, allow_pickle)
    clip_dir = _vision_tower_dir(config, vision_tower_path, config_file)
    clip_config, mean, std = _clip_config(clip_dir, config, allow_pickle)

    # Built on the meta device (no memory, no random init); the checkpoint's tensors then become
    # the parameters (assign=True), and the loaded CLIP replaces the placeholder tower.
    with torch.device("meta"):
        model = Llava3D(config, CLIPVisionModel(clip_config), image_mean=mean, image_std=std)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("vision_tower.")}
    expected = {to_released(k): s for k, s in ours.items()}
    tied = bool(config.text_config.tie_word_embeddings)
    optional = {"lm_head.weight"} if tied else set()
    _check_weights(weights, expected, optional, path)

    model.vision_tower = _load_clip(clip_dir, torch_dtype, torch_device)  # the smaller read first
    try:
        state = _read_tensors(weights, [k for k in expected if k in weights.files], torch_device, torch_dtype)
    except Exception as e:  # e.g. CUDA out of memory, a truncated shard
        raise Llava3DLoadError(f"cannot read the weights of {path} onto {torch_device}: {type(e).__name__}: {e}") from e
    result = model.load_state_dict(state, strict=False, assign=True)
    assert not result.unexpected_keys, result.unexpected_keys  # _check_weights saw every name
    lm = model.language_model
    if tied:
        lm.lm_head.weight = lm.model.embed_tokens.weight
    # Non-persistent buffers (rotary inv_freq) are not in any checkpoint: compute them on the device.
    lm.model.rotary_emb = LlamaRotaryEmbedding(config=config.text_config).to(torch_device)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a bug here, never a silently random weight
        raise Llava3DLoadError(f"internal error: {len(left)} tensor(s) of {path} were never loaded, e.g. {left[:3]}")

    if (path / "generation_config.json").is_file():
        try:
            lm.generation_config = GenerationConfig.from_pretrained(path, local_files_only=True)
        except Exception as e:
            raise Llava3DLoadError(f"cannot read {path / 'generation_config.json'}: {type(e).__name__}: {e}") from e
    provenance_file = next(
        (path / name for name in (PROVENANCE_FILE, LEGACY_PROVENANCE_FILE) if (path / name).is_file()), None
    )
    if provenance_file is not None:
        try:
            model.provenance = json.loads(provenance_file.read_text())
        except (OSError, ValueError):
            model.provenance = {}
    model.eval().requires_grad_(False)  # inference only: no autograd graph behind any output
    return model, tokenizer, config


__all__ = [
    "ModelLoadError",
    "Llava3DLoadError",
    "PROVENANCE_FILE",
    "NAME_MAP",
    "load_llava3d",
    "load_tokenizer",
    "to_ours",
    "to_released",
]
