"""`segment` given bad input: exit 2, exactly one `error:` line, no traceback, nothing written and every input
byte-identical (sha256 of the whole folder before and after). All of these fail before any model is loaded."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from testing_helpers import snapshot

from VentricleSynthLib import cli


def _t1(folder: Path, name: str = "t1.nii.gz", array=None) -> Path:
    if array is None:
        array = np.random.default_rng(0).normal(100, 20, (40, 40, 40)).astype(np.float32)
    path = folder / name
    nib.save(nib.Nifti1Image(array, np.diag([4.0, 4.0, 4.0, 1.0])), str(path))
    return path


def _symlink_out(d: Path):
    image = _t1(d)
    (d / "link.nii.gz").symlink_to(image)
    return image, d / "link.nii.gz", "is the input"


def _hardlink_out(d: Path):
    image = _t1(d)
    os.link(image, d / "hard.nii.gz")
    return image, d / "hard.nii.gz", "is the input"


def _unreadable(d: Path, monkeypatch):
    image = _t1(d)

    def denied(path, *args, **kwargs):  # what reading a mode-000 file does to a non-root user
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(nib, "load", denied)
    return image, d / "seg.nii.gz", "permission denied"


CASES = {
    "out-is-the-input": lambda d, mp: (_t1(d), d / "t1.nii.gz", "is the input"),
    "out-is-the-input-by-another-spelling": lambda d, mp: (_t1(d), d / "." / "t1.nii.gz", "is the input"),
    "out-is-a-symlink-to-the-input": lambda d, mp: _symlink_out(d),
    "out-is-a-hard-link-to-the-input": lambda d, mp: _hardlink_out(d),
    "constant-image": lambda d, mp: (_t1(d, array=np.full((40, 40, 40), 7, np.float32)), d / "seg.nii.gz",
                                     "constant (every voxel is 7)"),
    "unreadable-image": _unreadable,
    "image-is-a-folder": lambda d, mp: ((d / "scan.nii.gz").mkdir() or d / "scan.nii.gz", d / "seg.nii.gz",
                                        "is a folder"),
    "out-is-a-folder": lambda d, mp: (_t1(d), (d / "o.nii.gz").mkdir() or d / "o.nii.gz", "is a folder"),
    "out-not-nifti": lambda d, mp: (_t1(d), d / "seg.png", "NIfTI"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_segment_bad_input_is_one_error_line_and_touches_nothing(case, tmp_path, capsys, monkeypatch):
    image, out, expected = CASES[case](tmp_path, monkeypatch)
    before = snapshot(tmp_path)
    code = cli.main(["segment", str(image), "--out", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert expected in lines[0], lines[0]
    assert snapshot(tmp_path) == before  # nothing written, inputs byte-identical
