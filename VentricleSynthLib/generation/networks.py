"""Builders for the MONAI networks of both generators, from the JSON-able kwargs kept in bundles.

Mask LDM: AutoencoderKL on the one-hot label map (N classes in, N logits out) + DiffusionModelUNet
with cross-attention on the context [volume, flag] (flag 0 = the null token of classifier-free
guidance). With `volume_channels: 2` in the UNet's kwargs the same two numbers are also given as
constant input channels (seen by the first convolution; a stronger condition than one cross-attention
token at the lowest resolution); with `volume_embedding: true` they are also embedded and added to the
time embedding, through MONAI's class-embedding hook, so that every residual block is modulated by the
volume. Image LDM: SPADEAutoencoderKL + SPADEDiffusionModelUNet, both given the one-hot map.
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


class VolumeEmbedding(torch.nn.Module):
    """The context [volume_norm, flag] -> a vector added to the UNet's time embedding. It takes the place of
    MONAI's `class_embedding` (an nn.Embedding of class indices), whose sum with the time embedding
    modulates every residual block; here the "class" is continuous."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(2, dim), torch.nn.SiLU(), torch.nn.Linear(dim, dim))

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.net(context.reshape(len(context), -1).float())


def mask_unet(kwargs: dict, latent_channels: int) -> DiffusionModelUNet:
    kwargs = dict(kwargs)
    extra = int(kwargs.pop("volume_channels", 0))
    embedding = bool(kwargs.pop("volume_embedding", False))
    if extra not in (0, 2):
        raise ValueError(f"volume_channels must be 0 or 2, got {extra}")
    unet = DiffusionModelUNet(spatial_dims=3, in_channels=latent_channels + extra, out_channels=latent_channels,
                              with_conditioning=True, cross_attention_dim=2,
                              num_class_embeds=1 if embedding else None, **_kw(kwargs))
    if embedding:
        unet.class_embedding = VolumeEmbedding(4 * unet.block_out_channels[0])  # MONAI's time_embed_dim
    return unet


def mask_unet_forward(unet, z: torch.Tensor, t: torch.Tensor, context: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """The mask UNet on latents `z` at timesteps `t` under `context` (see `condition`), through every pathway
    the arch has: cross-attention always, constant input channels and the added embedding when asked."""
    if int(kwargs.get("volume_channels", 0)):
        maps = context[:, 0, :, None, None, None].to(z.dtype).expand(-1, -1, *z.shape[2:])
        z = torch.cat([z, maps], dim=1)
    labels = context if kwargs.get("volume_embedding") else None
    return unet(z, t, context=context, class_labels=labels)


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
