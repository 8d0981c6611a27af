"""The segmenter's training cases (training/segmenter/raw_export.py): a synthetic raw dataset that a synthesize
run has not finished is refused rather than trained on in part."""

from __future__ import annotations

import pytest

from training.segmenter.raw_export import pair_cases
from VentricleSynthLib.errors import DatasetError
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
