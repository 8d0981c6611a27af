"""Bright-CSF images (VentricleSynthLib/segmentation/contrast.py): the mirrored view, the edge that chooses a
reading, and the bundled dark-CSF model reading a T2-like head through the mirrored view."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from VentricleSynthLib.labels import VENTRICLE_LABELS
from VentricleSynthLib.segmentation import contrast

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "VentricleSynth" / "Resources" / "Models"


def _head(csf: float, tissue: float, shape=(40, 40, 40)) -> tuple[np.ndarray, np.ndarray]:
    """A ball of tissue in dark air with a block of CSF in the middle; (image, csf mask)."""
    grid = np.indices(shape) - (np.asarray(shape) - 1)[:, None, None, None] / 2
    image = np.where((grid ** 2).sum(0) < 17 ** 2, tissue, 0.0).astype(np.float32)
    csf_mask = np.zeros(shape, bool)
    csf_mask[16:24, 14:26, 16:24] = True
    image[csf_mask] = csf
    return image, csf_mask


def test_the_mirrored_view_turns_bright_csf_dark_and_keeps_the_air_dark():
    image, csf = _head(csf=0.95, tissue=0.45)  # T2-like
    view = contrast.mirrored(image, (0.5, 99.5))
    air = image == 0
    assert view.min() >= 0 and view.max() <= 1
    assert view[csf].mean() < 0.5 * view[~csf & ~air].mean()  # CSF now darker than tissue
    assert view[air].max() < contrast.FOREGROUND  # the background stays background


def test_the_edge_is_large_for_dark_csf_found_and_negative_for_bright():
    t1, csf = _head(csf=0.1, tissue=0.8)
    t2, _ = _head(csf=0.95, tissue=0.45)
    assert contrast.dark_csf_edge(t1, csf) > 0.8  # (0.8 - 0.1) / 0.8
    assert contrast.dark_csf_edge(t2, csf) < 0
    assert contrast.dark_csf_edge(t1, np.zeros_like(csf)) == float("-inf")
    # shapes that follow no edge (a block across CSF and tissue) score low
    wrong = np.zeros_like(csf)
    wrong[20:30, 20:30, 20:30] = True
    assert contrast.dark_csf_edge(t1, wrong) < contrast.CLEAR_EDGE


@pytest.mark.skipif(not (BUNDLED / "segmenter" / "config.json").is_file(), reason="no bundled segmenter")
def test_the_bundled_t1_model_reads_a_t2_like_head_through_the_mirrored_view_and_a_t1_as_given():
    """The committed template's labels rendered T2-like (CSF bright) at 1 mm with blur, bias and noise: the dark-CSF
    bundled model keeps the mirrored reading, says so, and finds the ventricles; the same labels rendered T1-like
    are read as given."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from phantom import render, with_bias_field, with_rician_noise
    from scipy import ndimage

    from training.data.templates import committed_on_grid
    from VentricleSynthLib.io.nifti import Volume
    from VentricleSynthLib.metrics import dice
    from VentricleSynthLib.segmentation.predictor import get_segmenter

    t1, label = committed_on_grid((160, 192, 160), 1.0)
    truth = np.isin(label, VENTRICLE_LABELS)
    segmenter = get_segmenter(BUNDLED, "cpu")
    rng = np.random.default_rng(3)
    for weighting, mirrored in (("t2", True), ("t1", False)):
        image = with_bias_field(ndimage.gaussian_filter(render(label.astype(np.int64), weighting), 0.6), rng)
        image = with_rician_noise(image, 0.02 * image.max(), rng).astype(np.float32)
        found, result = segmenter.segment(Volume(image, t1.affine))
        assert (contrast.MIRRORED_NOTE in result["warnings"]) is mirrored, (weighting, result["warnings"])
        assert contrast.UNCLEAR_NOTE not in result["warnings"]
        assert dice(found.array > 0, truth) >= 0.8, (weighting, dice(found.array > 0, truth))
