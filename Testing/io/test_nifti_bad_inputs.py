"""Acceptance: every bad input gives a typed error, from the API and from the CLI.

API: `nifti.load_image`, `nifti.load_label_map`, `nifti.check_same_grid` raise a `VentricleSynthError`
subclass. CLI: `python -m VentricleSynthLib check IMAGE [--label L]` prints exactly one stderr line
starting with `error:`, exits non-zero, and never shows a traceback.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from VentricleSynthLib.errors import (
    GeometryMismatchError,
    InvalidImageError,
    LabelSchemaError,
    VentricleSynthError,
)
from VentricleSynthLib.io.nifti import check_same_grid, load_image, load_label_map

SHAPE = (12, 12, 12)


def _image() -> np.ndarray:
    return np.random.default_rng(0).normal(100, 20, SHAPE).astype(np.float32)


def _label() -> np.ndarray:
    lab = np.zeros(SHAPE, np.int16)
    lab[2:10, 2:10, 2:10] = 2
    lab[4:6, 4:8, 4:8] = 4
    lab[6:8, 4:8, 4:8] = 43
    return lab


# Each builder writes files under `d` and returns (image path, label path or None, expected error type).
def _text_named_nii_gz(d: Path, nifti_file):
    p = d / "x.nii.gz"
    p.write_text("this is not an image\n")
    return p, None, InvalidImageError


def _text_named_nii(d: Path, nifti_file):
    p = d / "x.nii"
    p.write_text("this is not an image either\n" * 40)
    return p, None, InvalidImageError


def _text_named_txt(d: Path, nifti_file):
    p = d / "x.txt"
    p.write_text("hello")
    return p, None, InvalidImageError


def _real_nifti_named_txt(d: Path, nifti_file):
    good = nifti_file("good.nii.gz", _image())
    p = d / "x.txt"
    p.write_bytes(good.read_bytes())
    return p, None, InvalidImageError


def _gzipped_garbage(d: Path, nifti_file):
    p = d / "x.nii.gz"
    with gzip.open(p, "wb") as fh:
        fh.write(b"\x01" * 2000)
    return p, None, InvalidImageError


def _truncated_gz(d: Path, nifti_file):
    p = nifti_file("cut.nii.gz", _image())
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p, None, InvalidImageError


def _truncated_nii(d: Path, nifti_file):
    p = nifti_file("cut.nii", _image())
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p, None, InvalidImageError


def _truncated_label_gz(d: Path, nifti_file):
    img = nifti_file("img.nii.gz", _image())
    lab = nifti_file("lab.nii.gz", np.random.default_rng(1).choice([0, 2, 4, 43], SHAPE).astype(np.int16))
    data = lab.read_bytes()
    lab.write_bytes(data[: len(data) // 2])
    return img, lab, InvalidImageError


def _two_d(d: Path, nifti_file):
    return nifti_file("flat.nii.gz", _image()[:, :, 0]), None, InvalidImageError


def _single_slice(d: Path, nifti_file):
    return nifti_file("slice.nii.gz", _image()[:, :, :1]), None, InvalidImageError


def _four_d(d: Path, nifti_file):
    return nifti_file("series.nii.gz", np.stack([_image(), _image() + 1], axis=-1)), None, InvalidImageError


def _four_d_label(d: Path, nifti_file):
    img = nifti_file("img.nii.gz", _image())
    return img, nifti_file("lab4d.nii.gz", np.stack([_label()] * 3, axis=-1)), InvalidImageError


def _nan(d: Path, nifti_file):
    a = _image()
    a[3, 4, 5] = np.nan
    return nifti_file("nan.nii.gz", a), None, InvalidImageError


def _inf(d: Path, nifti_file):
    a = _image()
    a[3, 4, 5] = -np.inf
    return nifti_file("inf.nii.gz", a), None, InvalidImageError


def _all_zero(d: Path, nifti_file):
    return nifti_file("zero.nii.gz", np.zeros(SHAPE, np.float32)), None, InvalidImageError


def _constant(d: Path, nifti_file):
    return nifti_file("const.nii.gz", np.full(SHAPE, 42, np.int16)), None, InvalidImageError


def _singular_affine(d: Path, nifti_file):
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(SHAPE)
    hdr.set_data_dtype(np.float32)
    hdr.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code=2)
    hdr.set_qform(None, code=0)
    p = d / "singular.nii.gz"
    nib.save(nib.Nifti1Image(_image(), None, header=hdr), str(p))
    return p, None, InvalidImageError


def _complex_voxels(d: Path, nifti_file):
    return nifti_file("complex.nii.gz", _image().astype(np.complex64)), None, InvalidImageError


def _label_outside_schema(d: Path, nifti_file):
    lab = _label()
    lab[0, 0, 0] = 999
    return nifti_file("img.nii.gz", _image()), nifti_file("lab.nii.gz", lab), LabelSchemaError


def _label_cerebra_numbers(d: Path, nifti_file):
    lab = _label()
    lab[lab == 43] = 92  # a CerebrA number given without --mapping cerebra
    return nifti_file("img.nii.gz", _image()), nifti_file("lab.nii.gz", lab), LabelSchemaError


def _label_non_integer(d: Path, nifti_file):
    lab = _label().astype(np.float32)
    lab[5, 5, 5] = 4.5
    return nifti_file("img.nii.gz", _image()), nifti_file("lab.nii.gz", lab), VentricleSynthError


def _label_nan(d: Path, nifti_file):
    lab = _label().astype(np.float32)
    lab[5, 5, 5] = np.nan
    return nifti_file("img.nii.gz", _image()), nifti_file("lab.nii.gz", lab), VentricleSynthError


def _label_empty(d: Path, nifti_file):
    return nifti_file("img.nii.gz", _image()), nifti_file("lab.nii.gz", np.zeros(SHAPE, np.int16)), InvalidImageError


def _label_other_shape(d: Path, nifti_file):
    lab = np.pad(_label(), ((0, 2), (0, 0), (0, 0)))
    return nifti_file("img.nii.gz", _image()), nifti_file("lab.nii.gz", lab), GeometryMismatchError


def _label_other_affine(d: Path, nifti_file):
    shifted = np.eye(4)
    shifted[:3, 3] = [0.0, 2.5, 0.0]
    return (nifti_file("img.nii.gz", _image()), nifti_file("lab.nii.gz", _label(), shifted),
            GeometryMismatchError)


def _label_flipped_affine(d: Path, nifti_file):
    # same shape, same spacing, but LPS vs RAS: a classic silent left/right swap if unchecked
    return (nifti_file("img.nii.gz", _image()), nifti_file("lab.nii.gz", _label(), np.diag([-1.0, -1, 1, 1])),
            GeometryMismatchError)


def _missing_file(d: Path, nifti_file):
    return d / "does_not_exist.nii.gz", None, InvalidImageError


def _missing_label(d: Path, nifti_file):
    return nifti_file("img.nii.gz", _image()), d / "nope.nii.gz", InvalidImageError


def _directory(d: Path, nifti_file):
    p = d / "folder.nii.gz"
    p.mkdir()
    return p, None, InvalidImageError


def _plain_directory(d: Path, nifti_file):
    p = d / "scans"
    p.mkdir()
    return p, None, InvalidImageError


CASES = {
    "text-named-nii.gz": _text_named_nii_gz,
    "text-named-nii": _text_named_nii,
    "text-named-txt": _text_named_txt,
    "nifti-named-txt": _real_nifti_named_txt,
    "gzipped-garbage": _gzipped_garbage,
    "truncated-gz": _truncated_gz,
    "truncated-nii": _truncated_nii,
    "truncated-label-gz": _truncated_label_gz,
    "2-D": _two_d,
    "single-slice": _single_slice,
    "4-D-series": _four_d,
    "4-D-label": _four_d_label,
    "NaN": _nan,
    "Inf": _inf,
    "all-zero": _all_zero,
    "constant": _constant,
    "singular-affine": _singular_affine,
    "complex-voxels": _complex_voxels,
    "label-999": _label_outside_schema,
    "label-cerebra-numbers": _label_cerebra_numbers,
    "label-non-integer": _label_non_integer,
    "label-NaN": _label_nan,
    "label-empty": _label_empty,
    "label-other-shape": _label_other_shape,
    "label-other-affine": _label_other_affine,
    "label-flipped-affine": _label_flipped_affine,
    "missing-file": _missing_file,
    "missing-label": _missing_label,
    "directory-named-nii.gz": _directory,
    "directory": _plain_directory,
}


def _api(image: Path, label: Path | None):
    img = load_image(image)
    if label is not None:
        lab = load_label_map(label)
        check_same_grid(img, lab)


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_api_raises_typed_error(case, tmp_path, nifti_file):
    image, label, expected = CASES[case](tmp_path, nifti_file)
    with pytest.raises(expected) as info:
        _api(image, label)
    assert isinstance(info.value, VentricleSynthError)
    assert str(info.value).strip()  # a message the user can read


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_cli_one_error_line(case, tmp_path, nifti_file, run_cli):
    image, label, _ = CASES[case](tmp_path, nifti_file)
    args = ["check", image] + (["--label", label] if label is not None else [])
    proc = run_cli(*args)
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:"), proc.stderr
    assert proc.stdout.strip() == ""


# --- the good neighbours of the bad cases are accepted ----------------------------------------------

def test_four_d_with_singleton_fourth_axis_is_accepted(nifti_file, run_cli):
    img = _image()
    p = nifti_file("vol4d.nii.gz", img[..., None])
    vol = load_image(p)
    assert vol.shape == SHAPE
    np.testing.assert_allclose(vol.array, img)
    lab = nifti_file("lab4d.nii.gz", _label()[..., None])
    lv = load_label_map(lab)
    assert lv.shape == SHAPE and lv.array.dtype == np.int16
    np.testing.assert_array_equal(lv.array, _label())
    check_same_grid(vol, lv)
    proc = run_cli("check", p, "--label", lab)
    assert proc.returncode == 0, proc.stderr
    assert "error" not in proc.stderr


def test_integer_valued_float_label_map_and_plain_nii_are_accepted(nifti_file):
    img = nifti_file("img.nii", _image())
    lab = nifti_file("lab.nii", _label().astype(np.float32))
    v = load_image(img)
    lv = load_label_map(lab)
    assert lv.array.dtype == np.int16
    np.testing.assert_array_equal(lv.array, _label())
    check_same_grid(v, lv)


def test_check_same_grid_tolerates_rounding_only():
    a = np.zeros(SHAPE)
    aff = np.diag([0.9, 1.2, 3.0, 1.0])
    from VentricleSynthLib.io.nifti import Volume

    check_same_grid(Volume(a, aff), Volume(a, aff + 1e-5))
    with pytest.raises(GeometryMismatchError):
        check_same_grid(Volume(a, aff), Volume(a, aff + np.diag([0.01, 0, 0, 0])))
    with pytest.raises(GeometryMismatchError):
        check_same_grid(Volume(a, aff), Volume(a.transpose(1, 0, 2)[:, :-1], aff))


def test_label_map_through_cerebra_mapping(nifti_file):
    from VentricleSynthLib.labels import CEREBRA

    src = np.zeros(SHAPE, np.int16)
    src[2:5, 2:5, 2:5] = 41  # CerebrA right lateral ventricle
    src[6:9, 2:5, 2:5] = 92  # CerebrA left lateral ventricle
    p = nifti_file("cerebra.nii.gz", src)
    with pytest.raises(LabelSchemaError):
        load_label_map(p)  # 92 is not a FreeSurfer label
    lv = load_label_map(p, mapping=CEREBRA)
    np.testing.assert_array_equal(np.unique(lv.array), [0, 4, 43])
    assert (lv.array == 43).sum() == 27 and np.all(lv.array[2:5, 2:5, 2:5] == 43)
    assert np.all(lv.array[6:9, 2:5, 2:5] == 4)
