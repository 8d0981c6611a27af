"""Stage `segmenter`: the nnU-Net ventricle segmenter (training/segmenter/) -> WORK/bundles/segmenter."""

from __future__ import annotations


def main(args, config) -> int:
    from training.segmenter.pipeline import train_segmenter
    from training.stage_configs import SegmenterConfig

    summary = train_segmenter(config, SegmenterConfig.from_config(config), args.work, resume=args.resume,
                              synthetic=args.synthetic)
    print(f"segmenter: {summary}")
    return 0
