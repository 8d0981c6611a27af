"""Stage `experiment`: the paper's comparison of segmenters trained on real, augmented and synthetic data.

Arms: **real** = nnU-Net on the template cohort's natural cases (train + val splits); **augmented** = real
+ synthetic pairs with uniformly spread ventricle volumes; **synthetic** = synthetic pairs only; and the
**atlas** baseline standing in for SynthSeg (training/evaluation/atlas.py). Every model is scored on the
enlarged-ventricle hold-out (WORK/data/enlarged, split `holdout`, never used for training) with
training/evaluation/scoring.py; the table has the paper's form (MAE ± SD mL, Dice ± SD) plus IoU, bias, HD95
and the trend of the error with volume.

Synthetic pairs come from the generator bundles (`--models DIR`, else WORK/bundles, else the
bundled/`$VENTRICLESYNTH_MODELS` models) for this profile, sampled with `VentricleSynthLib.cohorts.synthesize`
(the paper's final set: ten volume buckets over the trained range; guidance, candidates and steps are the
bundles' unless the config sets them; the paper used w = 1), or from `--synthetic-from DIR` (pre-made
`sample_*/` pairs or an nnU-Net raw dataset). Without either, the augmented and synthetic arms are skipped and
the report says so.

Everything lands in WORK/experiment/: synthetic/ (the pairs), bundles/<arm>/, predictions/<arm>/, report/.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from VentricleSynthLib.errors import DatasetError
from VentricleSynthLib.io.atomic import write_text
from VentricleSynthLib.io.nifti import Volume, load_image, save_volume
from VentricleSynthLib.io.nnunet_raw import image_path, read_csv

from training.config import Config
from training.data.template_datasets import build_template_datasets
from training.evaluation.atlas import AtlasSegmenter
from training.evaluation.report import finite, write_report
from training.evaluation.scoring import discover, evaluate_folder
from training.experiment.synthetic import generate_synthetic, synthetic_pairs
from training.generators.export import find_generators
from training.segmenter.pipeline import build
from training.segmenter.raw_export import Case, dataset_cases
from training.stage_configs import TEMPLATE_DATASETS, ExperimentConfig

ARM_TITLES = {"real": "Real", "augmented": "Augmented", "synthetic": "Synthetic",
              "atlas": "Atlas registration (SynthSeg stand-in)"}
PAPER_TABLE = """Paper (Ruschke et al. 2024; 42 patients with enlarged ventricles, manual labels; N=1000 real,
1512 augmented, 1000 synthetic): MAE 9.09 ± 12.18 mL real, 6.23 ± 4.33 augmented (Dice 0.892 ± 0.05, best),
7.52 ± 4.81 synthetic, 7.73 ± 12.12 SynthSeg (fails on large ventricles)."""


def ensure_data(config: Config, work: Path, experiment: ExperimentConfig, progress=print) -> None:
    """Build the template-cohort datasets the experiment needs when this --work has none yet."""
    wanted = [*experiment.real_datasets, experiment.holdout]
    missing = [d for d in wanted if not (work / "data" / d / "cases.csv").is_file()]
    if missing:
        if any(d not in TEMPLATE_DATASETS for d in missing):
            raise DatasetError(f"{work / 'data'}: missing datasets {missing}; run `train.py data` first")
        progress(f"experiment: building the cohort ({', '.join(missing)}) under {work / 'data'}")
        build_template_datasets(config, work, distributions=missing, progress=progress)


def holdout_cases(work: Path, name: str) -> list[dict]:
    root = work / "data" / name
    rows = [r for r in read_csv(root / "cases.csv") if r.get("split") == "holdout"]
    if not rows:
        raise DatasetError(f"{root}: no cases with split 'holdout' (the enlarged-ventricle hold-out)")
    return rows


def _predict(bundle: Path, cases: list[dict], holdout_root: Path, out: Path, device: str, progress=print) -> float:
    from VentricleSynthLib.segmentation.predictor import Segmenter

    segmenter = Segmenter(bundle, device=device)
    start = time.time()
    for i, row in enumerate(cases, start=1):
        image = load_image(image_path(holdout_root, row["case"]))
        label, _ = segmenter.segment(image)
        save_volume(label, out / f"{row['case']}.nii.gz", dtype=np.int16)
        progress(f"PROGRESS stage=experiment-predict-{out.name} step={i}/{len(cases)} case={row['case']}")
    return time.time() - start


def run(config: Config, experiment: ExperimentConfig, work: Path, resume: bool = False,
        synthetic_from: Path | None = None, models: Path | None = None, progress=print) -> dict:
    """Stage `experiment` (see the module notes): returns the report's path, the summaries, timings and notes."""
    work = Path(work)
    exp = experiment
    root = work / "experiment"
    root.mkdir(parents=True, exist_ok=True)
    start = time.time()
    timings: dict[str, float] = {}
    notes: dict[str, dict] = {}
    ensure_data(config, work, exp, progress)
    timings["data_s"] = round(time.time() - start, 1)

    # synthetic pairs
    synthetic_cases: list[Case] = []
    synthetic_source = None
    wants_synthetic = any(a in exp.arms for a in ("augmented", "synthetic"))
    if wants_synthetic:
        t0 = time.time()
        if synthetic_from is not None:
            synthetic_source = Path(synthetic_from)
        else:
            gen_root, why = find_generators(config.profile, work, models)
            if gen_root is None:
                message = (f"no generator bundles for profile '{config.profile.name}' ({why}); train them "
                           f"(train.py mask-ae, mask-ldm, image-ae, image-ldm) or pass --synthetic-from DIR")
                progress(f"experiment: augmented and synthetic arms skipped: {message}")
                for arm in ("augmented", "synthetic"):
                    if arm in exp.arms:
                        notes[arm] = {"note": f"skipped: {message}"}
            else:
                synthetic_source = generate_synthetic(gen_root, root / "synthetic", exp, work, progress)
        if synthetic_source is not None:
            synthetic_cases = synthetic_pairs(synthetic_source, exp, generated=synthetic_from is None)
        timings["synthetic_s"] = round(time.time() - t0, 1)

    real_cases = [c for d in exp.real_datasets for c in dataset_cases(work / "data", d)]
    arm_cases = {
        "real": real_cases,
        "augmented": real_cases + [Case(c.case_id, c.origin, "train", c.load)
                                   for c in synthetic_cases[:exp.augment_count or len(synthetic_cases)]],
        "synthetic": synthetic_cases,
    }
    holdout_root = work / "data" / exp.holdout
    holdout = holdout_cases(work, exp.holdout)
    trained = {}
    for arm in exp.arms:
        if arm in notes:
            continue
        settings = exp.arm_segmenter(config, arm)
        t0 = time.time()
        summary = build(config, settings, work, arm_cases[arm], f"Ventricles{arm.capitalize()}",
                        root / "bundles" / arm, resume=resume, progress=progress)
        timings[f"{arm}_train_s"] = round(time.time() - t0, 1)
        trained[arm] = {"bundle": Path(summary["bundle"]), "cases": len(arm_cases[arm]), "summary": summary,
                        "device": settings.device}
        progress(f"experiment: {arm}: trained on {len(arm_cases[arm])} cases -> {summary['bundle']}")

    predictions = {}
    for arm, info in trained.items():
        folder = root / "predictions" / arm
        timings[f"{arm}_predict_s"] = round(_predict(info["bundle"], holdout, holdout_root, folder, info["device"],
                                                     progress), 1)
        predictions[arm] = folder
    if exp.atlas:
        t0 = time.time()
        folder = root / "predictions" / "atlas"
        atlas = None
        for i, row in enumerate(holdout, start=1):
            target = folder / f"{row['case']}.nii.gz"
            if resume and target.is_file():
                continue
            atlas = atlas or AtlasSegmenter(exp.registration)
            image = load_image(image_path(holdout_root, row["case"]))
            save_volume(Volume(atlas.segment(image), image.affine), target, dtype=np.int16)
            progress(f"PROGRESS stage=experiment-atlas step={i}/{len(holdout)} case={row['case']}")
        predictions["atlas"] = folder
        timings["atlas_s"] = round(time.time() - t0, 1)

    refs = discover(holdout_root)
    refs = {case: refs[case] for case in (r["case"] for r in holdout)}
    results, missing = {}, {}
    for arm, folder in predictions.items():
        results[arm], missing[arm] = evaluate_folder(folder, holdout_root, refs=refs)
    timings["total_s"] = round(time.time() - start, 1)
    preamble = _preamble(exp, trained, synthetic_source, len(holdout), timings, resume)
    summaries = write_report(results, root / "report", holdout_root,
                             title=f"The paper's experiment at the `{config.profile.name}` profile",
                             missing=missing, notes=notes, preamble=preamble)
    record = {"config": config.path, "timings": timings, "notes": notes,
              "arms": {arm: {"bundle": str(i["bundle"]), "cases": i["cases"]} for arm, i in trained.items()},
              "synthetic_source": str(synthetic_source) if synthetic_source else None,
              "summaries": finite(summaries)}
    text = json.dumps(record, indent=2, default=str) + "\n"
    write_text(root / "report" / "experiment.json", text)
    return {"report": str(root / "report" / "report.md"), "summaries": summaries, "timings": timings,
            "notes": notes}


def _preamble(exp: ExperimentConfig, trained: dict, synthetic_source, n_holdout: int, timings: dict,
              resumed: bool) -> str:
    lines = [f"Hold-out: `{exp.holdout}` ({n_holdout} cases with enlarged ventricles; no model saw them).", ""]
    for arm, info in trained.items():
        s = info["summary"]
        lines.append(f"- **{arm}** ({ARM_TITLES[arm]}): {info['cases']} training cases, nnU-Net dataset "
                     f"{s['dataset']}, training {s['train_s']:.0f} s.")
    if exp.atlas:
        r = exp.registration
        lines.append(f"- **atlas** ({ARM_TITLES['atlas']}): committed ICBM 2009c/CerebrA template, SimpleITK "
                     f"affine (Mattes MI, {r.affine_iterations} it.) + diffeomorphic demons "
                     f"({r.demons_iterations} it. per level, levels {r.demons_levels}, sigma "
                     f"{r.demons_sigma:g} voxels) after histogram matching; {timings.get('atlas_s', 0):.0f} s.")
    if synthetic_source:
        lines.append(f"- synthetic pairs: `{synthetic_source}`.")
    heading = "Wall time of this resumed run (steps an earlier run finished count 0 s)" if resumed else "Wall time"
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items() if k != "total_s")
    lines += ["", f"{heading} {timings['total_s']:.0f} s: {steps}.", "",
              PAPER_TABLE, ""]
    return "\n".join(lines)
