"""The latents an LDM trains on: every training case encoded by its autoencoder, cached, standardised."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from training.data.training_arrays import TrainingArrays
from training.loop import is_main
from VentricleSynthLib.io.atomic import atomic_write


@torch.no_grad()
def encode_all(encode, arrays: TrainingArrays, batch: int = 2) -> torch.Tensor:
    """`encode(slice)` over all training arrays, `batch` cases at a time, concatenated on the CPU."""
    latents = []
    for start in range(0, len(arrays), batch):
        latents.append(encode(slice(start, start + batch)).cpu())
    return torch.cat(latents)


def cached(path: Path, inputs: list[Path], arrays: TrainingArrays, compute):
    """compute() -> tensors, reused from `path` while the input files and the case list are unchanged
    (encoding and decoding every training case takes minutes on CPU; a resumed run need not repeat it)."""
    digest = hashlib.sha256()
    for file in inputs:
        digest.update(Path(file).read_bytes())
    digest.update("\n".join(arrays.names).encode())
    key = digest.hexdigest()
    if path.is_file():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if stored.get("key") == key:
            return tuple(stored["tensors"])
    tensors = compute()
    if is_main():
        atomic_write(path, lambda tmp: torch.save({"key": key, "tensors": list(tensors)}, tmp))
    return tensors


def standardise(latents: torch.Tensor) -> tuple[torch.Tensor, list[float], float]:
    """Per-channel mean removed, then one global scale (1/std). Diffusion from pure noise cannot recover a
    large per-channel offset of the latents (measured: the first mask LDM produced 170-380 mL whatever was
    asked), so the offset is stored in the bundle and added back after sampling."""
    shift = latents.mean(dim=(0, *range(2, latents.ndim)))
    centred = latents - shift.reshape(1, -1, *([1] * (latents.ndim - 2)))
    scale = float(1.0 / centred.std())
    return centred * scale, [float(v) for v in shift], scale


@torch.no_grad()
def decoded_ventricle_ml(autoencoder, latents: torch.Tensor, arrays: TrainingArrays, device) -> np.ndarray:
    """Ventricle volume (mL) of each latent's decoding by the mask autoencoder."""
    from VentricleSynthLib.labels import VENTRICLE_LABELS, to_indices
    from VentricleSynthLib.volumes import voxel_volume_ml

    vent_idx = torch.from_numpy(to_indices(np.asarray(VENTRICLE_LABELS)).astype(np.int64))
    out = []
    for z in latents:
        classes = autoencoder.decode(z[None].to(device)).argmax(dim=1).cpu()
        out.append(float(torch.isin(classes, vent_idx).sum()))
    return np.asarray(out, np.float32) * voxel_volume_ml(arrays.affine)
