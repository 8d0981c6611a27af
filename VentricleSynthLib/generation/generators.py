"""The two bundled latent diffusion models: label maps with a requested ventricle volume (classifier-free
guidance), and label map -> T1-like image (SPADE).

The volume is asked in mL, mapped through the mask bundle's volume calibration when it has one (the condition
that gave the asked volume when measured, `condition_ml`) and normalised with the statistics stored in the
bundle. How a pair is
sampled (guidance, steps, candidates) is `settings.SamplingSettings`; the DDIM loop is `sampler.ddim_sample`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from VentricleSynthLib.bundles import format as bundles
from VentricleSynthLib.bundles.store import IMAGE, MASK
from VentricleSynthLib.devices import resolve_device
from VentricleSynthLib.generation.networks import (
    condition,
    image_autoencoder,
    image_unet,
    mask_autoencoder,
    mask_unet,
    mask_unet_forward,
)
from VentricleSynthLib.generation.sampler import ddim_sample, guided, initial_noise
from VentricleSynthLib.generation.settings import (
    MAX_REDRAWS,
    SamplingSettings,
    bundle_sampling,
    check_volume,
    resolve,
)
from VentricleSynthLib.labels import MAIN_CLASSES, from_indices, one_hot, to_indices
from VentricleSynthLib.morphology import connected_components, largest_piece
from VentricleSynthLib.progress import ProgressCallback
from VentricleSynthLib.volumes import fragmented, ventricle_volume_ml

REDRAW_STAGE = "redraw"  # progress stage of a redrawn candidate (outside the worker's plan: moves the label only)


def one_brain(label: np.ndarray) -> np.ndarray:
    """The largest connected piece of the brain (labels > 0, face connectivity); other pieces -> background.

    A decoded label map can hold stray islands of a few voxels away from the brain (measured on the cpu
    bundle before this step: one connected brain in only 13-30 % of samples); a label map is meant to be
    one brain.
    """
    pieces, n = connected_components(label > 0)
    if n <= 1:
        return label
    return np.where(largest_piece(pieces, n), label, 0).astype(label.dtype)


class _LatentDiffusion:
    """What both generators share: the bundle, its config, its sampling defaults and the latent scale."""

    kind = ""

    def __init__(self, folder: Path, device: str | None = None):
        self.folder = Path(folder)
        bundles.verify(self.folder, required=[f"{name}.safetensors" for name in bundles.GENERATOR_WEIGHTS])
        self.config = bundles.read_config(self.folder)
        self.device = resolve_device(device)
        self.scale_factor = float(self.config["scale_factor"])
        shift = self.config.get("latent_shift") or [0.0] * int(self.config["latent_shape"][0])
        self.latent_shift = torch.tensor(shift, dtype=torch.float32).reshape(1, -1, 1, 1, 1)
        self.latent_shape = tuple(self.config["latent_shape"])
        self.scheduler_kwargs = self.config["scheduler"]
        self.sampling = bundle_sampling(self.config, self.kind)
        self.id = bundles.model_id(self.folder)

    def _load(self, module: torch.nn.Module, name: str) -> torch.nn.Module:
        try:
            module.load_state_dict(bundles.load_weights(self.folder, name))
        except RuntimeError as exc:
            raise bundles.BundleError(
                f"model bundle {self.folder}: {name} weights do not fit its config ({exc})") from None
        return module.to(self.device).eval()

    def _sample_latents(self, denoise, noise: torch.Tensor, steps: int, stage: str,
                        progress: ProgressCallback | None) -> torch.Tensor:
        """DDIM from `noise`, then undo the latent scaling and shift the autoencoder's decoder expects."""
        z = ddim_sample(denoise, noise, self.scheduler_kwargs, steps, self.device, stage, progress)
        return z / self.scale_factor + self.latent_shift.to(z.device)


@dataclass(frozen=True)
class _Decoded:
    """A decoded mask candidate: its label map, ventricle volume, and the checks candidate choice ranks by."""

    label: np.ndarray
    volume_ml: float
    complete: bool  # every one of the schema's MAIN_CLASSES present
    fragmented: bool  # volumes.fragmented

    @property
    def eligible(self) -> bool:
        return self.complete and not self.fragmented


class MaskGenerator(_LatentDiffusion):
    """Volume-conditioned label-map LDM with classifier-free guidance.

    `candidates` K > 1: K latents are denoised together (one batch) from the same seed and the decoding
    whose ventricle volume is closest to the request is kept (volume-matched sampling), preferring
    decodings that hold all of the schema's MAIN_CLASSES with ventricles not fragmented (`choose`; when none
    does, more are drawn: `sample_many`). Candidate 0 is the K = 1 sample. The bundle's `sampling.candidates`
    is the default; its card reports both.
    """

    kind = MASK

    def __init__(self, folder: Path, device: str | None = None):
        super().__init__(folder, device)
        arch = self.config["architecture"]
        self.autoencoder = self._load(mask_autoencoder(arch["autoencoder"]), "autoencoder")
        self.unet = self._load(mask_unet(arch["unet"], arch["autoencoder"]["latent_channels"]), "unet")
        self.unet_arch = arch["unet"]
        norm = self.config["volume_normalisation"]
        self.v_min, self.v_max = float(norm["min_ml"]), float(norm["max_ml"])
        self.calibration = self.config.get("volume_calibration")  # None: the condition is the asked volume

    def condition_ml(self, volume_ml: float) -> float:
        """The condition that yields `volume_ml`: the bundle's measured calibration (asked -> condition, linear
        between its points, its end points beyond them), or the volume itself without one."""
        if not self.calibration:
            return float(volume_ml)
        return float(np.interp(volume_ml, self.calibration["asked_ml"], self.calibration["condition_ml"]))

    @property
    def trained_range_ml(self) -> tuple[float, float]:
        return self.v_min, self.v_max

    def normalise(self, volume_ml: float) -> float:
        return (volume_ml - self.v_min) / (self.v_max - self.v_min)

    def check_volume(self, volume_ml: float) -> list[str]:
        """`settings.check_volume` for this bundle's trained range: the warnings, or a RequestError."""
        return check_volume(volume_ml, self.trained_range_ml)

    @property
    def affine(self) -> np.ndarray:
        return np.asarray(self.config["affine"], dtype=np.float64)

    def settings(self, guidance: float | None = None, steps: int | None = None,
                 candidates: int | None = None, refine: bool | None = None) -> SamplingSettings:
        """This bundle's sampling defaults ⊕ the request (mask stage only)."""
        return resolve(self.sampling, None, guidance=guidance, steps=steps, candidates=candidates, refine=refine)

    def sample(self, volume_ml: float, guidance: float | None = None, steps: int | None = None, seed: int = 0,
               progress: ProgressCallback | None = None, candidates: int | None = None) -> np.ndarray:
        """One label map (FreeSurfer numbers, int16) on the profile grid."""
        return self.sample_with_record(volume_ml, guidance, steps, seed, progress, candidates)[0]

    def sample_with_record(self, volume_ml: float, guidance: float | None = None, steps: int | None = None,
                           seed: int = 0, progress: ProgressCallback | None = None,
                           candidates: int | None = None) -> tuple[np.ndarray, dict]:
        """The label map and what sampling did: guidance, steps, candidates' volumes, the one kept."""
        self.check_volume(volume_ml)
        settings = self.settings(guidance, steps, candidates)
        return self.sample_many([volume_ml], [seed], settings, progress)[0]

    @torch.no_grad()
    def sample_many(self, volumes_ml: list[float], seeds: list[int], settings: SamplingSettings,
                    progress: ProgressCallback | None = None) -> list[tuple[np.ndarray, dict]]:
        """A label map and its record for each (volume, seed): K candidates each, all denoised in one batch;
        sample j's candidates start from seeds[j]'s own noise, as when it is drawn alone. When none of a sample's
        K candidates is eligible (`_Decoded.eligible`), its seed's next candidates are drawn one at a time, up to
        MAX_REDRAWS, until one is: the record's `redrawn` counts them."""
        k = settings.candidates
        latents = self.sample_latents([v for v in volumes_ml for _ in range(k)], settings.guidance,
                                      settings.mask_steps, self.starting_noise(seeds, k), progress)
        out = []
        for j, (asked, seed) in enumerate(zip(volumes_ml, seeds)):
            drawn = [self.decode(z) for z in latents[j * k:(j + 1) * k].split(1)]
            while not any(d.eligible for d in drawn) and len(drawn) < k + MAX_REDRAWS:
                noise = self.starting_noise([seed], len(drawn) + 1)[-1:]  # the seed's next candidate
                drawn.append(self.decode(self.sample_latents([asked], settings.guidance, settings.mask_steps, noise,
                                                             progress, stage=REDRAW_STAGE)))
            label, chosen = self.choose(drawn, asked)
            out.append((label, {"guidance": settings.guidance, "steps": settings.mask_steps, "candidates": k,
                                "redrawn": len(drawn) - k, "condition_ml": round(self.condition_ml(asked), 3),
                                **chosen}))
        return out

    def starting_noise(self, seeds: list[int], per_seed: int = 1) -> torch.Tensor:
        """`per_seed` starting latents per seed, each channel at mean 0 (`sampler.initial_noise`: the noise's own
        mean would otherwise choose the brain's size, and the ventricles' with it, whatever the condition)."""
        return initial_noise(self.latent_shape, seeds, per_seed, zero_mean=True)

    def sample_latents(self, volumes_ml: list[float], guidance: float, steps: int, noise: torch.Tensor,
                       progress: ProgressCallback | None = None, stage: str = "mask") -> torch.Tensor:
        """Guided DDIM from `noise` (one latent per asked volume) to decodable latents."""
        v = torch.tensor([self.normalise(self.condition_ml(float(x))) for x in volumes_ml], dtype=torch.float32,
                         device=self.device)
        context = torch.cat([condition(v), condition(v, keep=torch.zeros(len(v), device=self.device))])

        def conditioned_and_not(z, t):
            return mask_unet_forward(self.unet, torch.cat([z, z]), torch.cat([t, t]), context, self.unet_arch).chunk(2)

        return self._sample_latents(guided(conditioned_and_not, guidance), noise, steps, stage, progress)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> _Decoded:
        """One candidate latent (batch of 1) -> its label map (one brain) and what candidate choice needs."""
        label = one_brain(from_indices(self.autoencoder.decode(latent).argmax(dim=1)[0].cpu().numpy()))
        return _Decoded(label, ventricle_volume_ml(label, self.affine), bool(np.isin(MAIN_CLASSES, label).all()),
                        fragmented(label))

    @staticmethod
    def choose(drawn: list[_Decoded], volume_ml: float) -> tuple[np.ndarray, dict]:
        """The best of the decoded candidates: an eligible one (all main classes, ventricles not fragmented)
        beats any other, then one with all main classes, then the volume closest to `volume_ml` wins."""
        ranks = [(not d.eligible, not d.complete, abs(d.volume_ml - volume_ml)) for d in drawn]
        best = min(range(len(drawn)), key=ranks.__getitem__)
        return drawn[best].label, {"chosen": best, "candidates_ml": [round(d.volume_ml, 3) for d in drawn],
                                   "candidates_complete": [d.complete for d in drawn],
                                   "candidates_fragmented": [d.fragmented for d in drawn],
                                   "candidates_eligible": [d.eligible for d in drawn]}


class ImageGenerator(_LatentDiffusion):
    """SPADE image LDM: a label map in -> a T1-like image in [0, 1] on the same grid."""

    kind = IMAGE

    def __init__(self, folder: Path, device: str | None = None):
        super().__init__(folder, device)
        arch = self.config["architecture"]
        self.autoencoder = self._load(image_autoencoder(arch["autoencoder"]), "autoencoder")
        self.unet = self._load(image_unet(arch["unet"], arch["autoencoder"]["latent_channels"]), "unet")

    def sample(self, label_map: np.ndarray, steps: int | None = None, seed: int = 0,
               progress: ProgressCallback | None = None) -> np.ndarray:
        steps = int(self.sampling["steps"] if steps is None else steps)
        return self.sample_many([label_map], [seed], steps, progress)[0]

    @torch.no_grad()
    def sample_many(self, labels: list[np.ndarray], seeds: list[int], steps: int,
                    progress: ProgressCallback | None = None) -> list[np.ndarray]:
        """An image for each (label map, seed), denoised in one batch."""
        seg = torch.from_numpy(np.stack([one_hot(to_indices(label)) for label in labels])).to(self.device)

        def denoise(z, t):
            return self.unet(z, t, seg=seg)

        z = self._sample_latents(denoise, initial_noise(self.latent_shape, seeds, 1), steps, "image", progress)
        out = self.autoencoder.decode(z, seg)[:, 0].clamp(0, 1).cpu().numpy().astype(np.float32)
        return [out[j] for j in range(len(labels))]
