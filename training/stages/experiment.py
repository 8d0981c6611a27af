"""Stage `experiment`: the paper's comparison of segmenters trained on real, augmented and synthetic data.

Arms (method.md): **real** = nnU-Net on the natural cohort (train + val splits); **augmented** = real +
synthetic pairs with uniformly spread ventricle volumes; **synthetic** = synthetic pairs only; and an
**atlas** baseline standing in for SynthSeg: the committed template (training/templates.py) registered
to each hold-out image with SimpleITK (moments-centred affine by Mattes mutual
information, then multi-resolution diffeomorphic demons after histogram matching), its ventricle labels
warped with nearest neighbour. Every model is scored on the
enlarged-ventricle hold-out (WORK/data/enlarged, split `holdout`, never used for training) with
training/evaluate.py; the table has the paper's form (MAE ± SD mL, Dice ± SD) plus IoU, bias, HD95
and the trend of the error with volume.

Synthetic pairs come from the generator bundles (`--models DIR`, else WORK/bundles, else the
bundled/`$VENTRICLESYNTH_MODELS` models) for this profile, sampled with `VentricleSynthLib.cohorts.synthesize`
(the paper's final set: ten volume buckets over the trained range; guidance, candidates and steps are the
bundles' unless the config sets them; the paper used w = 1), or from `--synthetic-from
DIR` (pre-made `sample_*/` pairs or an nnU-Net raw dataset). Without either, the augmented and
synthetic arms are skipped and the report says so.

Everything lands in WORK/experiment/: synthetic/ (the pairs), bundles/<arm>/, predictions/<arm>/, report/.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from VentricleSynthLib.errors import ConfigError, DatasetError
from VentricleSynthLib.labels import VENTRICLE_LABELS
from VentricleSynthLib.io.nifti import Volume, atomic_write_bytes, load_image, save_volume
from VentricleSynthLib.io.nnunet_raw import image_path, read_csv

from training.evaluation import scoring as evaluate
from training.segmenter import stage as segmenter_stage
from training.segmenter.stage import Case, cohort_cases, pair_cases, seg_config

ARMS = ("real", "augmented", "synthetic")
DEFAULTS = {
    "arms": list(ARMS),
    "atlas": True,
    "holdout": "enlarged",
    "real_datasets": ["natural"],
    "synthetic_count": 20,
    "augment_count": None,  # synthetic pairs added to the real set in the augmented arm (default: all)
    "synthetic_guidance": None,  # default: the mask bundle's (the paper's final set used w = 1)
    "synthetic_candidates": None,  # default: the mask bundle's
    "synthetic_steps": None,  # default: the generator bundles' own
    "synthetic_seed": 7000,
    "dataset_ids": {"real": 511, "augmented": 512, "synthetic": 513},
    "segmenter": {},  # overrides of the `segmenter` section for the arms (e.g. a shorter schedule)
    "registration": {"affine_iterations": 100, "demons_iterations": 100, "demons_levels": [2, 1],
                     "demons_sigma": 1.0, "sampling": 0.2, "seed": 0},
}
ARM_TITLES = {"real": "Real", "augmented": "Augmented", "synthetic": "Synthetic",
              "atlas": "Atlas registration (SynthSeg stand-in)"}
PAPER_TABLE = """Paper (Ruschke et al. 2024; 42 patients with enlarged ventricles, manual labels; N=1000 real,
1512 augmented, 1000 synthetic): MAE 9.09 ± 12.18 mL real, 6.23 ± 4.33 augmented (Dice 0.892 ± 0.05, best),
7.52 ± 4.81 synthetic, 7.73 ± 12.12 SynthSeg (fails on large ventricles)."""


def exp_config(config: dict) -> dict:
    section = dict(config.get("experiment") or {})
    out = {**DEFAULTS, **section}
    out["dataset_ids"] = {**DEFAULTS["dataset_ids"], **(section.get("dataset_ids") or {})}
    out["registration"] = {**DEFAULTS["registration"], **(section.get("registration") or {})}
    bad = [a for a in out["arms"] if a not in ARMS]
    if bad:
        raise ConfigError(f"{config.get('path', 'config')}: experiment.arms has unknown arms {bad}; "
                          f"choose from {', '.join(ARMS)}")
    return out


# --- data ---------------------------------------------------------------------------------------------

def ensure_data(config: dict, work: Path, exp: dict, progress=print) -> None:
    """Build the cohort distributions the experiment needs when this --work has none yet."""
    from training.stages import data as data_stage

    missing = [d for d in [*exp["real_datasets"], exp["holdout"]] if not (work / "data" / d / "cases.csv").is_file()]
    if missing:
        if any(d not in data_stage.DISTRIBUTION_IDS for d in missing):
            raise DatasetError(f"{work / 'data'}: missing datasets {missing}; run `train.py data` first")
        progress(f"experiment: building the cohort ({', '.join(missing)}) under {work / 'data'}")
        data_stage.run(config, work, distributions=missing, progress=progress)


def holdout_cases(work: Path, name: str) -> list[dict]:
    root = work / "data" / name
    rows = [r for r in read_csv(root / "cases.csv") if r.get("split") == "holdout"]
    if not rows:
        raise DatasetError(f"{root}: no cases with split 'holdout' (the enlarged-ventricle hold-out)")
    return rows


# --- synthetic pairs ----------------------------------------------------------------------------------

def find_generators(config: dict, work: Path, models: Path | None) -> tuple[Path | None, str]:
    """(folder holding mask_generator + image_generator for this profile, or None; why not)."""
    from VentricleSynthLib.bundles import format as bundles
    from VentricleSynthLib.bundles.store import IMAGE, MASK, models_dir

    profile = config["profile_obj"]
    candidates = [Path(models)] if models else [work / "bundles", models_dir(None)]
    reasons = []
    for root in candidates:
        if not ((root / MASK).is_dir() and (root / IMAGE).is_dir()):
            reasons.append(f"{root}: no {MASK}/{IMAGE} bundles")
            continue
        try:
            prof = bundles.read_config(root / MASK).get("profile", {})
        except bundles.BundleError as exc:
            reasons.append(str(exc))
            continue
        if prof.get("name") != profile.name or list(prof.get("shape", [])) != list(profile.shape):
            reasons.append(f"{root}: generators are for profile {prof.get('name')!r} {prof.get('shape')}, "
                           f"not {profile.name!r} {list(profile.shape)}")
            continue
        return root, ""
    return None, "; ".join(reasons)


def generate_synthetic(models: Path, out: Path, exp: dict, work: Path, progress=print) -> Path:
    """`synthetic_count` pairs with the paper's final-set volumes (ten jittered buckets over the trained range)
    into out/ as an nnU-Net raw dataset, by `cohort_synthesis.synthesize` (resumable, QC'd, reported)."""
    from VentricleSynthLib.cohorts.synthesize import CohortRequest, find_segmenter, synthesize

    result = synthesize(CohortRequest(
        out=out, distribution="buckets", count=int(exp["synthetic_count"]), seed=int(exp["synthetic_seed"]),
        guidance=exp["synthetic_guidance"], candidates=exp["synthetic_candidates"], steps=exp["synthetic_steps"],
        format="nnunet", models=models, segmenter=find_segmenter(models, work / "bundles")[0], progress=False),
        log=progress)
    if result["complete"] < int(exp["synthetic_count"]):
        raise DatasetError(f"{out}: only {result['complete']} of {exp['synthetic_count']} synthetic pairs were "
                           f"made ({result['failures']} failed); rerun the experiment to retry them")
    return out


# --- atlas-registration baseline ---------------------------------------------------------------------

def _to_sitk(array: np.ndarray, affine: np.ndarray):
    """numpy (i, j, k) + voxel->RAS affine -> SimpleITK image in ITK's LPS world."""
    import SimpleITK as sitk

    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    lps = np.diag([-1.0, -1.0, 1.0])
    direction = lps @ affine[:3, :3] / spacing
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in direction.ravel()])
    img.SetOrigin([float(v) for v in lps @ affine[:3, 3]])
    return img


def _from_sitk(img) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(img).transpose(2, 1, 0)


class AtlasSegmenter:
    """Register the committed template to a T1 with SimpleITK and carry its ventricle labels over."""

    def __init__(self, settings: dict | None = None):
        import SimpleITK as sitk

        from training.data.templates import load_committed

        self.settings = {**DEFAULTS["registration"], **(settings or {})}
        threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
        if threads > 0:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        template = load_committed()
        t1 = template.t1.astype(np.float32)
        vent = np.where(np.isin(template.label, VENTRICLE_LABELS), template.label, 0).astype(np.int16)
        self.moving = {"head": _to_sitk(t1, template.affine),
                       "brain": _to_sitk(np.where(template.brain_mask, t1, 0).astype(np.float32), template.affine)}
        self.labels = _to_sitk(vent, template.affine)
        self._cache: dict = {}

    def _movings(self, spacing: float) -> dict:
        """The template images at (about) the target's resolution: registration cost follows the voxel count."""
        import SimpleITK as sitk

        key = round(max(spacing, 1e-3), 2)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        out = {}
        for name, image in self.moving.items():
            current = min(image.GetSpacing())
            if spacing <= current * 1.25:
                out[name] = image
                continue
            size = [max(8, int(round(n * s / spacing))) for n, s in zip(image.GetSize(), image.GetSpacing())]
            smooth = sitk.SmoothingRecursiveGaussian(image, 0.5 * (spacing - current))
            out[name] = sitk.Resample(smooth, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                                      [spacing] * 3, image.GetDirection(), 0.0, sitk.sitkFloat32)
        self._cache = {key: out}
        return out

    def _method(self, iterations: int, shrink, smooth):
        import SimpleITK as sitk

        s = self.settings
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(float(s["sampling"]), int(s["seed"]))
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=int(iterations),
                                                     gradientMagnitudeTolerance=1e-6)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel(list(shrink))
        reg.SetSmoothingSigmasPerLevel(list(smooth))
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        return reg

    def _affine(self, fixed, moving):
        import SimpleITK as sitk

        initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(3),
                                                    sitk.CenteredTransformInitializerFilter.MOMENTS)
        reg = self._method(self.settings["affine_iterations"], (4, 2, 1), (4.0, 2.0, 0.0))
        reg.SetInitialTransform(initial, inPlace=True)
        reg.Execute(fixed, moving)
        return initial, reg.GetMetricValue()

    def segment(self, image: Volume) -> np.ndarray:
        """FreeSurfer ventricle labels on `image`'s grid."""
        import SimpleITK as sitk

        arr = image.array.astype(np.float32)
        lo, hi = np.percentile(arr, [0.5, 99.5])
        fixed = _to_sitk(np.clip((arr - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32), image.affine)
        movings = self._movings(min(fixed.GetSpacing()))
        best = None
        for name, moving in movings.items():  # with or without skull: keep the better match
            transform, metric = self._affine(fixed, moving)
            if best is None or metric < best[2]:
                best = (name, transform, metric)
        name, affine, _ = best
        transform = affine
        if int(self.settings["demons_iterations"]) > 0:
            moved = sitk.Resample(movings[name], fixed, affine, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            moved = sitk.HistogramMatching(moved, fixed, numberOfHistogramLevels=128, numberOfMatchPoints=15,
                                           thresholdAtMeanIntensity=True)
            field = self._demons(fixed, moved)
            transform = sitk.CompositeTransform([affine, sitk.DisplacementFieldTransform(field)])
        warped = sitk.Resample(self.labels, fixed, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkInt16)
        return _from_sitk(warped).astype(np.int16)

    def _demons(self, fixed, moving):
        """Multi-resolution diffeomorphic demons (coarse to fine); returns a displacement field on `fixed`'s grid."""
        import SimpleITK as sitk

        s = self.settings
        field = None
        for factor in s["demons_levels"]:
            if factor > 1:
                f = sitk.Shrink(sitk.SmoothingRecursiveGaussian(fixed, 0.5 * factor * min(fixed.GetSpacing())),
                                [int(factor)] * 3)
                m = sitk.Resample(sitk.SmoothingRecursiveGaussian(moving, 0.5 * factor * min(fixed.GetSpacing())),
                                  f, sitk.Transform(), sitk.sitkLinear, 0.0)
            else:
                f, m = fixed, moving
            if field is None:
                init = sitk.Image(f.GetSize(), sitk.sitkVectorFloat64)
                init.CopyInformation(f)
            else:
                init = sitk.Resample(field, f, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
            demons = sitk.DiffeomorphicDemonsRegistrationFilter()
            demons.SetNumberOfIterations(int(s["demons_iterations"]))
            demons.SetSmoothDisplacementField(True)
            demons.SetStandardDeviations(float(s["demons_sigma"]))
            field = demons.Execute(f, m, init)
        return field


# --- the stage ----------------------------------------------------------------------------------------

def _predict(bundle: Path, cases: list[dict], holdout_root: Path, out: Path, device: str, progress=print) -> float:
    from VentricleSynthLib.segmentation.segmenter import Segmenter

    segmenter = Segmenter(bundle, device=device)
    start = time.time()
    for i, row in enumerate(cases, start=1):
        image = load_image(image_path(holdout_root, row["case"]))
        label, _ = segmenter.segment(image)
        save_volume(label, out / f"{row['case']}.nii.gz", dtype=np.int16)
        progress(f"PROGRESS stage=experiment-predict-{out.name} step={i}/{len(cases)} case={row['case']}")
    return time.time() - start


def synthetic_pairs(source: Path, exp: dict, generated: bool) -> list[Case]:
    """The arms' synthetic pairs: every pair of a --synthetic-from folder; of a generated folder the first
    `synthetic_count` (a folder grown by an earlier, larger config keeps its extra pairs on disk)."""
    cases = pair_cases(source, prefix="synth", val_every=10)
    return cases[:int(exp["synthetic_count"])] if generated else cases


def run(config: dict, work: Path, resume: bool = False, synthetic_from: Path | None = None,
        models: Path | None = None, progress=print) -> dict:
    work = Path(work)
    exp = exp_config(config)
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
    wants_synthetic = any(a in exp["arms"] for a in ("augmented", "synthetic"))
    if wants_synthetic:
        t0 = time.time()
        if synthetic_from is not None:
            synthetic_source = Path(synthetic_from)
        else:
            gen_root, why = find_generators(config, work, models)
            if gen_root is None:
                message = (f"no generator bundles for profile '{config['profile_obj'].name}' ({why}); train them "
                           f"(train.py mask-ae, mask-ldm, image-ae, image-ldm) or pass --synthetic-from DIR")
                progress(f"experiment: augmented and synthetic arms skipped: {message}")
                for arm in ("augmented", "synthetic"):
                    if arm in exp["arms"]:
                        notes[arm] = {"note": f"skipped: {message}"}
            else:
                synthetic_source = generate_synthetic(gen_root, root / "synthetic", exp, work, progress)
        if synthetic_source is not None:
            synthetic_cases = synthetic_pairs(synthetic_source, exp, generated=synthetic_from is None)
        timings["synthetic_s"] = round(time.time() - t0, 1)

    real_cases = [c for d in exp["real_datasets"] for c in cohort_cases(work / "data", d)]
    arm_cases = {
        "real": real_cases,
        "augmented": real_cases + [Case(c.case_id, c.origin, "train", c.load)
                                   for c in synthetic_cases[:exp["augment_count"] or len(synthetic_cases)]],
        "synthetic": synthetic_cases,
    }
    holdout_root = work / "data" / exp["holdout"]
    holdout = holdout_cases(work, exp["holdout"])
    trained = {}
    for arm in exp["arms"]:
        if arm in notes:
            continue
        seg = seg_config(config, {**exp["segmenter"], "dataset_id": int(exp["dataset_ids"][arm])})
        t0 = time.time()
        summary = segmenter_stage.build(config, work, arm_cases[arm], f"Ventricles{arm.capitalize()}",
                                        root / "bundles" / arm, seg, resume=resume, progress=progress)
        timings[f"{arm}_train_s"] = round(time.time() - t0, 1)
        trained[arm] = {"bundle": Path(summary["bundle"]), "cases": len(arm_cases[arm]), "summary": summary,
                        "device": seg["device"]}
        progress(f"experiment: {arm}: trained on {len(arm_cases[arm])} cases -> {summary['bundle']}")

    predictions = {}
    for arm, info in trained.items():
        folder = root / "predictions" / arm
        timings[f"{arm}_predict_s"] = round(_predict(info["bundle"], holdout, holdout_root, folder, info["device"],
                                                     progress), 1)
        predictions[arm] = folder
    if exp["atlas"]:
        t0 = time.time()
        folder = root / "predictions" / "atlas"
        atlas = None
        for i, row in enumerate(holdout, start=1):
            target = folder / f"{row['case']}.nii.gz"
            if resume and target.is_file():
                continue
            atlas = atlas or AtlasSegmenter(exp["registration"])
            image = load_image(image_path(holdout_root, row["case"]))
            save_volume(Volume(atlas.segment(image), image.affine), target, dtype=np.int16)
            progress(f"PROGRESS stage=experiment-atlas step={i}/{len(holdout)} case={row['case']}")
        predictions["atlas"] = folder
        timings["atlas_s"] = round(time.time() - t0, 1)

    refs = evaluate.discover(holdout_root)
    refs = {case: refs[case] for case in (r["case"] for r in holdout)}
    results, missing = {}, {}
    for arm, folder in predictions.items():
        results[arm], missing[arm] = evaluate.evaluate_folder(folder, holdout_root, refs=refs)
    timings["total_s"] = round(time.time() - start, 1)
    preamble = _preamble(config, exp, trained, synthetic_source, len(holdout), timings, resume)
    summaries = evaluate.write_report(results, root / "report", holdout_root,
                                      title=f"The paper's experiment at the `{config['profile_obj'].name}` profile",
                                      missing=missing, notes=notes, preamble=preamble)
    record = {"config": config.get("path"), "timings": timings, "notes": notes,
              "arms": {arm: {"bundle": str(i["bundle"]), "cases": i["cases"]} for arm, i in trained.items()},
              "synthetic_source": str(synthetic_source) if synthetic_source else None,
              "summaries": evaluate._finite(summaries)}
    text = json.dumps(record, indent=2, default=str) + "\n"
    atomic_write_bytes(root / "report" / "experiment.json", lambda tmp: Path(tmp).write_text(text))
    return {"report": str(root / "report" / "report.md"), "summaries": summaries, "timings": timings,
            "notes": notes}


def _preamble(config, exp, trained, synthetic_source, n_holdout, timings, resumed: bool) -> str:
    lines = [f"Hold-out: `{exp['holdout']}` ({n_holdout} cases with enlarged ventricles; no model saw them).", ""]
    for arm, info in trained.items():
        s = info["summary"]
        lines.append(f"- **{arm}** ({ARM_TITLES[arm]}): {info['cases']} training cases, nnU-Net dataset "
                     f"{s['dataset']}, training {s['train_s']:.0f} s.")
    if exp["atlas"]:
        r = exp["registration"]
        lines.append(f"- **atlas** ({ARM_TITLES['atlas']}): committed ICBM 2009c/CerebrA template, SimpleITK "
                     f"affine (Mattes MI, {r['affine_iterations']} it.) + diffeomorphic demons "
                     f"({r['demons_iterations']} it. per level, levels {r['demons_levels']}, sigma "
                     f"{r['demons_sigma']:g} voxels) after histogram matching; {timings.get('atlas_s', 0):.0f} s.")
    if synthetic_source:
        lines.append(f"- synthetic pairs: `{synthetic_source}`.")
    heading = "Wall time of this resumed run (steps an earlier run finished count 0 s)" if resumed else "Wall time"
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items() if k != "total_s")
    lines += ["", f"{heading} {timings['total_s']:.0f} s: {steps}.", "",
              PAPER_TABLE, ""]
    return "\n".join(lines)
