"""Sampling from the two bundled latent diffusion models: label maps with a requested ventricle
volume (classifier-free guidance), and label map -> T1-like image (SPADE).

The volume is asked in mL and normalised with the statistics stored in the mask bundle.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from VentricleSynthLib.bundles import format as bundles
from VentricleSynthLib.devices import resolve_device
from VentricleSynthLib.errors import RequestError
from VentricleSynthLib.labels import MAIN_CLASSES, from_indices, one_hot, to_indices
from VentricleSynthLib.generation.networks import condition, ddim, mask_unet_input, image_autoencoder, image_unet, mask_autoencoder, mask_unet
from VentricleSynthLib.volumes import tiv_ml, ventricle_volume_ml

Progress = Callable[[str, int, int], None]


def one_brain(label: np.ndarray) -> np.ndarray:
    """The largest connected piece of the brain (labels > 0, face connectivity); other pieces -> background.

    A decoded label map can hold stray islands of a few voxels away from the brain (measured on the cpu
    bundle before this step: one connected brain in only 13-30 % of samples); a label map is meant to be
    one brain.
    """
    from scipy import ndimage

    pieces, n = ndimage.label(label > 0)
    if n <= 1:
        return label
    sizes = np.bincount(pieces.ravel())
    sizes[0] = 0
    return np.where(pieces == int(sizes.argmax()), label, 0).astype(label.dtype)


def _check_steps(steps: int, maximum: int) -> None:
    if not isinstance(steps, int) or steps < 1 or steps > maximum:
        raise RequestError(f"steps must be an integer in 1..{maximum}, got {steps!r}")


class _LatentDiffusion:
    """What both generators share: the bundle, its config, the latent scale and the DDIM loop."""

    def __init__(self, folder: Path, device: str | None = None):
        self.folder = Path(folder)
        bundles.verify(self.folder)
        self.config = bundles.read_config(self.folder)
        self.device = resolve_device(device)
        self.scale_factor = float(self.config["scale_factor"])
        shift = self.config.get("latent_shift") or [0.0] * int(self.config["latent_shape"][0])
        self.latent_shift = torch.tensor(shift, dtype=torch.float32).reshape(1, -1, 1, 1, 1)
        self.latent_shape = tuple(self.config["latent_shape"])
        self.scheduler_kwargs = self.config["scheduler"]
        self.id = bundles.model_id(self.folder)

    def _load(self, module: torch.nn.Module, name: str) -> torch.nn.Module:
        try:
            module.load_state_dict(bundles.load_weights(self.folder, name))
        except RuntimeError as exc:
            raise bundles.BundleError(
                f"model bundle {self.folder}: {name} weights do not fit its config ({exc})") from None
        return module.to(self.device).eval()

    def _denoise(self, denoise_fn, steps: int, generator: torch.Generator | None, stage: str,
                 progress: Progress | None, batch: int = 1, z0: torch.Tensor | None = None) -> torch.Tensor:
        """The DDIM loop from `batch` latents drawn from `generator`, or from the given noise `z0` (batched
        cohorts draw each sample's noise from its own seed)."""
        scheduler = ddim(self.scheduler_kwargs)
        _check_steps(steps, scheduler.num_train_timesteps)
        scheduler.set_timesteps(steps, device=self.device)
        if z0 is None:
            z0 = torch.randn((batch, *self.latent_shape), generator=generator, device="cpu")
        z = z0.to(self.device)
        for i, t in enumerate(scheduler.timesteps, start=1):
            eps = denoise_fn(z, t.reshape(1).expand(z.shape[0]).to(self.device))
            z, _ = scheduler.step(eps, int(t), z)
            if progress:
                progress(stage, i, steps)
        return z / self.scale_factor + self.latent_shift.to(z.device)


MAX_CANDIDATES = 16


class MaskGenerator(_LatentDiffusion):
    """Volume-conditioned label-map LDM with classifier-free guidance.

    `candidates` K > 1: K latents are denoised together (one batch) from the same seed and the decoding
    whose ventricle volume is closest to the request is kept (volume-matched sampling), preferring
    decodings that hold all of the schema's MAIN_CLASSES. Candidate 0 is
    the K = 1 sample. The bundle's `sampling.candidates` is the default; its card reports both.
    """

    def __init__(self, folder: Path, device: str | None = None):
        super().__init__(folder, device)
        arch = self.config["architecture"]
        self.autoencoder = self._load(mask_autoencoder(arch["autoencoder"]), "autoencoder")
        self.unet = self._load(mask_unet(arch["unet"], arch["autoencoder"]["latent_channels"]), "unet")
        self.unet_arch = arch["unet"]
        norm = self.config["volume_normalisation"]
        self.v_min, self.v_max = float(norm["min_ml"]), float(norm["max_ml"])
        self.sampling = self.config.get("sampling", {"guidance": 4.0, "steps": 50})

    @property
    def trained_range_ml(self) -> tuple[float, float]:
        return self.v_min, self.v_max

    def normalise(self, volume_ml: float) -> float:
        return (volume_ml - self.v_min) / (self.v_max - self.v_min)

    def check_request(self, volume_ml: float, guidance: float, steps: int, candidates: int = 1) -> None:
        if not np.isfinite(volume_ml) or volume_ml <= 0:
            raise RequestError(f"ventricle volume must be a positive number of mL, got {volume_ml}")
        span = self.v_max - self.v_min
        if not (self.v_min - 0.25 * span <= volume_ml <= self.v_max + 0.25 * span):
            raise RequestError(f"ventricle volume {volume_ml:g} mL is far outside the trained range "
                               f"{self.v_min:.0f}-{self.v_max:.0f} mL")
        if not np.isfinite(guidance) or guidance < 0:
            raise RequestError(f"guidance must be >= 0, got {guidance}")
        _check_steps(steps, 1000)
        if isinstance(candidates, bool) or not isinstance(candidates, int) or not 1 <= candidates <= MAX_CANDIDATES:
            raise RequestError(f"candidates must be an integer in 1..{MAX_CANDIDATES}, got {candidates!r}")

    @property
    def affine(self) -> np.ndarray:
        return np.asarray(self.config["affine"], dtype=np.float64)

    def sample(self, volume_ml: float, guidance: float | None = None, steps: int | None = None, seed: int = 0,
               progress: Progress | None = None, candidates: int | None = None) -> np.ndarray:
        """One label map (FreeSurfer numbers, int16) on the profile grid."""
        return self.sample_with_record(volume_ml, guidance, steps, seed, progress, candidates)[0]

    @torch.no_grad()
    def sample_with_record(self, volume_ml: float, guidance: float | None = None, steps: int | None = None,
                           seed: int = 0, progress: Progress | None = None,
                           candidates: int | None = None) -> tuple[np.ndarray, dict]:
        """The label map and what sampling did: guidance, steps, candidates' volumes, the one kept."""
        guidance = float(self.sampling["guidance"] if guidance is None else guidance)
        steps = int(self.sampling["steps"] if steps is None else steps)
        k = int(self.sampling.get("candidates", 1)) if candidates is None else candidates
        self.check_request(volume_ml, guidance, steps, k)
        generator = torch.Generator().manual_seed(int(seed))
        denoise = self._guided([volume_ml] * k, guidance)
        z = self._denoise(denoise, steps, generator, "mask", progress, batch=k)
        label, chosen = self.choose(z, volume_ml)
        return label, {"guidance": guidance, "steps": steps, "candidates": k, **chosen}

    def _guided(self, volumes_ml: list[float], guidance: float):
        """The classifier-free guided noise estimate for latents asking these volumes (one per latent)."""
        v = torch.tensor([self.normalise(float(x)) for x in volumes_ml], dtype=torch.float32, device=self.device)
        context = torch.cat([condition(v), condition(v, keep=torch.zeros(len(v), device=self.device))])

        def denoise(z, t):
            zz = mask_unet_input(torch.cat([z, z]), context, self.unet_arch)
            eps_c, eps_u = self.unet(zz, torch.cat([t, t]), context=context).chunk(2)
            return eps_u + guidance * (eps_c - eps_u)

        return denoise

    @torch.no_grad()
    def choose(self, latents: torch.Tensor, volume_ml: float) -> tuple[np.ndarray, dict]:
        """Decode K candidate latents (one brain each) and keep the best: a candidate with all main classes
        beats any without, then the volume closest to `volume_ml` wins."""
        best, volumes, complete = None, [], []
        for i in range(latents.shape[0]):  # one decoding at a time: the decoder's activations dominate memory
            label = one_brain(from_indices(self.autoencoder.decode(latents[i:i + 1]).argmax(dim=1)[0].cpu().numpy()))
            volumes.append(ventricle_volume_ml(label, self.affine))
            complete.append(bool(np.isin(MAIN_CLASSES, label).all()))
            key = (not complete[-1], abs(volumes[-1] - volume_ml))
            if best is None or key < best[2]:
                best = (i, label, key)
        return best[1], {"chosen": best[0], "candidates_ml": [round(x, 3) for x in volumes],
                         "candidates_complete": complete}


class ImageGenerator(_LatentDiffusion):
    """SPADE image LDM: a label map in -> a T1-like image in [0, 1] on the same grid."""

    def __init__(self, folder: Path, device: str | None = None):
        super().__init__(folder, device)
        arch = self.config["architecture"]
        self.autoencoder = self._load(image_autoencoder(arch["autoencoder"]), "autoencoder")
        self.unet = self._load(image_unet(arch["unet"], arch["autoencoder"]["latent_channels"]), "unet")
        self.sampling = self.config.get("sampling", {"steps": 50})

    @torch.no_grad()
    def sample(self, label_map: np.ndarray, steps: int | None = None, seed: int = 0,
               progress: Progress | None = None) -> np.ndarray:
        steps = int(self.sampling["steps"] if steps is None else steps)
        generator = torch.Generator().manual_seed(int(seed))
        seg = torch.from_numpy(one_hot(to_indices(label_map)))[None].to(self.device)

        def denoise(z, t):
            return self.unet(z, t, seg=seg)

        z = self._denoise(denoise, steps, generator, "image", progress)
        image = self.autoencoder.decode(z, seg)
        return image[0, 0].clamp(0, 1).cpu().numpy().astype(np.float32)


@dataclass
class Pair:
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    record: dict


def generate_pair(mask: MaskGenerator, image: ImageGenerator, volume_ml: float, guidance: float | None = None,
                  steps: int | None = None, seed: int = 0, progress: Progress | None = None,
                  candidates: int | None = None) -> Pair:
    """A labelled pair with `volume_ml` of ventricles asked; the record says what was asked and obtained."""
    start = time.perf_counter()
    image_steps = int(image.sampling["steps"] if steps is None else steps)
    label, sampled = mask.sample_with_record(volume_ml, guidance, steps, seed, progress, candidates)
    img = image.sample(label, image_steps, seed, progress)
    return Pair(img, label, mask.affine,
                pair_record(mask, image, volume_ml, label, sampled, image_steps, seed, time.perf_counter() - start))


def pair_record(mask: MaskGenerator, image: ImageGenerator, volume_ml: float, label: np.ndarray, sampled: dict,
                image_steps: int, seed: int, seconds: float) -> dict:
    """A generated pair's record: what was asked, what was obtained, how (`sampled`: the mask sampling's)."""
    affine = mask.affine
    return {
        "asked_ml": float(volume_ml),
        "got_ml": round(ventricle_volume_ml(label, affine), 3),
        "tiv_ml": round(tiv_ml(label, affine), 2),
        "seed": int(seed),
        "steps": {"mask": sampled["steps"], "image": image_steps},
        "guidance": sampled["guidance"],
        "candidates": sampled["candidates"],
        "candidates_ml": sampled["candidates_ml"],
        "seconds": round(seconds, 3),
        "device": str(mask.device),
        "models": {"mask": mask.id, "image": image.id},
    }
