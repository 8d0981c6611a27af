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

from .generators import ImageGenerator, MaskGenerator, Pair, Progress, _check_steps, generate_pair
from .labels import one_hot, to_indices
from .networks import condition, ddim, mask_unet_input
from .volumes import tiv_ml, ventricle_volume_ml


def _denoise(model, denoise_fn, steps: int, seeds: list[int], per_seed: int, stage: str,
             progress: Progress | None) -> torch.Tensor:
    """The DDIM loop of `_LatentDiffusion._denoise` over several seeds, `per_seed` latents drawn from each."""
    scheduler = ddim(model.scheduler_kwargs)
    _check_steps(steps, scheduler.num_train_timesteps)
    scheduler.set_timesteps(steps, device=model.device)
    z = torch.cat([torch.randn((per_seed, *model.latent_shape), generator=torch.Generator().manual_seed(int(s)),
                               device="cpu") for s in seeds]).to(model.device)
    for i, t in enumerate(scheduler.timesteps, start=1):
        eps = denoise_fn(z, t.reshape(1).expand(z.shape[0]).to(model.device))
        z, _ = scheduler.step(eps, int(t), z)
        if progress:
            progress(stage, i, steps)
    return z / model.scale_factor + model.latent_shift.to(z.device)


@torch.no_grad()
def sample_masks(mask: MaskGenerator, volumes: list[float], guidance: float, steps: int, seeds: list[int],
                 candidates: int = 1, progress: Progress | None = None) -> list[tuple[np.ndarray, dict]]:
    """`mask.sample_with_record` for each (volume, seed): K candidates each, all denoised in one batch."""
    k = int(candidates)
    for v in volumes:
        mask.check_request(v, guidance, steps, k)
    n = len(volumes) * k
    v = torch.tensor([mask.normalise(x) for x in volumes for _ in range(k)], device=mask.device)
    context = torch.cat([condition(v), condition(v, keep=torch.zeros(n, device=mask.device))])

    def denoise(z, t):
        zz = mask_unet_input(torch.cat([z, z]), context, mask.unet_arch)
        eps_c, eps_u = mask.unet(zz, torch.cat([t, t]), context=context).chunk(2)
        return eps_u + guidance * (eps_c - eps_u)

    z = _denoise(mask, denoise, steps, seeds, k, "mask", progress)
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

    z = _denoise(image, denoise, steps, seeds, 1, "image", progress)
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
    seconds = round((time.perf_counter() - start) / len(volumes), 3)
    return [Pair(img, label, mask.affine, {
        "asked_ml": float(v),
        "got_ml": round(ventricle_volume_ml(label, mask.affine), 3),
        "tiv_ml": round(tiv_ml(label, mask.affine), 2),
        "seed": int(s),
        "steps": {"mask": sampled["steps"], "image": image_steps},
        "guidance": sampled["guidance"],
        "candidates": sampled["candidates"],
        "candidates_ml": sampled["candidates_ml"],
        "seconds": seconds,
        "device": str(mask.device),
        "models": {"mask": mask.id, "image": image.id},
    }) for img, (label, sampled), v, s in zip(images, masks, volumes, seeds)]
