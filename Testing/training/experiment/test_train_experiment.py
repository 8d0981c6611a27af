"""Stage `experiment` end to end at a reduced tiny scale.

No generator bundles are trained here (that is the generators' own tests' job): the synthetic arms use
`--synthetic-from` with pre-made pairs (the cohort's `uniform` cases, which have the uniform volume
spread of the paper's synthetic set). A second test checks that, without generator bundles and without
`--synthetic-from`, the synthetic arms are skipped and the report says why. The segmenters train for a
few iterations only, so their scores are meaningless; the test checks that every arm ran, that the
table and plots exist, and that the table's numbers are the ones computed from the written predictions.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from training.evaluation import scoring as ev
from VentricleSynthLib.io.nifti import load_label_map

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.slow


def _config(path: Path, **experiment) -> Path:
    config = yaml.safe_load((REPO / "training" / "configs" / "tiny.yaml").read_text())
    config["data"].update({"workers": 1, "natural": {"count": 8, "val_fraction": 0.25},
                           "enlarged": {"count": 3, "low_ml": 60, "high_ml": 150},
                           "uniform": {"count": 6, "low_ml": 8, "high_ml": 150}})
    config["experiment"] = {**config.get("experiment", {}), **experiment}
    config["experiment"]["segmenter"] = {"trainer": {"epochs": 1, "iterations_per_epoch": 2,
                                                     "val_iterations_per_epoch": 1, "checkpoint_every": 1}}
    config["experiment"]["registration"] = {"affine_iterations": 30, "demons_iterations": 20}
    path.write_text(yaml.safe_dump(config))
    return path


def _run(*args, timeout=3600):
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("nnUNet_def_n_proc", "1")
    env.setdefault("nnUNet_n_proc_DA", "0")
    return subprocess.run([sys.executable, str(REPO / "training" / "train.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_experiment_end_to_end_with_premade_synthetic_pairs(tmp_path):
    work = tmp_path / "w"
    config = _config(tmp_path / "tiny_reduced.yaml")
    done = _run("data", "--config", config, "--work", work, "--distributions", "uniform")
    assert done.returncode == 0, done.stderr[-3000:]
    done = _run("experiment", "--config", config, "--work", work, "--synthetic-from", work / "data" / "uniform")
    assert done.returncode == 0, done.stderr[-4000:] + done.stdout[-2000:]
    report_dir = work / "experiment" / "report"
    report = (report_dir / "report.md").read_text()
    assert "MAE ventricular volume (mL)" in report and "Dice" in report
    for arm in ("real", "augmented", "synthetic", "atlas"):
        assert f"| {arm} | 3 |" in report, report
        assert (report_dir / f"per_case_{arm}.csv").is_file()
    for png in ("bland_altman.png", "volume_scatter.png", "volumes_by_case.png"):
        assert (report_dir / png).stat().st_size > 1000
    record = json.loads((report_dir / "experiment.json").read_text())
    assert record["arms"]["real"]["cases"] == 8
    assert record["arms"]["synthetic"]["cases"] == 6 and record["arms"]["augmented"]["cases"] == 14
    # the table is computed from the written predictions and the hold-out references
    holdout = work / "data" / "enlarged"
    refs = ev.discover(holdout)
    for arm in ("real", "atlas"):
        with open(report_dir / f"per_case_{arm}.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == 3
        for row in rows:
            pred = load_label_map(work / "experiment" / "predictions" / arm / f"{row['case']}.nii.gz",
                                  allow_empty=True)
            m = ev.compare(pred, refs[row["case"]](), row["case"])
            assert float(row["dice"]) == pytest.approx(m["dice"], abs=1e-4)
            assert float(row["ref_ml"]) == pytest.approx(m["ref_ml"], abs=1e-3)
            assert float(row["pred_ml"]) == pytest.approx(m["pred_ml"], abs=1e-3)
    summary = json.loads((report_dir / "summary.json").read_text())["sets"]
    # the registration baseline really registers: it overlaps the enlarged ventricles
    assert summary["atlas"]["dice_mean"] > 0.2
    atlas = [load_label_map(p, allow_empty=True).array
             for p in sorted((work / "experiment" / "predictions" / "atlas").glob("*.nii.gz"))]
    assert len(atlas) == 3 and not all(np.array_equal(atlas[0], a) for a in atlas[1:])
    # every arm got its own nnU-Net dataset and bundle
    for arm in ("real", "augmented", "synthetic"):
        assert (work / "experiment" / "bundles" / arm / "manifest.json").is_file()
    # a resumed run reuses the trained arms and says that its timings cover only what it redid
    assert "Wall time " in report and "resumed" not in report
    first_train_s = record["timings"]["real_train_s"]
    done = _run("experiment", "--config", config, "--work", work, "--synthetic-from", work / "data" / "uniform",
                "--resume")
    assert done.returncode == 0, done.stderr[-4000:] + done.stdout[-2000:]
    again = (report_dir / "report.md").read_text()
    assert "Wall time of this resumed run" in again
    table = [line for line in report.splitlines() if line.startswith("| ")]
    assert [line for line in again.splitlines() if line.startswith("| ")] == table
    assert json.loads((report_dir / "experiment.json").read_text())["timings"]["real_train_s"] < first_train_s / 3


def test_synthetic_arms_are_skipped_without_generators(tmp_path, monkeypatch):
    from training.config import load_config
    from training.experiment import comparison
    from training.generators.export import find_generators
    from training.stage_configs import ExperimentConfig

    work = tmp_path / "w"
    config = load_config(str(_config(tmp_path / "c.yaml", arms=["augmented", "synthetic"], atlas=False)))
    monkeypatch.setenv("VENTRICLESYNTH_MODELS", str(tmp_path / "no_models"))
    messages = []
    result = comparison.run(config, ExperimentConfig.from_config(config), work, progress=messages.append)
    assert any("skipped" in m and "no generator bundles" in m for m in messages)
    report = Path(result["report"]).read_text()
    assert "| augmented | – | skipped: no generator bundles" in report
    assert "| synthetic | – | skipped: no generator bundles" in report
    root, why = find_generators(config.profile, work, None)
    assert root is None and "mask_generator" in why


def test_synthetic_pairs_come_from_the_cohort_synthesis_with_the_papers_buckets(tmp_path):
    """The experiment's synthetic set is `synthesize` with `buckets` (bundled cpu generators, few steps)."""
    from dataclasses import replace

    from training.experiment.synthetic import generate_synthetic, synthetic_pairs
    from training.segmenter.raw_export import pair_cases
    from training.stage_configs import ExperimentConfig
    from VentricleSynthLib.bundles.store import MASK
    from VentricleSynthLib.generation.generators import MaskGenerator

    models = REPO / "VentricleSynth" / "Resources" / "Models"
    if not (models / MASK).is_dir():
        pytest.skip("no bundled generators")
    exp = ExperimentConfig(synthetic_count=2, synthetic_candidates=1, synthetic_steps=3)
    out = generate_synthetic(models, tmp_path / "synthetic", exp, tmp_path / "work", progress=print)
    cases = pair_cases(out)
    assert len(cases) == 2
    assert len(synthetic_pairs(out, replace(exp, synthetic_count=1), generated=True)) == 1
    assert len(synthetic_pairs(out, replace(exp, synthetic_count=1), generated=False)) == 2
    rows = list(csv.DictReader(open(out / "cases.csv")))
    lo, hi = MaskGenerator(models / MASK, "cpu").trained_range_ml
    width = (hi - lo) / 10
    for k, row in enumerate(rows):  # sample k asks for a volume in bucket k
        assert lo + k * width - 0.1 <= float(row["asked_ml"]) <= lo + (k + 1) * width + 0.1
    record = json.loads((out / "synthesis.json").read_text())
    assert record["distribution"].startswith("buckets:")
    assert record["guidance"] == MaskGenerator(models / MASK, "cpu").settings().guidance  # the bundle's default
    image, label = cases[0].load()
    assert image.shape == label.shape
