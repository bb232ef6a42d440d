"""Greedy question answering with a LLaMA causal LM, as two explicit steps over a KV cache.

    prompt ids [1, T] --prefill--> KV cache (T positions) + logits of the last position [1, V]
    token      [1, 1] --decode --> KV cache (+1 position)  + logits [1, V]      (repeated)

The prefill is its own method because that is where LLaVA-3D spatial tokens will be spliced in and
where attention-based token pruning will shrink the sequence layer by layer; the decode loop
only ever sees the cache the prefill left behind. No `model.generate`: we need that control.

No ROS imports here; the node drives `generate` from one worker thread.
"""

import inspect
import json
import pathlib
import re
import time
from dataclasses import dataclass
from typing import Callable

import torch

from .flops import LlamaShape, prefill_flops
from .prompt import build_prompt
from .tiny import MARKER  # says whether the weights were ever trained
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")  # fast tokenizer / sentencepiece model
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelLoadError(RuntimeError):
    """The checkpoint at a path cannot be used; the message names the path and what to do."""


@dataclass
class GenerationResult:
    text: str  # answer, special tokens skipped, stripped
    token_ids: list[int]  # generated ids, including a final EOS if one was generated
    text_tokens: int  # prompt length in tokens (with BOS)
    generated_tokens: int  # == len(token_ids)
    prefill_ms: float
    decode_ms: float  # model time of the decode steps only (callbacks excluded)
    prefill_flops: float  # as run
    prefill_flops_dense: float  # had nothing been pruned
    stop_reason: str  # "eos" | "max_new_tokens" | "cancelled"


def resolve_device(device: str) -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> torch.device, or ValueError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", device) if isinstance(device, str) else None
    if m is None:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here; use 'cpu' or 'auto'")
    index = int(m.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return torch.device("cuda", index)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' | 'float32' | 'float16' | 'bfloat16' -> torch.dtype, or ValueError."""
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32  # half precision matmuls on CPU are slow or unsupported
        # bf16 keeps fp32's range (no overflow in LLaMA activations); pre-Ampere GPUs lack it
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be 'auto', 'float32', 'float16' or 'bfloat16', got {dtype!r}")
    return _DTYPES[dtype]


def _cache_kwarg() -> str:
    # transformers 5.24 renamed forward(past_key_values=...) to forward(cache=...); earlier 5.x
    # only know past_key_values, and an unknown kwarg would be swallowed silently (no cache!).
    from transformers import LlamaForCausalLM

    return "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


class TextEngine:
    def __init__(self, model, tokenizer, path: pathlib.Path, marker: dict | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self._path = path
        self._marker = marker or {}
        self._shape = LlamaShape.from_config(model.config)
        self._cache_kw = _cache_kwarg()
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos = eos if eos is not None else model.config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if tokenizer.eos_token_id is not None:
            eos.append(tokenizer.eos_token_id)
        self.eos_token_ids = frozenset(eos)  # any of these ends the answer

    # ---- loading -------------------------------------------------------------------------

    @classmethod
    def load(cls, path, device: str = "auto", dtype: str = "auto", allow_pickle: bool = False) -> "TextEngine":
        """Load a local Hugging Face LLaMA checkpoint directory; ModelLoadError if it is unusable."""
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)

        path = pathlib.Path(path).expanduser()
        if not path.is_dir():
            what = "is not a directory" if path.exists() else "does not exist"
            raise ModelLoadError(
                f"model path {path} {what}. Point it at a Hugging Face LLaMA checkpoint directory, or create "
                f"a tiny untrained test checkpoint with: adatoken3d-make-tiny {path}"
            )
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ModelLoadError(f"{config_file} is missing: {path} is not a Hugging Face checkpoint directory")
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{config_file} cannot be read as JSON ({e}); re-download or recreate it") from e
        archs = config.get("architectures") or []
        if config.get("model_type") != "llama" or (archs and "LlamaForCausalLM" not in archs):
            raise ModelLoadError(
                f"{config_file} describes model_type={config.get('model_type')!r}, architectures={archs}; "
                "this engine needs a LLaMA causal LM (model_type 'llama', LlamaForCausalLM)"
            )

        safetensors = sorted(path.glob("*.safetensors"))
        pickles = sorted(path.glob("pytorch_model*.bin"))
        if not safetensors:
            if pickles and not allow_pickle:
                raise ModelLoadError(
                    f"{path} has no *.safetensors weights, only {pickles[0].name}, and pickle loading is disabled "
                    "(a .bin file can run arbitrary code when unpickled). Convert it to safetensors, or pass "
                    "allow_pickle=True if you trust its source."
                )
            if not pickles:
                raise ModelLoadError(f"{path} has no *.safetensors weight files; copy the model weights there")
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise ModelLoadError(
                f"{path} has no tokenizer ({' or '.join(TOKENIZER_FILES)}); copy the tokenizer files "
                "that belong to this checkpoint"
            )

        from transformers import AutoTokenizer, LlamaForCausalLM

        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except Exception as e:
            raise ModelLoadError(f"cannot load the tokenizer from {path}: {type(e).__name__}: {e}") from e
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a node's log is no terminal: no "Loading weights" bars
        try:
            model, info = LlamaForCausalLM.from_pretrained(
                path,
                dtype=torch_dtype,
                # Only ever unpickle when asked to, and only when there are no safetensors.
                use_safetensors=bool(safetensors),
                local_files_only=True,
                output_loading_info=True,
            )
        except Exception as e:
            raise ModelLoadError(f"cannot load the model from {path}: {type(e).__name__}: {e}") from e
        # from_pretrained only warns about missing weights and leaves them random: refuse instead.
        missing = [k for k in info.get("missing_keys", []) if not k.endswith("rotary_emb.inv_freq")]
        if missing:
            raise ModelLoadError(
                f"weights in {path} do not match config.json: {len(missing)} tensor(s) missing, e.g. {missing[:3]}"
            )
        if len(tokenizer) > model.config.vocab_size:
            raise ModelLoadError(
                f"tokenizer in {path} has {len(tokenizer)} tokens but config.json vocab_size is "
                f"{model.config.vocab_size}; the tokenizer files belong to another model"
            )
        try:
            model = model.to(torch_device).eval()
        except Exception as e:  # e.g. CUDA out of memory
            raise ModelLoadError(f"cannot move the model from {path} to {torch_device}: {e}") from e

        marker = None
        if (path / MARKER).is_file():
            try:
                marker = json.loads((path / MARKER).read_text())
            except (OSError, ValueError):
                marker = None
        return cls(model, tokenizer, path, marker)

    # ---- properties ----------------------------------------------------------------------

    @property
    def shape(self) -> LlamaShape:
        return self._shape

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def path(self) -> pathlib.Path:
        return self._path

    @property
    def is_untrained(self) -> bool:
        """True for the tiny random checkpoint (its marker says trained: false); answers are noise."""
        return self._marker.get("trained") is False

    # ---- the two steps -------------------------------------------------------------------

    def encode(self, question: str) -> torch.Tensor:
        """llava_v1 prompt for question -> input ids [1, T], starting with BOS."""
        ids = self.tokenizer(build_prompt(question), add_special_tokens=True).input_ids
        bos = self.tokenizer.bos_token_id
        # Our tokenizers add BOS themselves (post-processor / add_bos_token); make sure, never twice.
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return torch.tensor([ids], dtype=torch.long, device=self.device)

    def prefill(self, input_ids: torch.Tensor):
        """One forward over the whole prompt.

        input_ids [1, T] -> (logits [1, V] of the last position, filled KV cache, tokens_per_layer).
        tokens_per_layer[i] is how many tokens layer i processed (all T until pruning exists).
        """
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)  # filled in place by the forward
        out = self.model(
            input_ids=input_ids,
            use_cache=True,
            logits_to_keep=1,  # lm_head on the last position only: [1, 1, V], not [1, T, V]
            **{self._cache_kw: cache},
        )
        tokens_per_layer = [input_ids.shape[1]] * self._shape.num_layers
        return out.logits[:, -1], cache, tokens_per_layer

    def decode_step(self, token: torch.Tensor, cache) -> torch.Tensor:
        """token [1, 1] attends to the cache (positions follow from its length) -> logits [1, V]."""
        out = self.model(input_ids=token, use_cache=True, **{self._cache_kw: cache})
        return out.logits[:, -1]

    # ---- generation ----------------------------------------------------------------------

    def generate(
        self,
        question: str,
        max_new_tokens: int,
        on_token: Callable[[str, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        """Greedy answer to question.

        on_token(partial_text, n) is called after each generated token (n = 1, 2, ...), EOS included;
        partial_text is the answer decoded so far, holding back a trailing incomplete UTF-8 character.
        should_stop() is checked before the prefill and before each decode step; True ends the
        generation with stop_reason "cancelled" and whatever was generated so far.
        """
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question must be a non-empty string")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")

        input_ids = self.encode(question)  # [1, T]
        n_prompt = input_ids.shape[1]
        context = self.model.config.max_position_embeddings
        if n_prompt + max_new_tokens > context:
            raise ValueError(
                f"prompt ({n_prompt} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                f"context of {context} tokens; shorten the question or lower max_new_tokens"
            )

        def result(ids, stop_reason, prefill_ms=0.0, decode_ms=0.0, flops=0.0, dense=0.0):
            text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
            return GenerationResult(text, ids, n_prompt, len(ids), prefill_ms, decode_ms, flops, dense, stop_reason)

        if should_stop is not None and should_stop():
            return result([], "cancelled")

        with torch.inference_mode():
            t0 = self._now()
            logits, cache, tokens_per_layer = self.prefill(input_ids)
            token = logits.argmax(dim=-1, keepdim=True)  # [1, 1], greedy
            ids = [int(token)]  # .item() waits for the device
            prefill_ms = (self._now() - t0) * 1e3
            flops = prefill_flops(self._shape, tokens_per_layer)
            dense = prefill_flops(self._shape, [n_prompt] * self._shape.num_layers)

            decode_ms = 0.0
            while True:
                if on_token is not None:
                    partial = self.tokenizer.decode(ids, skip_special_tokens=True)
                    on_token(partial.rstrip("\ufffd").strip(), len(ids))
                if ids[-1] in self.eos_token_ids:
                    stop_reason = "eos"
                    break
                if len(ids) >= max_new_tokens:
                    stop_reason = "max_new_tokens"
                    break
                if should_stop is not None and should_stop():
                    stop_reason = "cancelled"
                    break
                t0 = self._now()
                logits = self.decode_step(token, cache)
                token = logits.argmax(dim=-1, keepdim=True)  # [1, 1]
                ids.append(int(token))
                decode_ms += (self._now() - t0) * 1e3

        return result(ids, stop_reason, prefill_ms, decode_ms, flops, dense)

    def warmup(self) -> GenerationResult:
        """One short generation (prefill + one decode step) so the first real query is not slow."""
        return self.generate("What is in the scene?", max_new_tokens=2)

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # kernels are async; time what actually ran
        return time.perf_counter()
