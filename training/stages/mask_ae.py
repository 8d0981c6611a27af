"""Stage `mask-ae`: the mask autoencoder (training/generators/autoencoders.py) -> WORK/mask-ae/."""

from __future__ import annotations

from training.generators.autoencoders import train_mask_autoencoder
from training.stage_configs import DataConfig, GeneratorsConfig


def main(args, config) -> int:
    generators, data = GeneratorsConfig.from_config(config), DataConfig.from_config(config)
    print(f"mask-ae: {train_mask_autoencoder(generators, data.seed, args.work, resume=args.resume)}")
    return 0
