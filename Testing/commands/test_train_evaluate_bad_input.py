"""`train.py evaluate` given bad input: exit 2, exactly one `error:` line, no traceback, nothing written, every
input byte-identical; an unusable --out is found before any case is scored."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from testing_helpers import assert_one_error, snapshot

REPO = Path(__file__).resolve().parents[2]


def _label(path: Path, size: int, spacing: float = 1.0) -> None:
    lab = np.zeros((12, 12, 12), np.int16)
    lab[2:2 + size, 3:9, 3:9] = 4
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(lab, np.diag([spacing, spacing, spacing, 1.0])), str(path))


def make_sets(root: Path) -> tuple[Path, Path]:
    """ref/c0..c2.nii.gz and pred/c0..c2.nii.gz (small ventricle blocks)."""
    for k in range(3):
        _label(root / "ref" / f"c{k}.nii.gz", 4 + k)
        _label(root / "pred" / f"c{k}.nii.gz", 5 + k)
    return root / "pred", root / "ref"


def evaluate(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "training" / "train.py"), "evaluate", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


def test_out_under_a_regular_file_is_found_before_scoring(tmp_path):
    pred, ref = make_sets(tmp_path)
    _label(pred / "c1.nii.gz", 5, spacing=2.0)  # scoring would stop at this case's grid: the --out check comes first
    (tmp_path / "blocker").write_text("a file\n")
    before = snapshot(tmp_path)
    done = evaluate("--pred", pred, "--ref", ref, "--out", tmp_path / "blocker" / "out")
    assert_one_error(done.returncode, done.stderr, "--out", "is a file, not a folder")
    assert snapshot(tmp_path) == before


def test_out_that_cannot_be_created(tmp_path):
    pred, ref = make_sets(tmp_path)
    before = snapshot(tmp_path)
    done = evaluate("--pred", pred, "--ref", ref, "--out", "/proc/ventriclesynth-test/out")
    assert_one_error(done.returncode, done.stderr, "cannot write to --out")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("where", ["pred", "ref", "pred/sub", "ref-link"])
def test_out_in_an_input_folder_is_refused(tmp_path, where):
    pred, ref = make_sets(tmp_path)
    (tmp_path / "ref-link").symlink_to(ref, target_is_directory=True)
    (pred / "report.md").write_text("the user's own notes\n")  # a file evaluate would replace
    before = snapshot(tmp_path)
    done = evaluate("--pred", pred, "--ref", ref, "--out", tmp_path / where)
    assert_one_error(done.returncode, done.stderr, "--out", "input folder")
    assert snapshot(tmp_path) == before


def test_bad_prediction_set_writes_nothing(tmp_path):
    pred, ref = make_sets(tmp_path)
    _label(pred / "c1.nii.gz", 5, spacing=2.0)
    before = snapshot(tmp_path)
    done = evaluate("--pred", pred, "--ref", ref, "--out", tmp_path / "new" / "out")
    assert_one_error(done.returncode, done.stderr, "c1")
    assert snapshot(tmp_path) == before


def test_out_file_that_is_an_input_mapping_is_refused(tmp_path):
    pred, ref = make_sets(tmp_path)
    table = tmp_path / "out" / "summary.csv"  # the --pred-mapping CSV has the name of an output file
    table.parent.mkdir()
    table.write_text("source,target\n4,4\n")
    before = snapshot(tmp_path)
    done = evaluate("--pred", pred, "--ref", ref, "--out", tmp_path / "out", "--pred-mapping", table)
    assert_one_error(done.returncode, done.stderr, "summary.csv", "input")
    assert snapshot(tmp_path) == before
