"""Builders for the MONAI networks of both generators, from the JSON-able kwargs kept in bundles.

Mask LDM: AutoencoderKL on the one-hot label map (N classes in, N logits out) + DiffusionModelUNet
with cross-attention on the context [volume, flag] (flag 0 = the null token of classifier-free
guidance). With `volume_channels: 2` in the UNet's kwargs the same two numbers are also given as
constant input channels, which every convolution sees (a much stronger condition than one
cross-attention token at the lowest resolution). Image LDM: SPADEAutoencoderKL +
SPADEDiffusionModelUNet, both given the one-hot map.
"""

from __future__ import annotations

import torch
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet, SPADEAutoencoderKL, SPADEDiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from VentricleSynthLib.labels import NUM_CLASSES


def _kw(kwargs: dict) -> dict:
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()}


def mask_autoencoder(kwargs: dict, num_classes: int = NUM_CLASSES) -> AutoencoderKL:
    return AutoencoderKL(spatial_dims=3, in_channels=num_classes, out_channels=num_classes, **_kw(kwargs))


def mask_unet(kwargs: dict, latent_channels: int) -> DiffusionModelUNet:
    kwargs = dict(kwargs)
    extra = int(kwargs.pop("volume_channels", 0))
    if extra not in (0, 2):
        raise ValueError(f"volume_channels must be 0 or 2, got {extra}")
    return DiffusionModelUNet(spatial_dims=3, in_channels=latent_channels + extra, out_channels=latent_channels,
                              with_conditioning=True, cross_attention_dim=2, **_kw(kwargs))


def mask_unet_input(z: torch.Tensor, context: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """The mask UNet's input: the latents, plus the context as constant channels when the arch asks."""
    if not int(kwargs.get("volume_channels", 0)):
        return z
    maps = context[:, 0, :, None, None, None].to(z.dtype).expand(-1, -1, *z.shape[2:])
    return torch.cat([z, maps], dim=1)


def image_autoencoder(kwargs: dict, num_classes: int = NUM_CLASSES) -> SPADEAutoencoderKL:
    return SPADEAutoencoderKL(spatial_dims=3, label_nc=num_classes, in_channels=1, out_channels=1, **_kw(kwargs))


def image_unet(kwargs: dict, latent_channels: int, num_classes: int = NUM_CLASSES) -> SPADEDiffusionModelUNet:
    return SPADEDiffusionModelUNet(spatial_dims=3, in_channels=latent_channels, out_channels=latent_channels,
                                   label_nc=num_classes, **_kw(kwargs))


def ddpm(kwargs: dict) -> DDPMScheduler:
    return DDPMScheduler(clip_sample=False, **kwargs)


def ddim(kwargs: dict) -> DDIMScheduler:
    return DDIMScheduler(clip_sample=False, **kwargs)


def condition(volume_norm: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Context tokens (B, 1, 2): [v, 1] for conditioned samples, [0, 0] (null token) where keep is False."""
    v = volume_norm.reshape(-1, 1).float()
    flag = torch.ones_like(v)
    if keep is not None:
        keep = keep.reshape(-1, 1).to(v.dtype)
        v, flag = v * keep, flag * keep
    return torch.cat([v, flag], dim=1)[:, None, :]


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
