"""benchmarks/contrasts.py's own parts: each contrast renders CSF on its side of the tissue (dark on T1 and FLAIR,
bright on T2 and PD) through blur, bias and noise, and the label Dice scores what it should. The benchmark itself
(the segmenter on hold-out heads) runs by hand; its numbers are in the README."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from contrasts import label_dice, rendered  # noqa: E402


@pytest.mark.parametrize("contrast, csf_bright", [("t1", False), ("flair", False), ("t2", True), ("pd", True)])
def test_each_contrast_puts_the_ventricles_on_its_side_of_white_matter(contrast, csf_bright):
    label = np.full((32, 32, 32), 2, np.int16)  # cerebral white matter
    label[12:20, 12:20, 12:20] = 4  # a lateral ventricle
    image = rendered(label, contrast, np.random.default_rng(0))
    assert image.shape == label.shape and np.all(np.isfinite(image)) and image.min() >= 0
    ventricle, tissue = np.median(image[label == 4]), np.median(image[label == 2])
    assert (ventricle > tissue) == csf_bright, (ventricle, tissue)


def test_label_dice_averages_the_labels_present_in_the_truth():
    truth = np.zeros((10, 10, 10), np.int16)
    truth[:5], truth[5:] = 4, 43
    assert label_dice(truth, truth, (4, 43, 14)) == 1.0  # 14 absent from the truth: not counted
    swapped = np.where(truth == 4, 43, 4).astype(np.int16)
    assert label_dice(swapped, truth, (4, 43, 14)) == 0.0
