"""One place that turns a device name from a config into a torch.device."""

from __future__ import annotations

import os

import torch

from .errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available, else mps, else cpu; an unavailable accelerator is an error."""
    if name in ("auto", "cuda") and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))  # one GPU per process under accelerate launch
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: torch {torch.__version__} sees no CUDA GPU; "
                          "set device: cpu (or auto), or install a CUDA build of torch")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r}: MPS is not available here; set device: cpu or auto")
    return device
