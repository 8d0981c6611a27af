"""Stage `mask-ldm`: the volume-conditioned mask LDM (training/generators/ldm.py) -> bundles/mask_generator."""

from __future__ import annotations

from training.generators.ldm import MASK_LDM, train_ldm
from training.stage_configs import DataConfig, GeneratorsConfig


def main(args, config) -> int:
    generators, seed = GeneratorsConfig.from_config(config), DataConfig.from_config(config).seed
    print(f"mask-ldm: {train_ldm(MASK_LDM, generators, seed, config.profile, config.path, args.work, args.resume)}")
    return 0
