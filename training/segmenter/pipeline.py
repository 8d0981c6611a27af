"""The segmenter's whole training: raw export -> plan and preprocess -> train -> bundle (with its decision
threshold and measured metrics), for the `segmenter` stage and for each arm of the experiment."""

from __future__ import annotations

import os
import time
from pathlib import Path

from VentricleSynthLib.bundles.store import SEGMENTER
from VentricleSynthLib.errors import ConfigError

from training.config import Config
from training.segmenter import nnunet_env
from training.segmenter.bundle import export_bundle
from training.segmenter.planning import plan_and_preprocess
from training.segmenter.raw_export import Case, dataset_cases, dataset_name, export_raw, pair_cases
from training.segmenter.threshold import choose_threshold, fixed_decision, measure
from training.segmenter.trainer import (initial_weights_provenance, nnunet_device, schedule_extensions, train,
                                       training_seconds)
from training.stage_configs import SegmenterConfig


def build(config: Config, settings: SegmenterConfig, work: Path, cases: list[Case], name: str, out: Path,
          resume: bool = False, measure_sets: dict[str, list[Case]] | None = None, progress=print) -> dict:
    """Export -> plan/preprocess -> train -> bundle, for any list of cases (the stage and the experiment's arms)."""
    nnunet_env.setup(work)
    profile = config.profile
    dataset_id = int(settings.dataset_id)
    ds_name = dataset_name(dataset_id, name)
    _check_dataset_id(dataset_id, ds_name)
    timings = {}
    t0 = time.time()
    export_raw(cases, Path(os.environ["nnUNet_raw"]), ds_name, profile, progress, settings.targets,
               settings.image_reader_writer, all_structures=settings.appearance is not None)
    timings["export_s"] = round(time.time() - t0, 1)
    t0 = time.time()
    plan_and_preprocess(dataset_id, cases, settings, profile, progress)
    timings["plan_preprocess_s"] = round(time.time() - t0, 1)
    trained, _ = train(dataset_id, settings, profile, resume, progress)
    seconds = training_seconds(trained / f"fold_{settings.fold}" / "checkpoint_final.pth")
    timings["train_s"] = round(seconds, 1)
    provenance = {
        "schedule_extensions": schedule_extensions(trained / f"fold_{settings.fold}"),
        "cases": len(cases),
        "sources": ", ".join(f"{k}: {v}" for k, v in _count_origins(cases).items()),
        "dataset": ds_name,
        "seconds": round(seconds, 1),
        "device": str(nnunet_device(settings.device)),
        "config": config.path,
    }
    if settings.appearance is not None:
        provenance["appearance"] = settings.appearance
    if settings.initial_weights is not None:
        provenance["initial_weights"] = initial_weights_provenance(settings.initial_weights)
    t0 = time.time()
    decision = fixed_decision(settings)
    bundle = export_bundle(trained, out, settings, profile, provenance, decision)
    if settings.union_threshold == "val" and (measure_sets or {}).get("val"):  # the exported bundle predicts
        decision = choose_threshold(bundle, measure_sets["val"], settings.device)
        bundle = export_bundle(trained, out, settings, profile, provenance, decision)
    if measure_sets:
        provenance["metrics"] = measure(bundle, measure_sets, settings.device)
        bundle = export_bundle(trained, out, settings, profile, provenance, decision)
    timings["bundle_s"] = round(time.time() - t0, 1)
    return {"bundle": str(bundle), "dataset": ds_name, "cases": len(cases), **timings,
            "metrics": provenance.get("metrics", {})}


def _count_origins(cases: list[Case]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in cases:
        key = c.origin.split("/")[0]
        counts[key] = counts.get(key, 0) + 1
    return counts


def _check_dataset_id(dataset_id: int, name: str) -> None:
    """nnU-Net finds a dataset by its number: refuse a second dataset with the same id under this --work."""
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        for p in Path(os.environ[var]).glob(f"Dataset{dataset_id:03d}_*"):
            if p.name != name:
                raise ConfigError(f"nnU-Net dataset id {dataset_id} is already used by {p} under this --work; "
                                  f"set segmenter.dataset_id to another number")


def train_segmenter(config: Config, settings: SegmenterConfig, work: Path, resume: bool = False,
                    synthetic: Path | None = None, progress=print) -> dict:
    """The `segmenter` stage: the datasets' train and val cases (+ synthetic pairs) -> WORK/bundles/segmenter,
    measured on the val split and, when WORK/data has it, the enlarged hold-out."""
    work = Path(work)
    cases = []
    for ds in settings.datasets:
        cases += dataset_cases(work / "data", ds)
    if synthetic is not None:
        cases += pair_cases(synthetic)
    measure_sets = {"val": [c for c in cases if c.split == "val"]}
    holdout = work / "data" / "enlarged"
    if (holdout / "cases.csv").is_file():
        measure_sets["enlarged hold-out"] = dataset_cases(work / "data", "enlarged", splits=("holdout",))
    return build(config, settings, work, cases, "Ventricles", work / "bundles" / SEGMENTER, resume,
                 measure_sets=measure_sets, progress=progress)
