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
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root replaces training/ on the path, so that
    # training's subpackages (data, stages, ...) are never importable as top-level modules
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

from VentricleSynthLib.errors import VentricleSynthError  # noqa: E402


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def _stage_data(args, config) -> int:
    from training.stages import data as data_stage

    if args.source is None:
        data_stage.run(config, args.work, distributions=args.distributions)
        return 0
    from training.data.user_import import import_dataset

    report = import_dataset(args.source, args.work / "data" / "user", config["profile_obj"],
                            image_pattern=args.images, label_pattern=args.labels, mapping=args.mapping,
                            progress=lambda i, n, case: print(f"PROGRESS stage=import step={i}/{n} case={case}"))
    summary = report.to_dict()
    print(f"data: imported {len(summary['imported'])} cases, skipped {len(summary['skipped'])} "
          f"-> {args.work / 'data' / 'user'} (see import_report.md)")
    return 0


def _generator_stage(name):
    def stage(args, config) -> int:
        from training.generators import training as generator_stages

        fn = {"mask-ae": generator_stages.train_mask_autoencoder, "mask-ldm": generator_stages.train_mask_ldm,
              "image-ae": generator_stages.train_image_autoencoder,
              "image-ldm": generator_stages.train_image_ldm}[name]
        summary = fn(config, args.work, resume=args.resume)
        print(f"{name}: {summary}")
        return 0

    return stage


def _stage_calibrate(args, config) -> int:
    from training.generators import calibration as calibrate

    command = " ".join(["python training/train.py", *sys.argv[1:]])
    result = calibrate.run(config, args.work, models=args.models, command=command,
                           image_samples=args.image_samples)
    for w, s in result["volume_control"].items():
        print(f"calibrate: guidance {w}: spearman {s['spearman']:.3f}, median rel error "
              f"{100 * s['median_rel_error']:.1f} %")
    print(f"calibrate: T1 contrast ok in {100 * result['t1_contrast_fraction']:.0f} % of samples")
    return 0


def _stage_synthesize(args, config) -> int:
    from training.stages import synthesize as synthesize_stage

    result = synthesize_stage.run(config, args.work, models=args.models, out=args.out, shard=args.shard,
                                  overrides={"count": args.count, "distribution": args.distribution,
                                             "qc_min_dice": args.qc_min_dice, "batch_size": args.batch_size,
                                             "device": args.device},
                                  log=lambda line: print(line, flush=True))
    return 1 if result["failures"] else 0  # the summary line said how many; a rerun retries them


def _stage_segmenter(args, config) -> int:
    from training.segmenter import stage as segmenter_stage

    summary = segmenter_stage.run(config, args.work, resume=args.resume, synthetic=args.synthetic)
    print(f"segmenter: {summary}")
    return 0


def _stage_evaluate(args, config) -> int:
    from training.evaluation import scoring as evaluate

    if not args.pred or args.ref is None or args.out is None:
        raise evaluate.DatasetError("evaluate needs --pred DIR (one or more), --ref DIR and --out DIR")
    summaries = evaluate.run(args.pred, args.ref, args.out, pred_mappings=args.pred_mapping,
                             ref_mapping=args.ref_mapping)
    for name, s in summaries.items():
        print(f"evaluate: {name}: n={s['n']} Dice {s['dice_mean']:.3f} MAE {s['abs_dv_ml_mean']:.2f} mL "
              f"bias {s['signed_dv_ml_mean']:+.2f} mL HD95 {s['hd95_mm_mean']:.2f} mm")
    print(f"evaluate: report -> {args.out / 'report.md'}")
    return 0


def _stage_experiment(args, config) -> int:
    from training.stages import experiment

    result = experiment.run(config, args.work, resume=args.resume, synthetic_from=args.synthetic_from,
                            models=args.models)
    print(f"experiment: table -> {result['report']}")
    return 0


STAGES = {"data": _stage_data, "calibrate": _stage_calibrate,
          **{n: _generator_stage(n) for n in ("mask-ae", "mask-ldm", "image-ae", "image-ldm")},
          "synthesize": _stage_synthesize, "segmenter": _stage_segmenter, "evaluate": _stage_evaluate,
          "experiment": _stage_experiment}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="train.py", description="VentricleSynth training and evaluation stages.")
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
    seg = parser.add_argument_group("segmenter and experiment stages")
    seg.add_argument("--synthetic", type=Path,
                     help="segmenter: also train on these synthetic pairs "
                          "(sample_*/ folders or an nnU-Net raw dataset)")
    seg.add_argument("--synthetic-from", type=Path,
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.work is None and args.stage != "evaluate":
        parser.error(f"the stage {args.stage} needs --work DIR")
    try:
        from training.config import load_config

        config = load_config(args.config)
        return STAGES[args.stage](args, config)
    except VentricleSynthError as exc:
        message = " ".join(str(exc).split())  # one line, even when a library message spans several
        print(f"error: {message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
