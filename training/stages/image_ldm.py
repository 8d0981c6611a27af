"""Stage `image-ldm`: the label-map-conditioned image LDM (training/generators/ldm.py) -> bundles/image_generator."""

from __future__ import annotations

from training.generators.ldm import IMAGE_LDM, train_ldm
from training.stage_configs import DataConfig, GeneratorsConfig


def main(args, config) -> int:
    generators, seed = GeneratorsConfig.from_config(config), DataConfig.from_config(config).seed
    print(f"image-ldm: {train_ldm(IMAGE_LDM, generators, seed, config.profile, config.path, args.work, args.resume)}")
    return 0
