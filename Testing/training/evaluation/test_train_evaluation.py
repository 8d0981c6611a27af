"""Evaluation (training/evaluation/): metrics against hand-computed cases, empty masks, spacings,
label conventions, mismatched grids, the report and the `train.py evaluate` stage."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from training.evaluation import scoring as ev
from training.evaluation.report import evaluate_sets, summarize
from VentricleSynthLib.errors import DatasetError, GeometryMismatchError, LabelSchemaError
from VentricleSynthLib.io import atomic
from VentricleSynthLib.io.nifti import Volume

REPO = Path(__file__).resolve().parents[3]
SHAPE = (20, 20, 20)


def _cube(lo, size, shape=SHAPE, label=4) -> np.ndarray:
    a = np.zeros(shape, np.int16)
    a[lo[0]:lo[0] + size, lo[1]:lo[1] + size, lo[2]:lo[2] + size] = label
    return a


def _save(path: Path, array, spacing=(1.0, 1.0, 1.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array, np.int16), np.diag([*spacing, 1.0])), str(path))
    return path


# --- Dice / IoU / volumes --------------------------------------------------------------------------

def test_compare_volumes_in_ml_with_anisotropic_spacing():
    ref = _cube((2, 2, 2), 10)  # 1000 voxels
    pred = _cube((2, 2, 2), 10)
    pred[2:12, 2:12, 11] = 0  # 900 voxels
    affine = np.diag([0.5, 1.0, 2.0, 1.0])  # 1 mm^3 per voxel
    m = ev.compare(Volume(pred, affine), Volume(ref, affine), "c")
    assert m["ref_ml"] == pytest.approx(1.0) and m["pred_ml"] == pytest.approx(0.9)
    assert m["signed_dv_ml"] == pytest.approx(-0.1) and m["abs_dv_ml"] == pytest.approx(0.1)
    assert m["dice"] == pytest.approx(2 * 900 / 1900)
    assert m["iou"] == pytest.approx(0.9)
    affine2 = np.diag([2.0, 2.0, 2.0, 1.0])  # 8 mm^3 per voxel
    m2 = ev.compare(Volume(pred, affine2), Volume(ref, affine2), "c")
    assert m2["ref_ml"] == pytest.approx(8.0) and m2["signed_dv_ml"] == pytest.approx(-0.8)


def test_union_of_the_six_ventricle_labels_only():
    ref = np.zeros(SHAPE, np.int16)
    ref[2:5, 2:5, 2:5] = 4
    ref[10:13, 2:5, 2:5] = 43
    ref[2:5, 10:13, 2:5] = 14
    ref[15:18, 15:18, 15:18] = 2  # white matter: not counted
    pred = ref.copy()
    pred[ref == 43] = 44  # wrong ventricle label: the union still agrees
    pred[ref == 2] = 0
    m = ev.compare(Volume(pred, np.eye(4)), Volume(ref, np.eye(4)))
    assert m["dice"] == 1.0 and m["ref_ml"] == pytest.approx(81 / 1000) and m["hd95_mm"] == 0.0


# --- empty masks ----------------------------------------------------------------------------------

def test_empty_masks_conventions():
    empty = np.zeros(SHAPE, np.int16)
    full = _cube((5, 5, 5), 3)
    both = ev.compare(Volume(empty, np.eye(4)), Volume(empty, np.eye(4)))
    assert (both["dice"], both["iou"], both["hd95_mm"], both["abs_dv_ml"]) == (1.0, 1.0, 0.0, 0.0)
    miss = ev.compare(Volume(empty, np.eye(4)), Volume(full, np.eye(4)))
    assert miss["dice"] == 0.0 and miss["iou"] == 0.0 and math.isinf(miss["hd95_mm"])
    assert miss["signed_dv_ml"] == pytest.approx(-0.027)
    extra = ev.compare(Volume(full, np.eye(4)), Volume(empty, np.eye(4)))
    assert extra["dice"] == 0.0 and extra["signed_dv_ml"] == pytest.approx(0.027)


def test_summary_mean_sd_loa_slope_and_inf_hd95():
    rows = [
        {"case": "a", "ref_ml": 10.0, "pred_ml": 11.0, "abs_dv_ml": 1.0, "signed_dv_ml": 1.0, "dice": 0.8,
         "iou": 0.6, "hd95_mm": 2.0},
        {"case": "b", "ref_ml": 20.0, "pred_ml": 23.0, "abs_dv_ml": 3.0, "signed_dv_ml": 3.0, "dice": 0.9,
         "iou": 0.7, "hd95_mm": 4.0},
        {"case": "c", "ref_ml": 30.0, "pred_ml": 25.0, "abs_dv_ml": 5.0, "signed_dv_ml": -5.0, "dice": 0.0,
         "iou": 0.0, "hd95_mm": math.inf},
    ]
    s = summarize(rows)
    assert s["n"] == 3
    assert s["abs_dv_ml_mean"] == pytest.approx(3.0) and s["abs_dv_ml_sd"] == pytest.approx(2.0)
    assert s["dice_mean"] == pytest.approx(1.7 / 3) and s["dice_sd"] == pytest.approx(np.std([.8, .9, 0], ddof=1))
    assert s["hd95_mm_mean"] == pytest.approx(3.0) and s["hd95_inf"] == 1
    bias, sd = np.mean([1, 3, -5]), np.std([1, 3, -5], ddof=1)
    assert s["signed_dv_ml_mean"] == pytest.approx(bias)
    assert s["loa_low_ml"] == pytest.approx(bias - 1.96 * sd) and s["loa_high_ml"] == pytest.approx(bias + 1.96 * sd)
    assert s["error_slope"] == pytest.approx(np.polyfit([10, 20, 30], [1, 3, -5], 1)[0])
    assert s["rmse_ml"] == pytest.approx(math.sqrt((1 + 9 + 25) / 3))


# --- folders, conventions, grids --------------------------------------------------------------------

def test_refuses_mismatched_grids_with_a_clear_error(tmp_path):
    ref = _cube((5, 5, 5), 4)
    _save(tmp_path / "ref" / "case1.nii.gz", ref, (1.0, 1.0, 1.0))
    _save(tmp_path / "pred" / "case1.nii.gz", ref, (1.0, 1.0, 1.2))  # same shape, other spacing
    with pytest.raises(GeometryMismatchError, match="case1"):
        ev.evaluate_folder(tmp_path / "pred", tmp_path / "ref")
    _save(tmp_path / "pred2" / "case1.nii.gz", np.pad(ref, 1))  # other shape
    with pytest.raises(GeometryMismatchError, match="shape"):
        ev.evaluate_folder(tmp_path / "pred2", tmp_path / "ref")


def test_nnunet_raw_reference_and_suffix_matching(tmp_path):
    ref_root = tmp_path / "raw"
    idx = np.zeros(SHAPE, np.uint8)
    idx[5:8, 5:8, 5:8] = 1  # index 1 = FreeSurfer 4 in this dataset's table
    idx[10:12, 5:8, 5:8] = 2  # index 2 = FreeSurfer 2 (not a ventricle)
    _save(ref_root / "labelsTr" / "case_007.nii.gz", idx)
    (ref_root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1, "b": 2},
                                                       "freesurfer_labels": {"0": 0, "1": 4, "2": 2}}))
    pred = np.zeros(SHAPE, np.int16)
    pred[5:8, 5:8, 5:8] = 43
    _save(tmp_path / "pred" / "case_007_seg.nii.gz", pred)
    rows, missing = ev.evaluate_folder(tmp_path / "pred", ref_root)
    assert missing == [] and len(rows) == 1
    assert rows[0]["case"] == "case_007" and rows[0]["dice"] == 1.0 and rows[0]["ref_ml"] == pytest.approx(0.027)


def test_label_mapping_for_other_conventions(tmp_path):
    ref = _cube((5, 5, 5), 3, label=4)
    _save(tmp_path / "ref" / "x.nii.gz", ref)
    pred = _cube((5, 5, 5), 3, label=92)  # CerebrA left lateral ventricle
    _save(tmp_path / "pred" / "x.nii.gz", pred)
    with pytest.raises(LabelSchemaError):
        ev.evaluate_folder(tmp_path / "pred", tmp_path / "ref")
    rows, _ = ev.evaluate_folder(tmp_path / "pred", tmp_path / "ref", pred_mapping="cerebra")
    assert rows[0]["dice"] == 1.0
    table = tmp_path / "map.csv"
    table.write_text("source,target\n0,0\n92,43\n")
    rows, _ = ev.evaluate_folder(tmp_path / "pred", tmp_path / "ref", pred_mapping=str(table))
    assert rows[0]["dice"] == 1.0


def test_no_matching_cases_is_an_error(tmp_path):
    _save(tmp_path / "ref" / "a.nii.gz", _cube((5, 5, 5), 3))
    _save(tmp_path / "pred" / "b.nii.gz", _cube((5, 5, 5), 3))
    with pytest.raises(DatasetError, match="matches"):
        ev.evaluate_folder(tmp_path / "pred", tmp_path / "ref")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no label maps"):
        ev.discover(tmp_path / "empty")


def test_parse_pred_specs():
    sets = ev.parse_pred_specs(["real=/x/a", "/y/b"], ["cerebra"])
    assert [(s.name, str(s.folder), s.mapping) for s in sets] == [("real", "/x/a", "cerebra"), ("b", "/y/b", "cerebra")]
    with pytest.raises(DatasetError):
        ev.parse_pred_specs(["/x/a", "/y/a"])
    with pytest.raises(DatasetError):
        ev.parse_pred_specs(["a=/x", "b=/y", "c=/z"], ["fs", "fs"])


def _two_sets(tmp_path):
    rng = np.random.default_rng(0)
    truth = {}
    for i in range(5):
        ref = _cube((3, 3, 3), 4 + i)
        _save(tmp_path / "ref" / f"c{i}.nii.gz", ref, (2.0, 2.0, 2.0))
        good = ref.copy()
        bad = _cube((3, 3, 3), 3 + i)
        _save(tmp_path / "good" / f"c{i}.nii.gz", good, (2.0, 2.0, 2.0))
        _save(tmp_path / "bad" / f"c{i}.nii.gz", bad, (2.0, 2.0, 2.0))
        truth[f"c{i}"] = ((4 + i) ** 3 * 0.008, (3 + i) ** 3 * 0.008)
    del rng
    return truth


def test_report_compares_sets_side_by_side(tmp_path):
    truth = _two_sets(tmp_path)
    summaries = evaluate_sets([f"good={tmp_path / 'good'}", f"bad={tmp_path / 'bad'}"], tmp_path / "ref",
                              tmp_path / "out")
    assert summaries["good"]["dice_mean"] == 1.0 and summaries["good"]["abs_dv_ml_mean"] == 0.0
    expected_mae = np.mean([r - p for r, p in truth.values()])
    assert summaries["bad"]["abs_dv_ml_mean"] == pytest.approx(expected_mae)
    assert summaries["bad"]["signed_dv_ml_mean"] == pytest.approx(-expected_mae)
    out = tmp_path / "out"
    for name in ("report.md", "summary.json", "summary.csv", "per_case_good.csv", "per_case_bad.csv",
                 "bland_altman.png", "volume_scatter.png", "volumes_by_case.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    assert "| good | 5 | 0.00 ± 0.00 | 1.000 ± 0.000" in report
    assert "| bad | 5 |" in report and "MAE ventricular volume (mL)" in report
    with open(out / "per_case_bad.csv") as fh:
        rows = {r["case"]: r for r in csv.DictReader(fh)}
    assert float(rows["c2"]["ref_ml"]) == pytest.approx(truth["c2"][0])
    assert float(rows["c2"]["pred_ml"]) == pytest.approx(truth["c2"][1])
    summary = json.loads((out / "summary.json").read_text())  # strict JSON: no NaN/Infinity
    assert summary["sets"]["good"]["n"] == 5


def test_evaluate_stage_cli(tmp_path):
    _two_sets(tmp_path)
    # the contract: `evaluate --pred DIR --ref DIR --out DIR` needs no --work
    cmd = [sys.executable, str(REPO / "training" / "train.py"), "evaluate",
           "--pred", f"good={tmp_path / 'good'}", "--pred", str(tmp_path / "bad"), "--ref", str(tmp_path / "ref"),
           "--out", str(tmp_path / "cli_out")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "good" in done.stdout and (tmp_path / "cli_out" / "report.md").is_file()
    _save(tmp_path / "pred_bad_grid" / "c0.nii.gz", _cube((3, 3, 3), 4), (1.0, 1.0, 1.0))
    cmd_bad = cmd[:3] + ["--pred", str(tmp_path / "pred_bad_grid"), "--ref", str(tmp_path / "ref"),
                         "--out", str(tmp_path / "cli_out2")]
    done = subprocess.run(cmd_bad, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "geometry" in lines[0], done.stderr


def test_stages_other_than_evaluate_need_work():
    done = subprocess.run([sys.executable, str(REPO / "training" / "train.py"), "data", "--config", "tiny"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == "error: the stage data needs --work DIR (see --help)"


def test_rerun_removes_the_partial_files_of_a_killed_run(tmp_path):
    _two_sets(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    partial = out / f".report.md.tmp-{atomic._host()}-{dead.pid}-k1ll3d_x.md"  # a kill during atomic_write
    partial.write_text("half a report")
    evaluate_sets([str(tmp_path / "good")], tmp_path / "ref", out)
    assert not partial.exists() and (out / "report.md").is_file()
