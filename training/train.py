"""`python training/train.py STAGE --config {paper,cpu,tiny} --work DIR`: training and evaluation stages.

Stages: `data` (template cohort, or `--source DIR` to import the user's own labelled data);
`mask-ae`, `mask-ldm`, `image-ae`, `image-ldm` (the two latent diffusion models; the LDM stages
export model bundles to WORK/bundles/). `synthesize` (a synthetic cohort with QC and a report ->
WORK/synthetic/, an nnU-Net raw dataset; restartable, `--shard i/N` or torchrun to split it).
`segmenter` (nnU-Net v2 ventricle segmenter -> WORK/bundles/segmenter), `evaluate` (score prediction
sets against references), `experiment` (the paper's real/augmented/synthetic/atlas comparison).
User errors print one `error: …` line and exit non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root replaces training/ on the path, so that
    # training's subpackages (data, stages, ...) are never importable as top-level modules
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

from VentricleSynthLib.command_line import Parser, run_command  # noqa: E402


# stage -> its module in training/stages/ (imported only when that stage runs)
STAGES = {"data": "data", "mask-ae": "mask_ae", "mask-ldm": "mask_ldm", "image-ae": "image_ae",
          "image-ldm": "image_ldm", "calibrate": "calibrate", "synthesize": "synthesize", "segmenter": "segmenter",
          "evaluate": "evaluate", "experiment": "experiment"}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="train.py", description="VentricleSynth training and evaluation stages.")
    parser.add_argument("stage", choices=sorted(STAGES))
    parser.add_argument("--config", default="tiny", help="paper, cpu, tiny, or a YAML file")
    parser.add_argument("--work", type=Path,
                        help="working folder for data, checkpoints, reports (every stage but evaluate needs it)")
    parser.add_argument("--resume", action="store_true", help="continue from the stage's last checkpoint")
    parser.add_argument("--models", type=Path,
                        help="calibrate, synthesize: folder with the bundles (default WORK/bundles)")
    parser.add_argument("--image-samples", type=int, default=20, help="calibrate: pairs for the T1-contrast check")
    data = parser.add_argument_group("data stage")
    data.add_argument("--distributions", nargs="+", choices=["natural", "enlarged", "uniform"],
                      help="template cohort distributions to build (default: every one the config sets)")
    data.add_argument("--source", type=Path, help="import your own data instead: an nnU-Net raw dataset or a folder")
    data.add_argument("--images", help="image pattern under --source with one {case}, e.g. '{case}/mri/T1.nii.gz'")
    data.add_argument("--labels", help="label pattern under --source with one {case}, e.g. '{case}/mri/aseg.nii.gz'")
    data.add_argument("--mapping", help="label convention of --source: freesurfer (default), cerebra, or a CSV")
    syn = parser.add_argument_group("synthesize stage (overrides the config's synthesize: section)")
    syn.add_argument("--count", type=int, help="number of samples")
    syn.add_argument("--distribution", help="uniform[:LO-HI], buckets[:LO-HI], match:CASES.csv or list:V1,V2,... (mL)")
    syn.add_argument("--shard", help="i/N: only this process's share of the samples (torchrun sets it by itself)")
    syn.add_argument("--qc-min-dice", type=float, help="keep only samples with label-fidelity Dice >= this (0..1)")
    syn.add_argument("--batch-size", type=int, help="samples per sampling batch (default 8 on CUDA, else 1)")
    syn.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    arms = parser.add_argument_group("segmenter and experiment stages")
    arms.add_argument("--synthetic", type=Path,
                      help="segmenter: also train on these synthetic pairs "
                           "(sample_*/ folders or an nnU-Net raw dataset)")
    arms.add_argument("--synthetic-from", type=Path,
                      help="experiment: pre-made synthetic pairs instead of sampling the generator bundles")
    ev = parser.add_argument_group("evaluate stage")
    ev.add_argument("--pred", action="append", help="[NAME=]DIR of predicted label maps; repeat to compare sets")
    ev.add_argument("--ref", type=Path, help="DIR of reference label maps (or an nnU-Net raw dataset)")
    ev.add_argument("--out", type=Path, help="DIR for the CSVs, plots and report.md (synthesize: the cohort, "
                                             "default WORK/synthetic)")
    ev.add_argument("--pred-mapping", action="append",
                    help="label convention of --pred: freesurfer (default), cerebra or a CSV; once, or once per --pred")
    ev.add_argument("--ref-mapping", help="label convention of --ref (default freesurfer, or the dataset.json table)")
    return parser


def _run_stage(args) -> int:
    from training.config import load_config

    config = load_config(args.config)
    return importlib.import_module(f"training.stages.{STAGES[args.stage]}").main(args, config)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.work is None and args.stage != "evaluate":
        parser.error(f"the stage {args.stage} needs --work DIR")
    return run_command(_run_stage, args)


if __name__ == "__main__":
    sys.exit(main())
