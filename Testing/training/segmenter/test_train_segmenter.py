"""The `segmenter` stage at tiny scale (training/segmenter/): the exported bundle's layout, config, card and
manifest, resume (and resume with more epochs), the trainer class and config checks, and the decision threshold
chosen on the validation split.

The session fixture `tiny_segmenter` (conftest) builds a reduced tiny cohort and trains a bundle for a handful
of iterations with a near-zero learning rate: these tests check the plumbing, not segmentation quality (the
library's own tests of the trained bundle: Testing/segmentation/test_segmenter.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from testing_helpers import run_train

from training.config import Config
from training.stage_configs import SegmenterConfig
from VentricleSynthLib.bundles import format as bundles
from VentricleSynthLib.errors import VentricleSynthError
from VentricleSynthLib.labels import VENTRICLE_LABELS
from VentricleSynthLib.segmentation.decision import SEGMENTER_LABELS, UNION_REGION
from VentricleSynthLib.segmentation.predictor import Segmenter
from VentricleSynthLib.volumes import voxel_volume_ml

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.slow


def _segmenter_config(section: dict | None = None) -> SegmenterConfig:
    """The `segmenter` section of a config file `x` (none: every default)."""
    return SegmenterConfig.from_config(Config("x", None, {} if section is None else {"segmenter": section}))


def test_bundle_layout_config_and_manifest(tiny_segmenter):
    folder = tiny_segmenter["bundle"]
    manifest = bundles.verify(folder)
    config = bundles.read_config(folder)
    assert config["profile"]["name"] == "tiny" and config["profile"]["shape"] == [40, 48, 40]
    assert {int(k): v for k, v in config["labels"].items()} == dict(enumerate(SEGMENTER_LABELS))
    model = folder / config["nnunet"]["model_folder"]
    assert model.name == "nnUNetTrainer__VentricleSynthPlans__3d_fullres"
    for name in ("plans.json", "dataset.json", "fold_0/checkpoint_final.pth"):
        assert (model / name).is_file() and str((model / name).relative_to(folder)) in manifest["files"]
    # tiny.yaml trains regions: the ventricular system first, then each label (nnU-Net's region format)
    assert config["nnunet"]["targets"] == "union+labels"
    dataset = json.loads((model / "dataset.json").read_text())
    assert dataset["labels"][UNION_REGION] == [1, 2, 3, 4, 5, 6] and dataset["regions_class_order"][0] == 1
    assert Segmenter(folder, device="cpu").union_head
    plans = json.loads((model / "plans.json").read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [40, 48, 40]
    assert arch["features_per_stage"] == [8, 16, 32, 32] and arch["n_conv_per_stage"] == [1, 1, 1, 1]
    import torch

    checkpoint = torch.load(model / "fold_0" / "checkpoint_final.pth", weights_only=True)
    assert checkpoint["trainer_name"] == "nnUNetTrainer" and checkpoint["current_epoch"] == 2
    assert "optimizer_state" not in checkpoint
    assert checkpoint["inference_allowed_mirroring_axes"] is None  # trained without flips (lateralised labels)
    weights = checkpoint["network_weights"]
    assert all(v.dtype in (torch.float16, torch.int64) for v in weights.values())
    # shared entries stay shared on disk: the file holds each parameter once, in float16
    size = (model / "fold_0" / "checkpoint_final.pth").stat().st_size
    assert size < 2 * config["nnunet"]["parameters"] * 1.3 + 200_000
    assert config["nnunet"]["trainer_trained_with"] == "VentricleSynthTrainer"
    card = (folder / "card.md").read_text()
    assert "## Measured" in card and "enlarged hold-out" in card


def test_rerun_needs_resume_and_resume_reexports(tiny_segmenter):
    done = run_train("segmenter", "--config", tiny_segmenter["config"], "--work", tiny_segmenter["work"])
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--resume" in lines[0]
    done = run_train("segmenter", "--config", tiny_segmenter["config"], "--work", tiny_segmenter["work"], "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    bundles.verify(tiny_segmenter["bundle"])
    assert bundles.model_id(tiny_segmenter["bundle"])["version"] == "0.1.0"


def test_resume_with_more_epochs_continues_the_finished_training(tiny_segmenter, tmp_path):
    """A larger `epochs` plus --resume trains on from checkpoint_final (nnU-Net's own checkpoint), records the
    extension once and says so on the card; the same command again trains nothing more."""
    import torch

    from training.segmenter.trainer import EXTENSIONS_FILE, trained_epochs

    work = tmp_path / "work"
    shutil.copytree(tiny_segmenter["work"], work, ignore=shutil.ignore_patterns("bundles"))
    config = yaml.safe_load(Path(tiny_segmenter["config"]).read_text())
    config["segmenter"]["trainer"]["epochs"] += 1
    config_file = work / "longer.yaml"
    config_file.write_text(yaml.safe_dump(config))
    fold = next((work / "nnunet" / "results").glob("Dataset*/*/fold_0"))
    before = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    for _ in range(2):
        done = run_train("segmenter", "--config", config_file, "--work", work, "--resume")
        assert done.returncode == 0, done.stderr[-3000:]
        assert trained_epochs(fold / "checkpoint_final.pth") == before["current_epoch"] + 1
        assert json.loads((fold / EXTENSIONS_FILE).read_text()) == [
            {"from_epoch": before["current_epoch"], "to_epoch": before["current_epoch"] + 1}]
    after = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert len(after["logging"]["epoch_end_timestamps"]) == before["current_epoch"] + 1
    assert any(not torch.equal(after["network_weights"][k], v) for k, v in before["network_weights"].items())
    card = (work / "bundles" / "segmenter" / "card.md").read_text()
    assert f"then continued to {before['current_epoch'] + 1} with --resume" in card


def test_time_boxed_training_anneals_its_learning_rate_and_ends_within_its_seconds(tiny_segmenter, tmp_path):
    """`max_seconds`: the learning rate decays with the clock (nnU-Net's poly shape), the training ends with
    nnU-Net's own checkpoint_final when another epoch would not fit, well before the `epochs` cap, and the bundle
    is exported; such a run refuses --resume (its clock would restart)."""
    import torch

    from training.segmenter.trainer import trained_epochs

    work = tmp_path / "work"
    shutil.copytree(tiny_segmenter["work"], work, ignore=shutil.ignore_patterns("bundles", "results"))
    config = yaml.safe_load(Path(tiny_segmenter["config"]).read_text())
    cap, seconds = 1000, 8
    config["segmenter"]["trainer"].update(epochs=cap, max_seconds=seconds, initial_lr=0.01)
    config_file = work / "boxed.yaml"
    config_file.write_text(yaml.safe_dump(config))
    done = run_train("segmenter", "--config", config_file, "--work", work)
    assert done.returncode == 0, done.stderr[-3000:]
    final = next((work / "nnunet" / "results").glob("Dataset*/*/fold_0/checkpoint_final.pth"))
    epochs = trained_epochs(final)
    log = torch.load(final, map_location="cpu", weights_only=False)["logging"]
    starts, ends = log["epoch_start_timestamps"], log["epoch_end_timestamps"]
    assert 1 <= epochs < cap and len(ends) == epochs
    assert ends[-1] - starts[0] <= seconds + (ends[-1] - starts[0]) / epochs  # at most one epoch's overshoot
    lrs = log["lrs"]
    assert lrs[0] == pytest.approx(0.01, rel=0.05) and all(a > b for a, b in zip(lrs, lrs[1:]))
    bundles.verify(work / "bundles" / "segmenter")
    again = run_train("segmenter", "--config", config_file, "--work", work, "--resume")
    lines = again.stderr.strip().splitlines()
    assert again.returncode == 2 and len(lines) == 1 and "max_seconds" in lines[0]


def test_trainer_class_follows_the_config():
    from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import (
        nnUNetTrainerNoMirroring,
    )

    from training.segmenter.trainer import trainer_class

    assert trainer_class({"epochs": 1000, "iterations_per_epoch": 250, "val_iterations_per_epoch": 50}) \
        is nnUNetTrainerNoMirroring
    cls = trainer_class({"epochs": 3, "iterations_per_epoch": 7, "val_iterations_per_epoch": 2, "checkpoint_every": 1})
    assert issubclass(cls, nnUNetTrainerNoMirroring) and cls.__name__ == "VentricleSynthTrainer"
    assert cls.SCHEDULE["iterations_per_epoch"] == 7
    with pytest.raises(VentricleSynthError):
        _segmenter_config({"trainer": {"epochs": 0}})
    with pytest.raises(VentricleSynthError):
        _segmenter_config({"plan": "huge"})
    with pytest.raises(VentricleSynthError, match="targets"):
        _segmenter_config({"targets": "union"})
    assert _segmenter_config().targets == "labels"  # nnU-Net's default unless a config asks for regions
    from training.segmenter.threshold import fixed_decision

    assert fixed_decision(_segmenter_config({"union_threshold": "val"})) is None  # no val: 0.5
    assert fixed_decision(_segmenter_config()) is None
    assert fixed_decision(_segmenter_config({"union_threshold": 0.4}))["union_threshold"] == 0.4
    for bad in (0, 1.0, "median", True):
        with pytest.raises(VentricleSynthError, match="union_threshold"):
            _segmenter_config({"union_threshold": bad})


def test_threshold_chosen_on_val_is_the_one_with_the_smallest_volume_error(tiny_segmenter, tmp_path):
    """choose_threshold's MAE table is what segmenting at each threshold gives; the bundle's decision is used."""
    from training.segmenter.raw_export import dataset_cases
    from training.segmenter.threshold import THRESHOLDS, choose_threshold

    cases = dataset_cases(tiny_segmenter["work"] / "data", "natural", splits=("val",))
    decision = choose_threshold(tiny_segmenter["bundle"], cases, "cpu")
    mae = {float(k): v for k, v in decision["volume_mae_ml"].items()}
    assert set(mae) == set(THRESHOLDS) and mae[decision["union_threshold"]] == min(mae.values())
    copy = tmp_path / "segmenter"
    shutil.copytree(tiny_segmenter["bundle"], copy)
    config = json.loads((copy / "config.json").read_text())
    pairs = [case.load() for case in cases]
    for t in (0.2, 0.5):
        (copy / "config.json").write_text(json.dumps({**config, "decision": {"union_threshold": t}}))
        bundles.write_manifest(copy)
        segmenter = Segmenter(copy, device="cpu")
        assert segmenter.threshold == t
        errors = [segmenter.segment(image)[1]["ventricle_ml"]
                  - np.isin(label.array, VENTRICLE_LABELS).sum() * voxel_volume_ml(label.affine)
                  for image, label in pairs]
        assert float(np.mean(np.abs(errors))) == pytest.approx(mae[t], abs=2e-3)
    (copy / "config.json").write_text(json.dumps({**config, "decision": {"union_threshold": 1.5}}))
    bundles.write_manifest(copy)
    with pytest.raises(bundles.BundleError, match="union_threshold"):
        Segmenter(copy, device="cpu")


