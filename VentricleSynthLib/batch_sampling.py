"""Several labelled pairs in one batched DDIM loop per stage (GPUs: one sample leaves most of the device idle).

Same networks, classifier-free guidance and noise as `generators.generate_pair`: sample j's starting
noise comes from its own generator seeded with seeds[j], exactly as a single sample draws it. Batched
kernels may reassociate floating-point sums, so a batch's samples equal single samples only up to
rounding; a cohort is therefore reproducible for a fixed batch size (cohort_synthesis puts fixed blocks
of indices in each batch). One sample per batch is `generate_pair` itself.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .generators import ImageGenerator, MaskGenerator, Pair, Progress, _check_steps, generate_pair
from .labels import from_indices, one_hot, to_indices
from .networks import condition, ddim, mask_unet_input
from .volumes import tiv_ml, ventricle_volume_ml


def _denoise(model, denoise_fn, steps: int, seeds: list[int], stage: str, progress: Progress | None) -> torch.Tensor:
    scheduler = ddim(model.scheduler_kwargs)
    _check_steps(steps, scheduler.num_train_timesteps)
    scheduler.set_timesteps(steps, device=model.device)
    z = torch.cat([torch.randn((1, *model.latent_shape), generator=torch.Generator().manual_seed(int(s)), device="cpu")
                   for s in seeds]).to(model.device)
    for i, t in enumerate(scheduler.timesteps, start=1):
        eps = denoise_fn(z, t.reshape(1).expand(len(seeds)).to(model.device))
        z, _ = scheduler.step(eps, int(t), z)
        if progress:
            progress(stage, i, steps)
    return z / model.scale_factor + model.latent_shift.to(z.device)


@torch.no_grad()
def sample_masks(mask: MaskGenerator, volumes: list[float], guidance: float, steps: int, seeds: list[int],
                 progress: Progress | None = None) -> list[np.ndarray]:
    for v in volumes:
        mask.check_request(v, guidance, steps)
    n = len(volumes)
    v = torch.tensor([mask.normalise(x) for x in volumes], device=mask.device)
    context = torch.cat([condition(v), condition(v, keep=torch.zeros(n, device=mask.device))])

    def denoise(z, t):
        zz = mask_unet_input(torch.cat([z, z]), context, mask.unet_arch)
        eps_c, eps_u = mask.unet(zz, torch.cat([t, t]), context=context).chunk(2)
        return eps_u + guidance * (eps_c - eps_u)

    z = _denoise(mask, denoise, steps, seeds, "mask", progress)
    indices = mask.autoencoder.decode(z).argmax(dim=1).cpu().numpy()
    return [from_indices(indices[j]) for j in range(n)]


@torch.no_grad()
def sample_images(image: ImageGenerator, labels: list[np.ndarray], steps: int, seeds: list[int],
                  progress: Progress | None = None) -> list[np.ndarray]:
    seg = torch.from_numpy(np.stack([one_hot(to_indices(label)) for label in labels])).to(image.device)

    def denoise(z, t):
        return image.unet(z, t, seg=seg)

    z = _denoise(image, denoise, steps, seeds, "image", progress)
    out = image.autoencoder.decode(z, seg)[:, 0].clamp(0, 1).cpu().numpy().astype(np.float32)
    return [out[j] for j in range(len(labels))]


def generate_pairs(mask: MaskGenerator, image: ImageGenerator, volumes: list[float], seeds: list[int],
                   guidance: float | None = None, steps: int | None = None,
                   progress: Progress | None = None) -> list[Pair]:
    """`generate_pair` for each (volume, seed), in one batch; records as generate_pair's (seconds shared out)."""
    if len(volumes) != len(seeds) or not volumes:
        raise ValueError("generate_pairs needs one seed per volume, and at least one volume")
    if len(volumes) == 1:
        return [generate_pair(mask, image, volumes[0], guidance, steps, seeds[0], progress)]
    start = time.perf_counter()
    guidance = float(mask.sampling["guidance"] if guidance is None else guidance)
    mask_steps = int(mask.sampling["steps"] if steps is None else steps)
    image_steps = int(image.sampling["steps"] if steps is None else steps)
    labels = sample_masks(mask, [float(v) for v in volumes], guidance, mask_steps, seeds, progress)
    images = sample_images(image, labels, image_steps, seeds, progress)
    affine = np.asarray(mask.config["affine"], dtype=np.float64)
    seconds = round((time.perf_counter() - start) / len(volumes), 3)
    return [Pair(img, label, affine, {
        "asked_ml": float(v),
        "got_ml": round(ventricle_volume_ml(label, affine), 3),
        "tiv_ml": round(tiv_ml(label, affine), 2),
        "seed": int(s),
        "steps": {"mask": mask_steps, "image": image_steps},
        "guidance": guidance,
        "seconds": seconds,
        "device": str(mask.device),
        "models": {"mask": mask.id, "image": image.id},
    }) for img, label, v, s in zip(images, labels, volumes, seeds)]
