"""A killed `train.py data --source` import is rerun to completion (its partial folder is recognised as its own,
the hidden partial files of its interrupted writes removed); a folder holding someone else's data is still
refused. And the import refuses what the segmenter refuses as content (CT, a label map given as an image)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from testing_helpers import labelled_heads_folder

from training.data.user_import import MARKER, import_dataset
from VentricleSynthLib.imaging.profile import Profile
from VentricleSynthLib.io import atomic

REPO = Path(__file__).resolve().parents[3]
SHAPE = (30, 36, 30)
PATTERNS = ("{case}/t1.nii.gz", "{case}/seg.nii.gz")
SMALL = Profile("small", (4.0, 4.0, 4.0), (16, 20, 16))


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -(np.asarray(SHAPE) - 1)
    nib.save(nib.Nifti1Image(array, affine), str(path))


def _import_cmd(src: Path, work: Path) -> list[str]:
    return [sys.executable, str(REPO / "training" / "train.py"), "data", "--config", "tiny", "--work", str(work),
            "--source", str(src), "--images", PATTERNS[0], "--labels", PATTERNS[1]]


def test_killed_import_is_rerun_to_completion(tmp_path):
    src = labelled_heads_folder(tmp_path / "src", cases=40)
    work = tmp_path / "work"
    out = work / "data" / "user"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_import_cmd(src, work), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if (out / "labelsTr").is_dir() and any((out / "labelsTr").iterdir()):
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the import ended before it could be killed"
    assert not (out / "dataset.json").exists() and (out / MARKER).is_file()
    dead = subprocess.Popen(["true"])
    dead.wait()  # what a kill during a write leaves: the hidden temporary of an atomic write
    partial = out / "imagesTr" / f".case039_0000.nii.gz.tmp-{atomic._host()}-{dead.pid}-k1ll3d_x.nii.gz"
    partial.write_bytes(b"half a file")

    done = subprocess.run(_import_cmd(src, work), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["numTraining"] == 40 and not (out / MARKER).exists()
    assert len(list((out / "imagesTr").iterdir())) == 40 and len(list((out / "labelsTr").iterdir())) == 40
    assert not [p for p in out.rglob(".*")], "a hidden partial file outlived the rerun"


def test_interrupted_import_of_other_cases_is_cleaned_up_and_foreign_data_refused(tmp_path):
    """The marker lists what the interrupted run meant to write: cases the rerun does not import go."""
    src = labelled_heads_folder(tmp_path / "src", cases=2)
    out = tmp_path / "out"
    (out / "imagesTr").mkdir(parents=True)
    (out / "labelsTr").mkdir()
    stray = out / "imagesTr" / "gone_0000.nii.gz"
    stray.write_bytes(b"x")
    (out / MARKER).write_text(json.dumps({"source": "elsewhere", "cases": ["gone"]}))
    report = import_dataset(src, out, SMALL, *PATTERNS)
    assert report.imported == ["case000", "case001"] and not stray.exists() and not (out / MARKER).exists()

    foreign = tmp_path / "w" / "data" / "user" / "imagesTr"  # someone else's data: no marker, no report
    foreign.mkdir(parents=True)
    (foreign / "theirs_0000.nii.gz").write_bytes(b"theirs")
    done = subprocess.run(_import_cmd(src, tmp_path / "w"), cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2 and "not written by a data import" in done.stderr, done.stderr
    assert [p.name for p in foreign.parent.rglob("*")] == ["imagesTr", "theirs_0000.nii.gz"]


def test_ct_and_label_maps_given_as_images_are_skipped_with_the_reason(tmp_path):
    src = labelled_heads_folder(tmp_path / "src", cases=4)
    t1 = np.asarray(nib.load(str(src / "case000" / "t1.nii.gz")).dataobj)
    _save(src / "case000" / "t1.nii.gz", (t1 * 10 - 1000).astype(np.float32))  # Hounsfield-like
    _save(src / "case001" / "t1.nii.gz", np.asarray(nib.load(str(src / "case001" / "seg.nii.gz")).dataobj))
    # thick slices and a small field of view are fine for training pairs (they are resampled to the profile)
    report = import_dataset(src, tmp_path / "out", SMALL, *PATTERNS)
    assert report.imported == ["case002", "case003"]
    assert "CT" in report.skipped["case000"] and "label map" in report.skipped["case001"]
    assert "CT" in (tmp_path / "out" / "import_report.md").read_text()
