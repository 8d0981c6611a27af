"""Where `segment`'s labels land, with the bundled cpu segmenter on the committed template (seconds on a CPU):
left/right independent of storage order, the output overlaying the input in ITK (SimpleITK) however the input's
qform and sform are set, warnings for doubtful orientations, and no nnU-Net note as the last word on stderr."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from VentricleSynthLib.segmentation.files import segment_file

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "VentricleSynth" / "Resources" / "Models"
TEMPLATE = REPO / "training" / "template_data" / "t1.nii.gz"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (BUNDLED / "segmenter" / "config.json").is_file(), reason="no bundled segmenter")]


def _save(path: Path, array: np.ndarray, qform: np.ndarray, sform: np.ndarray, codes=(1, 1)) -> Path:
    img = nib.Nifti1Image(array, None)
    img.set_qform(qform, code=codes[0])
    img.set_sform(sform, code=codes[1])
    nib.save(img, str(path))
    return path


def _template():
    img = nib.load(str(TEMPLATE))
    return np.asanyarray(img.dataobj), img.affine


def test_left_and_right_do_not_depend_on_storage_order(tmp_path):
    array, affine = _template()
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = np.asarray(array.shape[:2]) - 1
    lps = _save(tmp_path / "lps.nii.gz", array[::-1, ::-1].copy(), affine @ flip, affine @ flip)
    ras = segment_file(TEMPLATE, tmp_path / "ras_seg.nii.gz", device="cpu", models=BUNDLED)
    other = segment_file(lps, tmp_path / "lps_seg.nii.gz", device="cpu", models=BUNDLED)
    for name, ml in ras["per_label_ml"].items():
        assert other["per_label_ml"][name] == pytest.approx(ml, abs=0.01), (name, ras, other)
    a = np.asanyarray(nib.load(str(tmp_path / "ras_seg.nii.gz")).dataobj)
    b = np.asanyarray(nib.load(str(tmp_path / "lps_seg.nii.gz")).dataobj)
    assert np.array_equal(a, b[::-1, ::-1])


def _itk_geometry(path: Path):
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    return image.GetSize(), image.GetOrigin(), image.GetDirection(), image.GetSpacing()


@pytest.mark.parametrize("codes", [(1, 2), (1, 1), (0, 0)], ids=["qform-over-sform", "sform-scanner", "none"])
def test_the_output_overlays_the_input_in_itk_and_doubtful_orientations_are_warnings(codes, tmp_path):
    array, affine = _template()
    mirrored = affine.copy()
    mirrored[0, :] *= -1  # the qform says the head is mirrored (and 96 mm away)
    image = _save(tmp_path / "t1.nii.gz", array, mirrored, affine, codes)
    result = segment_file(image, tmp_path / "seg.nii.gz", device="cpu", models=BUNDLED)
    for got, expected in zip(_itk_geometry(tmp_path / "seg.nii.gz"), _itk_geometry(image)):
        assert np.allclose(got, expected, atol=1e-4), (got, expected)
    written = nib.load(str(tmp_path / "seg.nii.gz")).header
    source = nib.load(str(image)).header
    assert (int(written["qform_code"]), int(written["sform_code"])) == codes
    assert np.allclose(written.get_qform(), source.get_qform()) and np.allclose(written.get_sform(), source.get_sform())
    assert result["ventricle_ml"] > 10
    warning = " ".join(result["warnings"])
    if codes == (0, 0):
        assert "no orientation" in warning and "left/right" in warning
    else:
        assert "disagree" in warning and ("qform was used" if codes == (1, 2) else "sform was used") in warning


def test_no_nnunet_cuda_note_on_a_cpu_run(capfd):
    from VentricleSynthLib.segmentation.predictor import Segmenter

    Segmenter(BUNDLED / "segmenter", device="cpu")
    captured = capfd.readouterr()
    assert "perform_everything_on_device" not in captured.out + captured.err
