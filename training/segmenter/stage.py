"""Stage `segmenter`: train the nnU-Net v2 ventricle segmenter and export its model bundle.

1. Export: the cohort's natural cases (train and val splits; `segmenter.datasets`) and, optionally,
   synthetic pairs (`--synthetic DIR`: `sample_*/{image,label}.nii.gz` or an nnU-Net raw dataset) to an
   nnU-Net raw dataset WORK/nnunet/raw/Dataset5xx_*/ whose labels are 0 = background and 1..6 = the
   six ventricle labels (FreeSurfer 4, 43, 5, 44, 14, 15; the table is kept in dataset.json). Images
   stay on the profile grid, as the `segment` command feeds them. `splits_final.json` fold 0 keeps
   the cohort's own val split.
2. Plan and preprocess with nnU-Net's fingerprint extractor, ExperimentPlanner and preprocessor.
   `plan: default` keeps nnU-Net's 3d_fullres plan (GPU, `paper`); `plan: slim` rewrites the
   3d_fullres network of that plan (fewer features and stages, patch size from the config; kernel
   sizes and strides from nnU-Net's own `get_pool_and_conv_props`) under the plans name
   `VentricleSynthPlans`.
3. Train with nnU-Net's `nnUNetTrainerNoMirroring` (the labels are lateralised), subclassed when the
   config's epochs and iterations differ from nnU-Net's defaults. The class is handed to nnU-Net
   directly (no trainer lookup by name); resume uses nnU-Net's own checkpoints and
   `run_training.maybe_load_checkpoint`. With `num_gpus > 1` (CUDA, default schedule only) nnU-Net's
   `run_training` does DDP.
4. Bundle: WORK/bundles/segmenter/ with nnU-Net's results layout (plans.json, dataset.json, fold_N/
   checkpoint_final.pth holding the network weights only, trainer_name `nnUNetTrainer` so stock
   `nnUNetv2_predict` can use it too), config.json (profile, label table, provenance), card.md with
   measured metrics, and manifest.json (sha256).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from VentricleSynthLib.bundles import format as bundles
from VentricleSynthLib.errors import ConfigError, DatasetError
from VentricleSynthLib.labels import label_name
from VentricleSynthLib.io.nifti import Volume, atomic_write_bytes, check_same_grid, load_image, load_label_map, save_volume
from VentricleSynthLib.io.nnunet_raw import list_cases, load_case, read_csv, read_dataset_json, write_csv, write_json
from VentricleSynthLib.imaging.profile import Profile, to_profile
from VentricleSynthLib.segmentation.segmenter import MIN_THRESHOLD, SEGMENTER_LABELS, UNION_REGION, to_segmenter_indices
from VentricleSynthLib.volumes import ventricle_volume_ml

from training.provenance import git_commit
from training.segmenter import nnunet_env
from training.loop import TrainingError

PLANS = "VentricleSynthPlans"
CONFIGURATION = "3d_fullres"
EXPORT_TRAINER = "nnUNetTrainer"
BUNDLE_VERSION = "0.1.0"
# What the network is trained to output. `labels`: nnU-Net's default, softmax over background + six labels.
# `union+labels`: nnU-Net's region-based training (sigmoid heads, Dice + BCE per region) with the ventricular
# system itself as the first region, then each label as its own region. Trained so, the cpu model learned all six
# labels (with `labels` it never learned the four small ones: -8.5 mL on enlarged cases); at inference the label
# regions decide (VentricleSynthLib.segmentation.segmenter.union_and_scores: the union head measured worse on validation).
TARGETS = ("labels", "union+labels")
EXTENSIONS_FILE = "schedule_extensions.json"  # beside nnU-Net's checkpoints: --resume runs that added epochs
NNUNET_DEFAULT_SCHEDULE = {"epochs": 1000, "iterations_per_epoch": 250, "val_iterations_per_epoch": 50}

DEFAULTS = {
    "datasets": ["natural"],
    "dataset_id": 501,
    "plan": "slim",
    "targets": "labels",
    "union_threshold": 0.5,  # or "val": chosen on the validation split after training (choose_threshold)
    "patch_size": None,  # default: the profile shape
    "batch_size": 2,
    "network": {"base_features": 16, "max_features": 128, "max_stages": 5, "convs_per_stage": 2},
    "trainer": {"epochs": 10, "iterations_per_epoch": 50, "val_iterations_per_epoch": 5, "checkpoint_every": 1},
    "fold": 0,
    "final_validation": False,
    "num_gpus": 1,
    "device": "auto",
}


def seg_config(config: dict, overrides: dict | None = None) -> dict:
    """The `segmenter` section with defaults filled in (and `overrides` applied on top); validated."""
    section = dict(config.get("segmenter") or {})
    out = {**DEFAULTS, **section}
    for key in ("network", "trainer"):
        out[key] = {**DEFAULTS[key], **(section.get(key) or {})}
    for key, value in (overrides or {}).items():
        out[key] = {**out[key], **value} if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    where = f"{config.get('path', 'config')}: segmenter"
    if out["plan"] not in ("slim", "default"):
        raise ConfigError(f"{where}.plan must be 'slim' or 'default', got {out['plan']!r}")
    t = out["union_threshold"]
    if t != "val" and (isinstance(t, bool) or not isinstance(t, (int, float)) or not MIN_THRESHOLD < t < 1):
        raise ConfigError(f"{where}.union_threshold must be a number in ({MIN_THRESHOLD:g}, 1) or 'val', got {t!r}")
    if out["targets"] not in TARGETS:
        raise ConfigError(f"{where}.targets must be one of {', '.join(TARGETS)}, got {out['targets']!r}")
    for key in ("epochs", "iterations_per_epoch", "val_iterations_per_epoch", "checkpoint_every"):
        if not isinstance(out["trainer"].get(key), int) or out["trainer"][key] < 1:
            raise ConfigError(f"{where}.trainer.{key} must be a positive integer")
    if out["fold"] != "all" and not isinstance(out["fold"], int):
        raise ConfigError(f"{where}.fold must be an integer or 'all'")
    if out["patch_size"] is not None and (len(out["patch_size"]) != 3 or min(out["patch_size"]) < 8):
        raise ConfigError(f"{where}.patch_size must be three sizes >= 8")
    return out


# --- cases -------------------------------------------------------------------------------------------

@dataclass
class Case:
    case_id: str  # nnU-Net identifier in the exported dataset
    origin: str  # "natural/natural_0003", "synthetic/sample_004", ...
    split: str  # train | val
    load: Callable[[], tuple[Volume, Volume]]  # (image, label map in FreeSurfer numbers)


def cohort_cases(data_root: Path, dataset: str, splits=("train", "val")) -> list[Case]:
    root = Path(data_root) / dataset
    if not (root / "cases.csv").is_file():
        raise DatasetError(f"{root}: no cases.csv — run `train.py data` for this --work first")
    ds = read_dataset_json(root)
    out = []
    for row in read_csv(root / "cases.csv"):
        split = row.get("split", "train")
        if split in splits:
            case_id = row["case"] if row["case"].startswith(f"{dataset}_") else f"{dataset}_{row['case']}"
            out.append(Case(case_id, f"{dataset}/{row['case']}", split,
                            lambda c=row["case"]: load_case(root, c, ds)))
    return out


def pair_cases(folder: Path, prefix: str = "synth", val_every: int = 0) -> list[Case]:
    """Synthetic pairs: `sample_*/{image,label}.nii.gz` folders or an nnU-Net raw dataset.

    A raw dataset that a synthesize run has not finished (imagesTr/ disagrees with numTraining, or a cohort
    folder, one with records/, without its cases.csv) is refused rather than trained on in part."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder of synthetic pairs")
    out = []
    if (folder / "dataset.json").is_file():
        ds = read_dataset_json(folder)
        cases = list_cases(folder)
        if (folder / "records").is_dir() and not (folder / "cases.csv").is_file():
            raise DatasetError(f"{folder}: incomplete synthetic dataset (no cases.csv); rerun synthesize to finish it")
        if len(cases) != ds.get("numTraining"):
            raise DatasetError(f"{folder}: incomplete synthetic dataset ({len(cases)} images in imagesTr/, "
                               f"dataset.json says numTraining {ds.get('numTraining')}); rerun synthesize to finish it")
        for i, case in enumerate(cases):
            out.append(Case(f"{prefix}_{i:04d}", f"{folder.name}/{case}", "train",
                            lambda c=case: load_case(folder, c, ds)))
    else:
        samples = sorted(p for p in folder.iterdir() if p.is_dir() and (p / "image.nii.gz").is_file()
                         and (p / "label.nii.gz").is_file())
        for i, sample in enumerate(samples):
            out.append(Case(f"{prefix}_{i:04d}", f"{folder.name}/{sample.name}", "train",
                            lambda s=sample: (load_image(s / "image.nii.gz"), load_label_map(s / "label.nii.gz"))))
    if not out:
        raise DatasetError(f"{folder}: no synthetic pairs (expected sample_*/image.nii.gz + label.nii.gz, "
                           f"or an nnU-Net raw dataset)")
    if val_every:
        for i, case in enumerate(out):
            if i % val_every == val_every - 1:
                case.split = "val"
    return out


def _on_profile(image: Volume, label: Volume, profile: Profile) -> tuple[Volume, Volume]:
    """Cases already on a profile grid pass as they are; others are brought there (centred on the brain)."""
    check_same_grid(image, label)
    if image.shape == tuple(profile.shape) and np.allclose(image.spacing, profile.spacing, atol=1e-3) \
            and np.allclose(image.affine[:3, :3], np.diag(image.spacing), atol=1e-3) \
            and 0.0 <= float(image.array.min()) and float(image.array.max()) <= 1.0:
        return image, label
    pre = to_profile(profile, image=image, label=label)
    return Volume(pre.image, pre.grid.affine), Volume(pre.label, pre.grid.affine)


def dataset_name(dataset_id: int, name: str) -> str:
    return f"Dataset{int(dataset_id):03d}_{name}"


def segmenter_dataset_json(num_training: int, extra: dict | None = None, targets: str = "labels") -> dict:
    """nnU-Net's dataset.json; `targets="union+labels"` declares the regions (see TARGETS).

    nnU-Net's own region -> label conversion (stock `nnUNetv2_predict`) paints the union as label 1 first and
    then each label region over it; `VentricleSynthLib.segmentation.segmenter` instead decides ventricle vs background
    by the most likely label region (above the bundle's decision threshold) and names the voxel by it (see
    `union_and_scores`).
    """
    labels = {("background" if lab == 0 else label_name(lab)): i for i, lab in enumerate(SEGMENTER_LABELS)}
    regions = {}
    if targets == "union+labels":
        foreground = list(range(1, len(SEGMENTER_LABELS)))
        labels = {"background": 0, UNION_REGION: foreground, **{k: v for k, v in labels.items() if v}}
        regions = {"regions_class_order": [1, *foreground]}
    return {
        "channel_names": {"0": "T1"},
        "labels": labels,
        **regions,
        "numTraining": int(num_training),
        "file_ending": ".nii.gz",
        "freesurfer_labels": {str(i): int(lab) for i, lab in enumerate(SEGMENTER_LABELS)},
        **(extra or {}),
    }


def export_raw(cases: list[Case], raw_root: Path, name: str, profile: Profile, progress=print,
               targets: str = "labels") -> Path:
    """Write (or finish) the nnU-Net raw dataset; cases no longer asked for are removed."""
    if len({c.case_id for c in cases}) != len(cases):
        raise DatasetError("duplicate case identifiers among the segmenter's training sources")
    root = Path(raw_root) / name
    images, labels = root / "imagesTr", root / "labelsTr"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    # keep a written case only if it still comes from the same source (resume); drop everything else
    previous = {r["case"]: r["origin"] for r in read_csv(root / "cases.csv")} if (root / "cases.csv").is_file() else {}
    wanted = {c.case_id for c in cases if previous.get(c.case_id) == c.origin}
    for folder, suffix in ((images, "_0000.nii.gz"), (labels, ".nii.gz")):
        for p in folder.iterdir():
            if p.name.endswith(suffix) and p.name[: -len(suffix)] not in wanted:
                p.unlink()
    (root / "cases.csv").unlink(missing_ok=True)  # rewritten when every case is in place
    rows = []
    for i, case in enumerate(cases, start=1):
        img_path, lab_path = images / f"{case.case_id}_0000.nii.gz", labels / f"{case.case_id}.nii.gz"
        image, label = case.load() if not (img_path.is_file() and lab_path.is_file()) else (None, None)
        if image is not None:
            image, label = _on_profile(image, label, profile)
            save_volume(Volume(image.array.astype(np.float32), image.affine), img_path, dtype=np.float32)
            save_volume(Volume(to_segmenter_indices(label.array), label.affine), lab_path, dtype=np.uint8)
        rows.append({"case": case.case_id, "origin": case.origin, "split": case.split})
        if i % 10 == 0 or i == len(cases):
            progress(f"PROGRESS stage=segmenter-export step={i}/{len(cases)} case={case.case_id}")
    write_json(root / "dataset.json", segmenter_dataset_json(len(cases), {
        "name": name, "profile": profile.name,
        "description": "VentricleSynth ventricle segmenter training set (labels 1..6 = FreeSurfer 4,43,5,44,14,15)"},
        targets))
    write_csv(root / "cases.csv", rows, ["case", "origin", "split"])
    return root


def splits(cases: list[Case]) -> list[dict]:
    """nnU-Net's splits_final.json: fold 0 = our train / val split (a val case from train if there is none)."""
    train = [c.case_id for c in cases if c.split == "train"]
    val = [c.case_id for c in cases if c.split == "val"]
    if not val:
        val = train[-max(1, len(train) // 10):]
        train = [c for c in train if c not in val] or train
    return [{"train": sorted(train), "val": sorted(val)}]


# --- planning and preprocessing --------------------------------------------------------------------

def _slim_configuration(plans: dict, seg: dict, profile: Profile) -> dict:
    """The 3d_fullres configuration with the config's network width/depth and patch size (nnU-Net axis order)."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    cfg = json.loads(json.dumps(plans["configurations"][CONFIGURATION]))
    patch_xyz = list(seg["patch_size"] or profile.shape)
    sitk_order = patch_xyz[::-1]
    patch = [int(sitk_order[i]) for i in plans["transpose_forward"]]
    net = seg["network"]
    max_stages = int(net["max_stages"])
    _, strides, kernels, patch, _ = get_pool_and_conv_props(cfg["spacing"], patch, 4, max_stages - 1)
    n = len(strides)
    arch = cfg["architecture"]["arch_kwargs"]
    arch.update({
        "n_stages": n,
        "features_per_stage": [min(int(net["base_features"]) * 2 ** i, int(net["max_features"])) for i in range(n)],
        "kernel_sizes": [list(k) for k in kernels],
        "strides": [list(s) for s in strides],
        "n_conv_per_stage": [int(net["convs_per_stage"])] * n,
        "n_conv_per_stage_decoder": [int(net["convs_per_stage"])] * (n - 1),
    })
    cfg["patch_size"] = [int(p) for p in patch]
    cfg["batch_size"] = int(seg["batch_size"])
    return cfg


def _stamp(cases: list[Case], seg: dict, profile: Profile) -> str:
    key = {"cases": [(c.case_id, c.origin, c.split) for c in cases], "plan": seg["plan"], "network": seg["network"],
           "targets": seg["targets"],
           "patch_size": seg["patch_size"], "batch_size": seg["batch_size"],
           "profile": [profile.spacing, profile.shape]}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=list).encode()).hexdigest()


def plan_and_preprocess(dataset_id: int, cases: list[Case], seg: dict, profile: Profile, progress=print) -> dict:
    """Fingerprint, plan and preprocess (skipped when the same cases and settings were done before)."""
    from batchgenerators.utilities.file_and_folder_operations import save_json
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset,
                                                                      plan_experiment_dataset, preprocess_dataset)
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    name = convert_id_to_dataset_name(dataset_id)
    pre = Path(os.environ["nnUNet_preprocessed"]) / name
    stamp_file = pre / "ventriclesynth_stamp.json"
    stamp = _stamp(cases, seg, profile)
    plans_file = pre / f"{PLANS}.json"
    done = stamp_file.is_file() and json.loads(stamp_file.read_text()).get("stamp") == stamp and plans_file.is_file()
    if not done:
        n = nnunet_env.num_processes()
        start = time.time()
        progress(f"PROGRESS stage=segmenter-plan step=1/3 dataset={name}")
        extract_fingerprint_dataset(dataset_id, num_processes=n, check_dataset_integrity=True, clean=True,
                                    verbose=False, show_progress_bar=False)
        with nnunet_env.planner_threads():
            plan_experiment_dataset(dataset_id, overwrite_plans_name=PLANS)
        plans = json.loads(plans_file.read_text())
        if seg["plan"] == "slim":
            plans["configurations"] = {CONFIGURATION: _slim_configuration(plans, seg, profile)}
            plans_text = json.dumps(plans, indent=2)
            atomic_write_bytes(plans_file, lambda tmp: Path(tmp).write_text(plans_text))
        progress(f"PROGRESS stage=segmenter-plan step=2/3 dataset={name}")
        preprocess_dataset(dataset_id, PLANS, (CONFIGURATION,), [n], verbose=False, show_progress_bar=False)
        progress(f"PROGRESS stage=segmenter-plan step=3/3 dataset={name} seconds={time.time() - start:.1f}")
        text = json.dumps({"stamp": stamp})
        atomic_write_bytes(stamp_file, lambda tmp: Path(tmp).write_text(text))
    save_json(splits(cases), str(pre / "splits_final.json"))
    return json.loads(plans_file.read_text())


# --- training --------------------------------------------------------------------------------------

def is_default_schedule(schedule: dict) -> bool:
    return all(int(schedule[k]) == v for k, v in NNUNET_DEFAULT_SCHEDULE.items()) and "initial_lr" not in schedule


def trainer_class(schedule: dict):
    """nnU-Net's trainer for this schedule: `nnUNetTrainerNoMirroring` for the defaults, else a subclass of it.

    Mirroring is off because the labels are lateralised: nnU-Net's default flips along every axis turn a
    left lateral ventricle into a right one, so the network learns the two as one blurred class (the first
    cpu segmenter split its union probability between them and under-segmented by 5.7 mL). Inputs always
    reach the network in the profile's RAS orientation, so flips buy no invariance worth that.
    """
    import torch
    from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import (
        nnUNetTrainerNoMirroring)

    if is_default_schedule(schedule):
        return nnUNetTrainerNoMirroring

    class VentricleSynthTrainer(nnUNetTrainerNoMirroring):
        """nnUNetTrainerNoMirroring with epochs, iterations, checkpoint interval (and lr) from the config."""

        SCHEDULE = dict(schedule)

        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            s = self.SCHEDULE
            self.num_epochs = int(s["epochs"])
            self.num_iterations_per_epoch = int(s["iterations_per_epoch"])
            self.num_val_iterations_per_epoch = int(s["val_iterations_per_epoch"])
            self.save_every = int(s.get("checkpoint_every", 1))
            if "initial_lr" in s:
                self.initial_lr = float(s["initial_lr"])

    return VentricleSynthTrainer


def _device(name: str):
    import torch

    from VentricleSynthLib.segmentation.segmenter import resolve_device

    device = resolve_device(name)
    return torch.device("cuda", 0) if device.type == "cuda" else device


def train(dataset_id: int, seg: dict, resume: bool = False, progress=print) -> tuple[Path, float]:
    """Train (or continue) fold `seg.fold`; returns the trainer's output folder base and training seconds."""
    import torch
    from nnunetv2.run.run_training import maybe_load_checkpoint, run_training
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    name = convert_id_to_dataset_name(dataset_id)
    pre = Path(os.environ["nnUNet_preprocessed"]) / name
    cls = trainer_class(seg["trainer"])
    fold = seg["fold"]
    base = Path(os.environ["nnUNet_results"]) / name / f"{cls.__name__}__{PLANS}__{CONFIGURATION}"
    fold_dir = base / f"fold_{fold}"
    existing = sorted(fold_dir.glob("checkpoint_*.pth")) if fold_dir.is_dir() else []
    if existing and not resume:
        raise TrainingError(f"{fold_dir} already holds nnU-Net checkpoints ({', '.join(p.name for p in existing)}): "
                            f"pass --resume to continue, or use another --work folder")
    start = time.time()
    final = fold_dir / "checkpoint_final.pth"
    if resume and final.is_file():
        done, wanted = trained_epochs(final), int(seg["trainer"]["epochs"])
        if done >= wanted:
            progress(f"segmenter: {name} already trained ({final}, {done} epochs)")
            return base, 0.0
        progress(f"segmenter: {name} trained {done} epochs; continuing to {wanted} "
                 f"(nnU-Net's poly learning rate picks up at epoch {done} of {wanted})")
        latest = fold_dir / "checkpoint_latest.pth"  # an interrupted extension: nnU-Net itself would reload final
        continued_from = latest if latest.is_file() and trained_epochs(latest) > done else final
        extensions = schedule_extensions(fold_dir)
        if {"from_epoch": done, "to_epoch": wanted} not in extensions:
            text = json.dumps(extensions + [{"from_epoch": done, "to_epoch": wanted}])
            atomic_write_bytes(fold_dir / EXTENSIONS_FILE, lambda tmp: Path(tmp).write_text(text))
    else:
        continued_from = None
    device = _device(seg["device"])
    num_gpus = int(seg.get("num_gpus", 1))
    if num_gpus > 1:
        if device.type != "cuda" or cls.__name__ != "nnUNetTrainerNoMirroring":
            raise ConfigError("segmenter.num_gpus > 1 needs CUDA and nnU-Net's default schedule")
        run_training(str(dataset_id), CONFIGURATION, fold, cls.__name__, PLANS, num_gpus=num_gpus,
                     continue_training=resume, device=device)
        return base, time.time() - start
    plans = json.loads((pre / f"{PLANS}.json").read_text())
    plans["continue_training"] = bool(resume)
    dataset_json = json.loads((pre / "dataset.json").read_text())
    trainer = cls(plans=plans, configuration=CONFIGURATION, fold=fold, dataset_json=dataset_json, device=device)
    if continued_from is not None:
        trainer.load_checkpoint(str(continued_from))
    else:
        maybe_load_checkpoint(trainer, resume, False)
    if torch.cuda.is_available() and device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    trainer.run_training()
    if seg.get("final_validation"):
        trainer.perform_actual_validation()
    return base, time.time() - start


def schedule_extensions(fold_dir: Path) -> list[dict]:
    """The --resume extensions of a finished training ([{"from_epoch", "to_epoch"}], oldest first), for the card."""
    history = Path(fold_dir) / EXTENSIONS_FILE
    return json.loads(history.read_text()) if history.is_file() else []


def trained_epochs(checkpoint: Path) -> int:
    """Epochs a finished nnU-Net checkpoint has trained (a larger `epochs` in the config extends it on --resume)."""
    import torch

    return int(torch.load(checkpoint, map_location="cpu", weights_only=False)["current_epoch"])


def training_seconds(checkpoint: Path) -> float:
    """Seconds of training over all sessions, from nnU-Net's own per-epoch timestamps in the checkpoint."""
    import torch

    if not Path(checkpoint).is_file():
        return 0.0
    log = torch.load(checkpoint, map_location="cpu", weights_only=False).get("logging", {})
    starts, ends = log.get("epoch_start_timestamps", []), log.get("epoch_end_timestamps", [])
    return float(sum(e - s for s, e in zip(starts, ends)))


# --- the bundle -----------------------------------------------------------------------------------

def export_bundle(trained: Path, out: Path, seg: dict, profile: Profile, provenance: dict,
                  decision: dict | None = None) -> Path:
    """nnU-Net results layout + config.json + manifest.json, assembled in a staging folder and swapped in."""
    import torch

    fold = seg["fold"]
    checkpoint_file = trained / f"fold_{fold}" / "checkpoint_final.pth"
    if not checkpoint_file.is_file():
        raise TrainingError(f"{checkpoint_file} is missing: training did not finish (run the stage with --resume)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        dataset = trained.parent.name
        rel = Path("nnUNet_results") / dataset / f"{EXPORT_TRAINER}__{PLANS}__{CONFIGURATION}"
        model = staging / rel
        (model / f"fold_{fold}").mkdir(parents=True)
        for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
            shutil.copyfile(trained / name, model / name)
        full = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
        init_args = {k: full["init_args"][k] for k in ("plans", "configuration", "fold", "dataset_json")}
        slim = {
            # float16 on disk halves the bundle; load_state_dict copies them back into the float32 network
            "network_weights": _half_state(full["network_weights"]),
            "init_args": init_args,
            "trainer_name": EXPORT_TRAINER,
            "inference_allowed_mirroring_axes": tuple(int(a) for a in full["inference_allowed_mirroring_axes"])
            if full.get("inference_allowed_mirroring_axes") is not None else None,
            "current_epoch": int(full["current_epoch"]),
        }
        torch.save(slim, model / f"fold_{fold}" / "checkpoint_final.pth")
        n_params = _parameter_count(slim["network_weights"])
        import nnunetv2  # noqa: F401  (version for provenance)
        from importlib.metadata import version

        config = {
            "name": "segmenter",
            "version": BUNDLE_VERSION,
            "kind": "nnunetv2",
            "profile": {"name": profile.name, "spacing": list(profile.spacing), "shape": list(profile.shape),
                        "percentiles": list(profile.percentiles)},
            "labels": {str(i): int(lab) for i, lab in enumerate(SEGMENTER_LABELS)},
            "label_names": {str(i): ("background" if lab == 0 else label_name(lab))
                            for i, lab in enumerate(SEGMENTER_LABELS)},
            "nnunet": {"model_folder": str(rel), "folds": [fold], "checkpoint": "checkpoint_final.pth",
                       "configuration": CONFIGURATION, "plans": PLANS,
                       "trainer_trained_with": trained.name.split("__")[0],
                       "nnunetv2_version": version("nnunetv2"), "parameters": n_params, "plan": seg["plan"],
                       "targets": seg["targets"]},
            "training": {**provenance, "schedule": seg["trainer"], "git_commit": git_commit()},
        }
        if decision:
            config["decision"] = decision
        (staging / bundles.CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        (staging / "card.md").write_text(card_text(config, provenance.get("metrics", {})))
        bundles.write_manifest(staging)
        bundles.swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _storage_key(tensor) -> tuple:
    """What makes two state-dict entries the same tensor: storage, offset and shape."""
    return tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape)


def _half_state(state: dict) -> dict:
    """float16 copies of a state dict's tensors that keep its sharing.

    nnU-Net's state dict names each encoder weight four times (`encoder.` and `decoder.encoder.`, each as
    `.conv` and `.all_modules.0`), all one storage; converting entry by entry would store every copy.
    """
    out, seen = {}, {}
    for key, value in state.items():
        shared = _storage_key(value)
        if shared not in seen:
            v = value.detach().cpu().contiguous()
            seen[shared] = v.half() if v.is_floating_point() else v
        out[key] = seen[shared]
    return out


def _parameter_count(state: dict) -> int:
    """Distinct parameters in a state dict whose entries may share storage (see `_half_state`)."""
    return int(sum({_storage_key(v): v.numel() for v in state.values()}.values()))


def card_text(config: dict, metrics: dict) -> str:
    t, nn, p = config["training"], config["nnunet"], config["profile"]
    lines = [
        "# VentricleSynth ventricle segmenter (nnU-Net v2)", "",
        f"- profile **{p['name']}**: {' x '.join(f'{s:g}' for s in p['spacing'])} mm, "
        f"{' x '.join(str(s) for s in p['shape'])} voxels; input intensities 0.5-99.5 percentile -> [0, 1]",
        f"- labels: {', '.join(f'{i}={n}' for i, n in config['label_names'].items())} "
        f"(FreeSurfer {', '.join(str(v) for v in config['labels'].values())})",
        f"- nnU-Net {nn['nnunetv2_version']}, {nn['configuration']} ({nn['plan']} plan), "
        f"{nn['parameters'] / 1e6:.2f} M parameters, trained with {nn['trainer_trained_with']}: "
        f"{t['schedule']['epochs']} epochs x {t['schedule']['iterations_per_epoch']} iterations"
        + "".join(f" (trained {e['from_epoch']} epochs, then continued to {e['to_epoch']} with --resume: the poly "
                  f"learning rate picked up at epoch {e['from_epoch']} of {e['to_epoch']})"
                  for e in t.get("schedule_extensions") or []),
        "- outputs: " + ("nnU-Net regions (sigmoid), trained as the ventricular system plus one region per "
                         "label; at inference a voxel is ventricle where its most likely label region exceeds "
                         "the decision threshold (next line) and is named by it"
                         if nn.get("targets") == "union+labels" else
                         "softmax over background and the six labels (nnU-Net's default)"),
        f"- decision: a voxel is ventricle where the union probability exceeds "
        f"{(config.get('decision') or {}).get('union_threshold', 0.5):g}"
        + (f" (chosen on the {config['decision']['chosen_on']}; volume MAE by threshold: "
           + ", ".join(f"{k}: {v:.2f} mL" for k, v in config["decision"]["volume_mae_ml"].items()) + ")"
           if "volume_mae_ml" in (config.get("decision") or {}) else ""),
        f"- training data: {t.get('cases', '?')} cases ({t.get('sources', '')}); "
        f"{t.get('seconds', 0):.0f} s of training on {t.get('device', '?')}",
        f"- git commit: {t.get('git_commit') or 'unknown'}", "",
        "Use: `python -m VentricleSynthLib segment T1.nii.gz --out seg.nii.gz` or "
        "`VentricleSynthLib.segmentation.segmenter.segment_file`. The folder under nnUNet_results/ is a standard "
        "nnU-Net v2 model folder (trainer nnUNetTrainer: training only switched mirroring off and changed "
        "the schedule).", "",
    ]
    if metrics:
        config_name = Path(str(t.get("config") or "cpu")).stem
        lines += ["## Measured", "",
                  f"By the stage itself right after training (`python training/train.py segmenter --config "
                  f"{config_name} --work WORK`), on profile-grid cases the network never trained on: `val` is the "
                  "cohort's validation split (nnU-Net's fold-0 validation cases), `enlarged hold-out` the enlarged "
                  "cohort (60-150 mL, its own data seed). Dice and volumes use the union of the six labels; error "
                  "slope = slope of (predicted - reference) mL against the reference volume.", "",
                  "| set | n | Dice (union) | volume MAE (mL) | bias (mL) | HD95 (mm) | error slope |",
                  "|---|---|---|---|---|---|---|"]
        for name, s in metrics.items():
            lines.append(f"| {name} | {s['n']} | {_pm(s, 'dice', 3)} | {_pm(s, 'abs_dv_ml')} | "
                         f"{_num(s.get('signed_dv_ml_mean'), '+.2f')} | {_pm(s, 'hd95_mm')} | "
                         f"{_num(s.get('error_slope'), '+.3f')} |")
        lines.append("")
    return "\n".join(lines)


def _num(value, fmt: str) -> str:
    return "n/a" if value is None or not np.isfinite(value) else format(value, fmt)


def _pm(s: dict, key: str, digits: int = 2) -> str:
    mean, sd = s.get(f"{key}_mean"), s.get(f"{key}_sd")
    text = _num(mean, f".{digits}f")
    return text if sd is None or text == "n/a" or not np.isfinite(sd) else f"{text} ± {sd:.{digits}f}"


THRESHOLDS = (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)


def fixed_decision(seg: dict) -> dict | None:
    """The bundle's `decision` for a threshold set in the config; None for 0.5 (the default) and for "val"
    without validation cases to choose on (the experiment's arms)."""
    t = seg["union_threshold"]
    return None if t == "val" or float(t) == 0.5 else {"union_threshold": float(t), "chosen_on": "the config"}


def choose_threshold(bundle: Path, cases: list[Case], device: str = "cpu") -> dict:
    """The union probability threshold with the smallest volume MAE on `cases` (the validation split).

    Each case goes the way `segment` takes it (to the profile grid, predicted, back onto its own grid), once;
    only the threshold varies. Ties go to the threshold nearest 0.5."""
    from VentricleSynthLib.segmentation.segmenter import Segmenter

    segmenter = Segmenter(bundle, device=device)
    errors: dict[float, list[float]] = {t: [] for t in THRESHOLDS}
    for case in cases:
        image, label = case.load()
        pre = to_profile(segmenter.profile, image=image)
        probabilities = segmenter.predict_probabilities(pre.image)
        truth_ml = ventricle_volume_ml(label.array, image.affine)
        for t in THRESHOLDS:
            found = segmenter.to_input(probabilities, pre.grid, pre.source, t)
            errors[t].append(ventricle_volume_ml(found, image.affine) - truth_ml)
    mae = {t: float(np.mean(np.abs(e))) for t, e in errors.items()}
    best = min(THRESHOLDS, key=lambda t: (round(mae[t], 3), abs(t - 0.5)))
    return {"union_threshold": best, "chosen_on": f"validation split ({len(cases)} cases), smallest volume MAE",
            "volume_mae_ml": {f"{t:g}": round(mae[t], 3) for t in THRESHOLDS},
            "volume_bias_ml": {f"{t:g}": round(float(np.mean(errors[t])), 3) for t in THRESHOLDS}}


def measure(bundle: Path, sets: dict[str, list[Case]], device: str = "cpu") -> dict:
    """Dice/volume metrics of the exported bundle on profile-grid cases (predicted on their own grid)."""
    from VentricleSynthLib.segmentation.segmenter import Segmenter

    from training.evaluation.scoring import compare, summarize

    segmenter = Segmenter(bundle, device=device)
    out = {}
    for name, cases in sets.items():
        rows = []
        for case in cases:
            image, label = case.load()
            pred, _ = segmenter.segment(image)
            rows.append(compare(pred, label, case.origin))
        if rows:
            s = summarize(rows)
            out[name] = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in s.items()}
    return out


# --- the stage --------------------------------------------------------------------------------------

def build(config: dict, work: Path, cases: list[Case], name: str, out: Path, seg: dict, resume: bool = False,
          measure_sets: dict[str, list[Case]] | None = None, progress=print) -> dict:
    """Export -> plan/preprocess -> train -> bundle, for any list of cases (the stage and the experiment's arms)."""
    nnunet_env.setup(work)
    profile: Profile = config["profile_obj"]
    dataset_id = int(seg["dataset_id"])
    ds_name = dataset_name(dataset_id, name)
    _check_dataset_id(dataset_id, ds_name)
    timings = {}
    t0 = time.time()
    export_raw(cases, Path(os.environ["nnUNet_raw"]), ds_name, profile, progress, seg["targets"])
    timings["export_s"] = round(time.time() - t0, 1)
    t0 = time.time()
    plan_and_preprocess(dataset_id, cases, seg, profile, progress)
    timings["plan_preprocess_s"] = round(time.time() - t0, 1)
    trained, _ = train(dataset_id, seg, resume, progress)
    seconds = training_seconds(trained / f"fold_{seg['fold']}" / "checkpoint_final.pth")
    timings["train_s"] = round(seconds, 1)
    provenance = {
        "schedule_extensions": schedule_extensions(trained / f"fold_{seg['fold']}"),
        "cases": len(cases),
        "sources": ", ".join(f"{k}: {v}" for k, v in _count_origins(cases).items()),
        "dataset": ds_name,
        "seconds": round(seconds, 1),
        "device": str(_device(seg["device"])),
        "config": config.get("path"),
    }
    t0 = time.time()
    decision = fixed_decision(seg)
    bundle = export_bundle(trained, out, seg, profile, provenance, decision)
    if seg["union_threshold"] == "val" and (measure_sets or {}).get("val"):  # needs the exported bundle to predict
        decision = choose_threshold(bundle, measure_sets["val"], seg["device"])
        bundle = export_bundle(trained, out, seg, profile, provenance, decision)
    if measure_sets:
        provenance["metrics"] = measure(bundle, measure_sets, seg["device"])
        bundle = export_bundle(trained, out, seg, profile, provenance, decision)
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


def run(config: dict, work: Path, resume: bool = False, synthetic: Path | None = None, progress=print) -> dict:
    """Stage `segmenter`: the cohort's natural cases (+ synthetic pairs) -> WORK/bundles/segmenter."""
    seg = seg_config(config)
    work = Path(work)
    cases = []
    for ds in seg["datasets"]:
        cases += cohort_cases(work / "data", ds)
    if synthetic is not None:
        cases += pair_cases(synthetic)
    measure_sets = {"val": [c for c in cases if c.split == "val"]}
    holdout = work / "data" / "enlarged"
    if (holdout / "cases.csv").is_file():
        measure_sets["enlarged hold-out"] = cohort_cases(work / "data", "enlarged", splits=("holdout",))
    return build(config, work, cases, "Ventricles", work / "bundles" / "segmenter", seg, resume,
                 measure_sets=measure_sets, progress=progress)
