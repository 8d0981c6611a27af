"""Stages `mask-ae` and `image-ae`: the two autoencoders of the latent diffusion models.

Each trains in WORK/<stage>/ through `loop.Run` (checkpoints, resume, DDP) and leaves its weights
(`autoencoder.safetensors`) and architecture (`arch.json`) there for the LDM stage that encodes with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, PatchAdversarialLoss
from monai.networks.nets import PatchDiscriminator
from safetensors.torch import load_file, save_file

from VentricleSynthLib.generation.networks import image_autoencoder, mask_autoencoder

from training.data.training_arrays import random_patch
from training.generators.shared import autocast, one_hot, start
from training.loop import Run, TrainingError, is_main, wrap_ddp
from training.stage_configs import GeneratorsConfig, NetworkConfig, TrainSettings

WEIGHTS = "autoencoder"
ARCH = "arch.json"


def _kl(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2) + 1e-8) - 1)
    return kl.sum(dim=list(range(1, kl.ndim))).mean()


def _perceptual(train: TrainSettings, device):
    """LPIPS-style perceptual loss, only from a local weights file (nothing is downloaded)."""
    path = train.perceptual_weights
    if not path:
        return None
    from monai.losses import PerceptualLoss

    if not Path(path).is_file():
        raise TrainingError(f"perceptual_weights {path} does not exist")
    return PerceptualLoss(spatial_dims=3, network_type="squeeze", is_fake_3d=True, fake_3d_ratio=0.2,
                          pretrained=True, pretrained_path=str(path)).to(device)


def _save(folder: Path, model: torch.nn.Module, arch: dict) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / f"{WEIGHTS}.safetensors"))
    (folder / ARCH).write_text(json.dumps(arch))


def load_trained(folder: Path, build, stage: str, device) -> tuple[torch.nn.Module, dict]:
    """(the autoencoder trained in `folder` by `stage`, in eval mode on `device`; its architecture)."""
    if not (folder / ARCH).is_file():
        raise TrainingError(f"{folder} has no trained autoencoder: run the `{stage}` stage first")
    arch = json.loads((folder / ARCH).read_text())
    module = build(arch)
    path = folder / f"{WEIGHTS}.safetensors"
    if not path.is_file():
        raise TrainingError(f"{path} is missing: run the `{stage}` stage first")
    module.load_state_dict(load_file(str(path)))
    return module.to(device).eval(), arch


def _arch(spec: NetworkConfig) -> dict:
    return {**spec.arch, "latent_channels": spec.latent_channels}


def train_mask_autoencoder(generators: GeneratorsConfig, seed: int, work: Path, resume: bool = False) -> dict:
    spec, device, arrays = start(generators, "mask_autoencoder", seed, work)
    train, arch = spec.train, _arch(spec)
    model = mask_autoencoder(arch).to(device)
    ddp = wrap_ddp(model)
    opt = torch.optim.Adam(model.parameters(), lr=float(train.lr))
    seg_loss = DiceCELoss(softmax=True, include_background=True)
    patch = tuple(train.patch)

    def step(_, rng):
        picks = rng.integers(0, len(arrays), int(train.batch_size))
        window = random_patch(arrays.indices.shape[1:], patch, rng)
        target = one_hot(np.stack([arrays.indices[i][window] for i in picks]), device)
        with autocast(device, train.amp):
            logits, z_mu, z_sigma = ddp(target)
        loss_seg = seg_loss(logits.float(), target)
        loss_kl = _kl(z_mu.float(), z_sigma.float())
        loss = loss_seg + float(train.kl_weight) * loss_kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"dice_ce": loss_seg.item(), "kl": loss_kl.item()}

    folder = work / "mask-ae"
    run = Run(folder, {"autoencoder": model}, {"adam": opt}, step, int(train.steps), int(train.checkpoint_every),
              seed)
    summary = run.run(resume)
    if is_main():
        _save(folder, model, arch)
    return summary


def train_image_autoencoder(generators: GeneratorsConfig, seed: int, work: Path, resume: bool = False) -> dict:
    spec, device, arrays = start(generators, "image_autoencoder", seed, work)
    train, arch = spec.train, _arch(spec)
    model = image_autoencoder(arch).to(device)
    disc = PatchDiscriminator(spatial_dims=3, channels=int(train.disc_channels), in_channels=1,
                              num_layers_d=3).to(device)
    ddp, ddp_disc = wrap_ddp(model), wrap_ddp(disc)
    opt_g = torch.optim.Adam(model.parameters(), lr=float(train.lr))
    opt_d = torch.optim.Adam(disc.parameters(), lr=float(train.lr))
    adversarial = PatchAdversarialLoss(criterion="least_squares")
    patch = tuple(train.patch)
    adv_weight, adv_start = float(train.adv_weight), int(train.adv_start)
    perceptual = _perceptual(train, device)

    def step(i, rng):
        picks = rng.integers(0, len(arrays), int(train.batch_size))
        window = random_patch(arrays.images.shape[1:], patch, rng)
        x = torch.from_numpy(np.stack([arrays.images[j][window] for j in picks]))[:, None].to(device)
        seg = one_hot(np.stack([arrays.indices[j][window] for j in picks]), device)
        with autocast(device, train.amp):
            recon, z_mu, z_sigma = ddp(x, seg)
        recon = recon.float()
        loss_l1 = F.l1_loss(recon, x)
        loss_kl = _kl(z_mu.float(), z_sigma.float())
        loss = loss_l1 + float(train.kl_weight) * loss_kl
        losses = {"l1": loss_l1.item(), "kl": loss_kl.item()}
        if perceptual is not None:
            loss_p = perceptual(recon, x)
            loss = loss + float(train.perceptual_weight) * loss_p
            losses["perceptual"] = loss_p.item()
        use_adv = adv_weight > 0 and i >= adv_start
        if use_adv:
            loss_g = adversarial(ddp_disc(recon)[-1], target_is_real=True, for_discriminator=False)
            loss = loss + adv_weight * loss_g
            losses["gen_adv"] = loss_g.item()
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        if use_adv:
            loss_d = 0.5 * (adversarial(ddp_disc(recon.detach())[-1], target_is_real=False, for_discriminator=True)
                            + adversarial(ddp_disc(x)[-1], target_is_real=True, for_discriminator=True))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            losses["disc"] = loss_d.item()
        return losses

    folder = work / "image-ae"
    run = Run(folder, {"autoencoder": model, "discriminator": disc}, {"adam_g": opt_g, "adam_d": opt_d}, step,
              int(train.steps), int(train.checkpoint_every), seed + 1)
    summary = run.run(resume)
    if is_main():
        _save(folder, model, arch)
    return summary
