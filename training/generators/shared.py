"""What every generator training stage shares: its start (process group, device, seed, training arrays),
one-hot label maps, mixed precision and EMA weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from VentricleSynthLib.labels import NUM_CLASSES

from training.data.training_arrays import TrainingArrays, load_training_arrays
from training.loop import init_distributed, seed_all, training_device
from training.stage_configs import GeneratorsConfig, NetworkConfig


def start(generators: GeneratorsConfig, network: str, seed: int, work: Path
          ) -> tuple[NetworkConfig, torch.device, TrainingArrays]:
    """(the network's settings, the device, the training arrays) once the process group is up and every RNG is
    seeded (before any network is built, so that initial weights are reproducible)."""
    spec = generators.network(network)
    init_distributed()
    device = training_device()
    seed_all(seed)
    return spec, device, load_training_arrays(work / "data", generators.datasets)


def one_hot(indices: np.ndarray, device) -> torch.Tensor:
    """(N, X, Y, Z) class indices -> (N, classes, X, Y, Z) float one-hot on `device`."""
    idx = torch.from_numpy(indices.astype(np.int64)).to(device)
    return F.one_hot(idx, NUM_CLASSES).movedim(-1, 1).float()


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when the config asks for AMP (no loss scaling needed); a no-op on CPU."""
    enabled = bool(amp) and device.type == "cuda"
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled)


def ema(module: torch.nn.Module, decay: float | None):
    """An exponential moving average of `module`'s weights (None without a decay)."""
    if not decay:
        return None
    return torch.optim.swa_utils.AveragedModel(
        module, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay))
