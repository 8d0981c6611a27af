"""Stage `image-ae`: the image autoencoder (training/generators/autoencoders.py) -> WORK/image-ae/."""

from __future__ import annotations

from training.generators.autoencoders import train_image_autoencoder
from training.stage_configs import DataConfig, GeneratorsConfig


def main(args, config) -> int:
    generators, data = GeneratorsConfig.from_config(config), DataConfig.from_config(config)
    print(f"image-ae: {train_image_autoencoder(generators, data.seed, args.work, resume=args.resume)}")
    return 0
