"""The torch device and dtype the model runs on, from the node's `device` and `dtype` parameters.

resolve_device("auto" | "cpu" | "cuda" | "cuda:N") -> torch.device, or ValueError
resolve_dtype("auto" | "float32" | "float16" | "bfloat16", device) -> torch.dtype, or ValueError
now(device) -> time.perf_counter() after the device's queued work has run
"""

import re
import time

import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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


def now(device: torch.device) -> float:
    """time.perf_counter() once the device's queued work has run: CUDA kernels are asynchronous."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
