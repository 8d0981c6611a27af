"""Device choice shared by every model: auto -> cuda -> mps -> cpu."""

from __future__ import annotations

import torch

from VentricleSynthLib.errors import RequestError


def resolve_device(device: str | None) -> torch.device:
    """auto -> cuda -> mps -> cpu; an explicit device that is absent is a RequestError."""
    name = (device or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RequestError(f"device {device!r} requested but CUDA is not available (use --device cpu)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RequestError("device 'mps' requested but it is not available (use --device cpu)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise RequestError(f"unknown device {device!r}; use auto, cpu, cuda or mps") from None
