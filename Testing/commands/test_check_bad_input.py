"""`check` given bad input: exit 2, exactly one `error:` line, no traceback, nothing written and every input
byte-identical; and the doubtful inputs it accepts with a warning in its JSON (no orientation, a qform and an
sform that disagree, a FreeSurfer-numbered map read as CerebrA)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from testing_helpers import snapshot

from VentricleSynthLib import cli


def _image(folder, name="t1.nii.gz", array=None, qform=None, sform=None, codes=(1, 1)):
    array = np.random.default_rng(0).normal(100, 20, (20, 20, 20)).astype(np.float32) if array is None else array
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    img = nib.Nifti1Image(array, None)
    img.set_qform(affine if qform is None else qform, code=codes[0])
    img.set_sform(affine if sform is None else sform, code=codes[1])
    nib.save(img, str(folder / name))
    return folder / name


def _denied(monkeypatch):
    def load(path, *args, **kwargs):  # what reading a mode-000 file does to a non-root user
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(nib, "load", load)


@pytest.mark.parametrize("case, expected", [
    ("constant", "constant (every voxel is 42)"),
    ("all-zero", "constant (every voxel is 0)"),
    ("unreadable", "permission denied"),
    ("folder", "is a folder"),
])
def test_check_bad_input_is_one_error_line_and_touches_nothing(case, expected, tmp_path, capsys, monkeypatch):
    if case == "constant":
        image = _image(tmp_path, array=np.full((20, 20, 20), 42, np.int16))
    elif case == "all-zero":
        image = _image(tmp_path, array=np.zeros((20, 20, 20), np.float32))
    elif case == "folder":
        image = tmp_path / "scans.nii.gz"
        image.mkdir()
    else:
        image = _image(tmp_path)
        _denied(monkeypatch)
    before = snapshot(tmp_path)
    code = cli.main(["check", str(image)])
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert snapshot(tmp_path) == before


def _check(capsys, *args):
    assert cli.main(["check", *map(str, args)]) == 0
    return json.loads(capsys.readouterr().out)


def test_check_warns_of_a_missing_orientation(tmp_path, capsys):
    warnings = _check(capsys, _image(tmp_path, codes=(0, 0)))["warnings"]
    assert len(warnings) == 1 and "no orientation" in warnings[0] and "left/right" in warnings[0]
    assert _check(capsys, _image(tmp_path, "ok.nii.gz"))["warnings"] == []


def test_check_warns_when_qform_and_sform_disagree(tmp_path, capsys):
    mirrored = np.diag([-2.0, 2.0, 2.0, 1.0])
    mirrored[0, 3] = 38.0
    warnings = _check(capsys, _image(tmp_path, qform=mirrored, codes=(1, 2)))["warnings"]
    assert len(warnings) == 1 and "disagree" in warnings[0] and "qform was used" in warnings[0]


def test_check_warns_when_a_freesurfer_map_is_read_as_cerebra(tmp_path, capsys):
    image = _image(tmp_path)
    label = np.zeros((20, 20, 20), np.int16)
    label[2:18, 2:18, 2:18] = 2  # FreeSurfer white matter (CerebrA 2: a vermal lobule)
    label[5:9, 5:9, 5:9] = 4  # FreeSurfer left lateral ventricle (CerebrA 4: putamen)
    label[11:15, 5:9, 5:9] = 43
    nib.save(nib.Nifti1Image(label, np.diag([2.0, 2.0, 2.0, 1.0])), str(tmp_path / "fs.nii.gz"))
    result = _check(capsys, image, "--label", tmp_path / "fs.nii.gz", "--mapping", "cerebra")
    assert len(result["warnings"]) == 1 and "FreeSurfer" in result["warnings"][0]
    assert _check(capsys, image, "--label", tmp_path / "fs.nii.gz")["warnings"] == []
