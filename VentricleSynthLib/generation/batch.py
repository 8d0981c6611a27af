"""Several labelled pairs in one batched DDIM loop per stage (GPUs: one sample leaves most of the device idle).

Same networks, classifier-free guidance, volume-matched candidates and noise as `generators.generate_pair`:
sample j's K candidate latents come from its own generator seeded with seeds[j], exactly as a single sample
draws them. Batched kernels may reassociate floating-point sums, so a batch's samples equal single samples
only up to rounding; a cohort is therefore reproducible for a fixed batch size (cohort_synthesis puts fixed
blocks of indices in each batch). One sample per batch is `generate_pair` itself.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from VentricleSynthLib.generation.generators import ImageGenerator, MaskGenerator, Pair, Progress, generate_pair, pair_record
from VentricleSynthLib.labels import one_hot, to_indices


def _noise(model, seeds: list[int], per_seed: int) -> torch.Tensor:
    """`per_seed` initial latents from each seed's own generator, as a single sample draws them."""
    return torch.cat([torch.randn((per_seed, *model.latent_shape), generator=torch.Generator().manual_seed(int(s)),
                                  device="cpu") for s in seeds])


@torch.no_grad()
def sample_masks(mask: MaskGenerator, volumes: list[float], guidance: float, steps: int, seeds: list[int],
                 candidates: int = 1, progress: Progress | None = None) -> list[tuple[np.ndarray, dict]]:
    """`mask.sample_with_record` for each (volume, seed): K candidates each, all denoised in one batch."""
    k = int(candidates)
    for v in volumes:
        mask.check_request(v, guidance, steps, k)
    denoise = mask._guided([x for x in volumes for _ in range(k)], guidance)
    z = mask._denoise(denoise, steps, None, "mask", progress, z0=_noise(mask, seeds, k))
    out = []
    for j, asked in enumerate(volumes):  # exactly MaskGenerator.sample_with_record's choice
        label, chosen = mask.choose(z[j * k:(j + 1) * k], asked)
        out.append((label, {"guidance": guidance, "steps": steps, "candidates": k, **chosen}))
    return out


@torch.no_grad()
def sample_images(image: ImageGenerator, labels: list[np.ndarray], steps: int, seeds: list[int],
                  progress: Progress | None = None) -> list[np.ndarray]:
    seg = torch.from_numpy(np.stack([one_hot(to_indices(label)) for label in labels])).to(image.device)

    def denoise(z, t):
        return image.unet(z, t, seg=seg)

    z = image._denoise(denoise, steps, None, "image", progress, z0=_noise(image, seeds, 1))
    out = image.autoencoder.decode(z, seg)[:, 0].clamp(0, 1).cpu().numpy().astype(np.float32)
    return [out[j] for j in range(len(labels))]


def generate_pairs(mask: MaskGenerator, image: ImageGenerator, volumes: list[float], seeds: list[int],
                   guidance: float | None = None, steps: int | None = None, progress: Progress | None = None,
                   candidates: int | None = None) -> list[Pair]:
    """`generate_pair` for each (volume, seed), in one batch; records as generate_pair's (seconds shared out)."""
    if len(volumes) != len(seeds) or not volumes:
        raise ValueError("generate_pairs needs one seed per volume, and at least one volume")
    if len(volumes) == 1:
        return [generate_pair(mask, image, volumes[0], guidance, steps, seeds[0], progress, candidates)]
    start = time.perf_counter()
    guidance = float(mask.sampling["guidance"] if guidance is None else guidance)
    mask_steps = int(mask.sampling["steps"] if steps is None else steps)
    image_steps = int(image.sampling["steps"] if steps is None else steps)
    k = int(mask.sampling.get("candidates", 1)) if candidates is None else candidates
    masks = sample_masks(mask, [float(v) for v in volumes], guidance, mask_steps, seeds, k, progress)
    images = sample_images(image, [label for label, _ in masks], image_steps, seeds, progress)
    seconds = (time.perf_counter() - start) / len(volumes)
    return [Pair(img, label, mask.affine, pair_record(mask, image, v, label, sampled, image_steps, s, seconds))
            for img, (label, sampled), v, s in zip(images, masks, volumes, seeds)]
