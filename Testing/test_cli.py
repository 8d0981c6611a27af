"""The command-line contract: `info`, `check`, and usage errors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

import VentricleSynthLib
from VentricleSynthLib import cli
from VentricleSynthLib.labels import CEREBRA, label_name
from VentricleSynthLib.volumes import label_volumes_ml, tiv_ml, ventricle_volume_ml


def test_info_prints_versions_as_json(run_cli):
    import monai
    import torch

    proc = run_cli("info")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["torch"] == torch.__version__
    assert info["monai"] == monai.__version__
    assert info["nibabel"] == nib.__version__
    assert info["ventriclesynth"] == VentricleSynthLib.__version__
    assert info["python"].count(".") == 2
    assert isinstance(info["cuda"], bool)
    assert isinstance(info["models"], list)


def test_check_reports_volumes_matching_the_library(image_and_label, nifti_file, make_affine, run_cli):
    image, label = image_and_label
    affine = make_affine((0.9, 1.2, 3.0), rotation_deg=20, axis="x", lps=True, centre=(5, -10, 3))
    img_p = nifti_file("img.nii.gz", image, affine)
    lab_p = nifti_file("lab.nii.gz", label, affine)
    proc = run_cli("check", img_p, "--label", lab_p)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])

    # nibabel stores the affine in float32; compute expectations from what was written
    written = np.asarray(nib.load(str(lab_p)).affine)
    expected = ventricle_volume_ml(label, written)
    assert expected > 0
    assert out["ventricle_ml"] == pytest.approx(expected, abs=1e-3)
    # hand check: voxel 0.9*1.2*3 mm^3 = 3.24 uL
    n_vent = int(np.isin(label, (4, 43, 5, 44, 14, 15)).sum())
    assert out["ventricle_ml"] == pytest.approx(n_vent * 0.00324, abs=1e-3)
    per = label_volumes_ml(label, written)
    assert out["per_label_ml"] == pytest.approx({label_name(k): v for k, v in per.items()}, abs=1e-3)
    assert out["tiv_ml"] == pytest.approx(tiv_ml(label, written), abs=1e-3)
    assert out["relative_volume"] == pytest.approx(expected / tiv_ml(label, written), abs=1e-5)
    assert out["shape"] == list(image.shape)
    assert out["spacing_mm"] == pytest.approx([0.9, 1.2, 3.0], abs=1e-4)
    assert out["orientation"] == "LPS"
    assert out["intensity_range"] == pytest.approx([float(image.min()), float(image.max())])


def test_check_image_only(image_and_label, nifti_file, run_cli):
    image, _ = image_and_label
    proc = run_cli("check", nifti_file("img.nii", image, np.diag([1.5, 1.5, 1.5, 1.0])))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert "ventricle_ml" not in out
    assert out["orientation"] == "RAS" and out["spacing_mm"] == [1.5, 1.5, 1.5]


def test_check_with_cerebra_and_csv_mappings(nifti_file, tmp_path, capsys):
    image = np.random.default_rng(0).normal(100, 10, (10, 10, 10)).astype(np.float32)
    src = np.zeros((10, 10, 10), np.int16)
    src[1:4, 1:4, 1:4] = 41  # CerebrA: right lateral ventricle -> 43
    src[5:9, 1:4, 1:4] = 92  # CerebrA: left lateral ventricle -> 4
    src[1:9, 5:9, 5:9] = 42  # CerebrA RH cortical parcel -> 42 cortex
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    img_p = nifti_file("img.nii.gz", image, affine)
    lab_p = nifti_file("lab.nii.gz", src, affine)

    # in-process: the same main() that `python -m VentricleSynthLib` runs
    assert cli.main(["check", str(img_p), "--label", str(lab_p), "--mapping", "cerebra"]) == 0
    out = json.loads(capsys.readouterr().out)
    mapped = CEREBRA.apply(src)
    assert out["ventricle_ml"] == pytest.approx(ventricle_volume_ml(mapped, affine))
    assert out["ventricle_ml"] == pytest.approx((27 + 36) * 0.008)
    assert out["per_label_ml"]["Right-Lateral-Ventricle"] == pytest.approx(27 * 0.008)
    assert out["per_label_ml"]["Left-Lateral-Ventricle"] == pytest.approx(36 * 0.008)

    csv = tmp_path / "map.csv"
    csv.write_text("source,target\n0,0\n41,4\n92,4\n42,3\n")
    assert cli.main(["check", str(img_p), "--label", str(lab_p), "--mapping", str(csv)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["per_label_ml"]["Left-Lateral-Ventricle"] == pytest.approx(63 * 0.008)
    assert out["per_label_ml"]["Right-Lateral-Ventricle"] == 0

    # without a mapping the CerebrA numbers are refused, as one error line
    assert cli.main(["check", str(img_p), "--label", str(lab_p)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "92" in err[0]


@pytest.mark.parametrize("args", [
    [],  # no command
    ["frobnicate"],  # unknown command
    ["check"],  # missing IMAGE
    ["check", "a.nii.gz", "--bogus"],  # unknown option
    ["check", "a.nii.gz", "--label"],  # option without its value
    ["info", "extra"],
])
def test_usage_errors_print_one_error_line_and_exit_2(args, run_cli):
    proc = run_cli(*args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:")
    assert proc.stdout == ""


def test_usage_error_in_process(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["check"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1


def test_help_and_version(run_cli):
    proc = run_cli("--help")
    assert proc.returncode == 0
    assert "check" in proc.stdout and "info" in proc.stdout
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert VentricleSynthLib.__version__ in proc.stdout
