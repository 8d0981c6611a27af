"""The segmenter's training cases and raw dataset (training/segmenter/raw_export.py): a synthetic raw dataset that
a synthesize run has not finished is refused rather than trained on in part; the reader/writer option."""

from __future__ import annotations

import json

import numpy as np
import pytest
from testing_helpers import segmenter_cases

from training.segmenter.raw_export import export_raw, pair_cases
from VentricleSynthLib.errors import DatasetError
from VentricleSynthLib.imaging.profile import Profile
from VentricleSynthLib.io.atomic import write_json
from VentricleSynthLib.io.nnunet_raw import schema_dataset_json


def test_incomplete_raw_dataset_is_refused_for_training(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    for case in ("synth_0000", "synth_0001"):
        (tmp_path / "imagesTr" / f"{case}_0000.nii.gz").write_bytes(b"")
    write_json(tmp_path / "dataset.json", schema_dataset_json(3))
    with pytest.raises(DatasetError, match=r"incomplete synthetic dataset \(2 images .* numTraining 3\); rerun"):
        pair_cases(tmp_path)
    write_json(tmp_path / "dataset.json", schema_dataset_json(2))
    assert len(pair_cases(tmp_path)) == 2  # lazily loaded: the counts agree
    (tmp_path / "records").mkdir()  # one of ours, whose last run did not get to write cases.csv
    with pytest.raises(DatasetError, match=r"incomplete synthetic dataset \(no cases.csv\); rerun synthesize"):
        pair_cases(tmp_path)


def test_reader_writer_option_names_nibabel_in_dataset_json_and_nnunet_reads_the_same(tmp_path):
    """`segmenter.image_reader_writer: NibabelIO` (benchmarks/gpu_check.py, where SimpleITK cannot travel): nnU-Net
    picks NibabelIO from dataset.json and sees the same arrays and spacing that SimpleITKIO, its default, gives."""
    from nnunetv2.imageio.nibabel_reader_writer import NibabelIO
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    profile = Profile("t", (4.0, 4.0, 4.0), (28, 40, 32))
    plain = export_raw(segmenter_cases(1), tmp_path / "plain", "Dataset900_T", profile, progress=lambda _: None)
    nib = export_raw(segmenter_cases(1), tmp_path / "nib", "Dataset900_T", profile, progress=lambda _: None,
                     reader_writer="NibabelIO")
    plain_json, nib_json = (json.loads((root / "dataset.json").read_text()) for root in (plain, nib))
    assert "overwrite_image_reader_writer" not in plain_json
    assert nib_json == {**plain_json, "overwrite_image_reader_writer": "NibabelIO"}
    image = str(nib / "imagesTr" / "case_0000_0000.nii.gz")
    assert determine_reader_writer_from_dataset_json(plain_json, image, verbose=False) is SimpleITKIO
    assert determine_reader_writer_from_dataset_json(nib_json, image, verbose=False) is NibabelIO
    label = str(nib / "labelsTr" / "case_0000.nii.gz")
    for read in ("read_images", "read_seg"):
        arg = (image,) if read == "read_images" else label
        (a, pa), (b, pb) = getattr(SimpleITKIO(), read)(arg), getattr(NibabelIO(), read)(arg)
        assert a.shape == b.shape == (1, 32, 40, 28)  # nnU-Net's (z, y, x) order, both readers
        np.testing.assert_array_equal(a, b)
        assert list(pa["spacing"]) == list(pb["spacing"]) == [4.0, 4.0, 4.0]
    assert sorted(np.unique(b).tolist()) == [0, 1, 2]  # FreeSurfer 4, 43 -> segmenter indices 1, 2
