"""Stages `mask-ldm` and `image-ldm`: one training routine for both latent diffusion models.

`train_ldm` encodes every training case with the stage's trained autoencoder, standardises the latents,
trains the UNet to predict the noise (DDPM objective, EMA weights, through `loop.Run`) and exports a verified
bundle to WORK/bundles/. What differs is the condition, a `Conditioning`: the mask LDM is conditioned on the
ventricle volume (classifier-free guidance), the image LDM on the label map (SPADE).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from VentricleSynthLib.bundles.store import IMAGE, MASK
from VentricleSynthLib.generation.networks import (condition, ddpm, image_autoencoder, image_unet, mask_autoencoder,
                                                   mask_unet, mask_unet_forward)
from VentricleSynthLib.imaging.profile import Profile

from training.data.training_arrays import TrainingArrays
from training.generators.autoencoders import WEIGHTS, load_trained
from training.generators.export import bundle_config, export_bundle, stage_steps
from training.generators.latents import cached, decoded_ventricle_ml, encode_all, standardise
from training.generators.shared import autocast, ema, one_hot, start
from training.loop import Run, is_main, wrap_ddp
from training.stage_configs import GeneratorsConfig, NetworkConfig


class Conditioning:
    """What one LDM is conditioned on: the latents it trains on, the UNet call, the bundle's extra settings."""

    def __init__(self, spec: NetworkConfig, autoencoder_folder: Path, ldm_folder: Path):
        self.spec, self.autoencoder_folder, self.ldm_folder = spec, autoencoder_folder, ldm_folder

    def latents(self, autoencoder, arrays: TrainingArrays, device) -> torch.Tensor:
        raise NotImplementedError

    def unet_call(self, ddp, noisy, t, picks, device):
        raise NotImplementedError

    def bundle_settings(self) -> dict:
        raise NotImplementedError


class VolumeConditioning(Conditioning):
    """The mask LDM: the ventricle volume, min-max normalised, with a null token for guidance."""

    def latents(self, autoencoder, arrays, device):
        def encode_and_measure():
            latents = encode_all(lambda sl: autoencoder.encode(one_hot(arrays.indices[sl], device))[0], arrays)
            # Condition on the ventricle volume of each latent's *decoding*, not of the original label map: the
            # autoencoder's systematic volume bias then never reaches the user (asked mL = decoded mL).
            return latents, torch.from_numpy(decoded_ventricle_ml(autoencoder, latents, arrays, device))

        latents, decoded_ml = cached(self.ldm_folder / "latents_cache.pt",
                                     [self.autoencoder_folder / f"{WEIGHTS}.safetensors"], arrays, encode_and_measure)
        decoded_ml = decoded_ml.numpy()
        true_span = float(np.ptp(arrays.ventricle_ml))
        if np.ptp(decoded_ml) >= 0.5 * true_span:
            condition_ml, quantity = decoded_ml, "ventricle_ml of the autoencoder's decoding of each case"
        else:  # an autoencoder too poor to reproduce the ventricles (e.g. the tiny test profile)
            condition_ml, quantity = arrays.ventricle_ml, "ventricle_ml of the label maps (decodings too poor to use)"
        self.v_min, self.v_max = float(condition_ml.min()), float(condition_ml.max())
        self.v_norm = torch.from_numpy((condition_ml - self.v_min) / max(self.v_max - self.v_min, 1e-6))
        self.quantity = quantity
        self.decoded_bias = float(np.mean(decoded_ml - arrays.ventricle_ml))
        self.drop = float(self.spec.train.cond_drop)
        return latents

    def unet_call(self, ddp, noisy, t, picks, device):
        keep = torch.rand(len(picks), device=device) >= self.drop
        context = condition(self.v_norm[picks].to(device), keep=keep)
        return mask_unet_forward(ddp, noisy, t, context, self.spec.arch)

    def bundle_settings(self) -> dict:
        return {"volume_normalisation": {"min_ml": self.v_min, "max_ml": self.v_max, "quantity": self.quantity,
                                         "decoded_minus_true_ml_mean": self.decoded_bias},
                "conditioning": {"context": "[volume_norm, flag]",
                                 "input_channels": "[volume_norm, flag]" if self.spec.arch.get("volume_channels")
                                 else "none",
                                 "time_embedding": "MLP([volume_norm, flag]) added"
                                 if self.spec.arch.get("volume_embedding") else "none",
                                 "null_token": [0.0, 0.0], "drop_probability": self.drop},
                "sampling": self.spec.sampling}


class LabelMapConditioning(Conditioning):
    """The image LDM: the one-hot label map, through SPADE normalisation."""

    arrays: TrainingArrays | None = None

    def latents(self, autoencoder, arrays, device):
        self.arrays = arrays

        def encode(sl):
            x = torch.from_numpy(arrays.images[sl])[:, None].to(device)
            return autoencoder.encode(x)[0]

        return encode_all(encode, arrays)

    def unet_call(self, ddp, noisy, t, picks, device):
        return ddp(noisy, t, seg=one_hot(self.arrays.indices[picks.numpy()], device))

    def bundle_settings(self) -> dict:
        return {"sampling": self.spec.sampling}


@dataclass(frozen=True)
class LdmStage:
    """One LDM stage: its folder, its autoencoder's stage, the networks and the bundle it exports."""

    stage: str
    autoencoder_stage: str
    network: str  # the generators section's key
    bundle: str
    build_autoencoder: Callable
    build_unet: Callable
    conditioning: type[Conditioning]
    seed_offset: int  # added to the data seed: each stage draws its own stream


MASK_LDM = LdmStage("mask-ldm", "mask-ae", "mask_ldm", MASK, mask_autoencoder, mask_unet, VolumeConditioning, 2)
IMAGE_LDM = LdmStage("image-ldm", "image-ae", "image_ldm", IMAGE, image_autoencoder, image_unet,
                     LabelMapConditioning, 3)


def _diffusion_step(unet_call, latents: torch.Tensor, scheduler, picks, device, amp: bool) -> torch.Tensor:
    """Noise-prediction MSE at random timesteps (DDPM training objective)."""
    z0 = latents[picks].to(device)
    noise = torch.randn_like(z0)
    t = torch.randint(0, scheduler.num_train_timesteps, (z0.shape[0],), device=device).long()
    noisy = scheduler.add_noise(original_samples=z0, noise=noise, timesteps=t)
    with autocast(device, amp):
        prediction = unet_call(noisy, t, picks)
    return F.mse_loss(prediction.float(), noise)


def train_ldm(ldm: LdmStage, generators: GeneratorsConfig, seed: int, profile: Profile, config_file: str,
              work: Path, resume: bool = False) -> dict:
    """Train one LDM in WORK/<stage>/ and export its bundle (see the module notes)."""
    spec, device, arrays = start(generators, ldm.network, seed, work)
    train = spec.train
    ae_folder = work / ldm.autoencoder_stage
    autoencoder, ae_arch = load_trained(ae_folder, ldm.build_autoencoder, ldm.autoencoder_stage, device)
    conditioning = ldm.conditioning(spec, ae_folder, work / ldm.stage)
    latents, shift, scale_factor = standardise(conditioning.latents(autoencoder, arrays, device))
    unet = ldm.build_unet(spec.arch, ae_arch["latent_channels"]).to(device)
    ddp = wrap_ddp(unet)
    opt = torch.optim.Adam(unet.parameters(), lr=float(train.lr))
    averaged = ema(unet, train.ema_decay)
    scheduler = ddpm(generators.scheduler)

    def unet_call(noisy, t, picks):
        return conditioning.unet_call(ddp, noisy, t, picks, device)

    def step(_, rng):
        picks = torch.from_numpy(rng.integers(0, len(arrays), int(train.batch_size)))
        loss = _diffusion_step(unet_call, latents, scheduler, picks, device, train.amp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"mse": loss.item()}

    folder = work / ldm.stage
    run = Run(folder, {"unet": unet}, {"adam": opt}, step, int(train.steps), int(train.checkpoint_every),
              seed + ldm.seed_offset, ema={"unet": averaged} if averaged else {})
    summary = run.run(resume)
    if is_main():
        final = averaged.module if averaged else unet
        bundle = bundle_config(
            ldm.bundle, profile, config_file, generators, {"autoencoder": ae_arch, "unet": spec.arch}, scale_factor,
            shift, latents.shape[1:], arrays,
            {ldm.autoencoder_stage: stage_steps(ae_folder), ldm.stage: stage_steps(folder)},
            conditioning.bundle_settings())
        out = export_bundle(work, bundle, {"autoencoder": autoencoder, "unet": final})
        summary["bundle"] = str(out)
    return summary
