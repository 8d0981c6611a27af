"""Device choice shared by every model: auto -> cuda -> mps -> cpu.

One rule (`resolve_device`): auto, cpu, cuda, cuda:N (when CUDA is available and N is one of its devices) and
mps (when available) are accepted; every other name, including ones torch knows (xpu, meta, hip, ...), is a
RequestError, so a command refuses it in one line before anything is loaded or written.
"""

from __future__ import annotations

import re

import torch

from VentricleSynthLib.errors import RequestError

CHOICES = "auto, cpu, cuda, cuda:N or mps"


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(device: str | torch.device | None) -> torch.device:
    """auto -> cuda -> mps -> cpu; an explicit device that is absent or unsupported is a RequestError."""
    shown = device
    name = str(device if device is not None else "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    cuda = re.fullmatch(r"cuda(?::(\d+))?", name)
    if cuda:
        if not torch.cuda.is_available():
            raise RequestError(f"device {shown!r} requested but CUDA is not available (use --device cpu)")
        if cuda.group(1) is not None and int(cuda.group(1)) >= torch.cuda.device_count():
            raise RequestError(f"device {shown!r} requested but this machine has {torch.cuda.device_count()} CUDA "
                               f"device(s) (cuda:0..cuda:{torch.cuda.device_count() - 1})")
        return torch.device(name)
    if name == "mps":
        if not _mps_available():
            raise RequestError("device 'mps' requested but it is not available (use --device cpu)")
        return torch.device("mps")
    raise RequestError(f"device {shown!r} is not supported; use {CHOICES}")
