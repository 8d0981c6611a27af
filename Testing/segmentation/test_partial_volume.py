"""The boundary convention and the partial-volume (soft) volume, on phantoms whose ventricle fraction per voxel is
known: two ellipsoids (lateral-ventricle-like, compact or thin) supersampled 4x4x4 per 1 mm voxel, imaged with
partial volume, a smooth multiplicative bias field and noise, in T1-like (CSF dark) and T2-like (CSF bright)
contrast. The network's decision is played by thresholds of the true fraction that over- and under-segment."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from VentricleSynthLib.segmentation import partial_volume

SUB = 4


def _phantom(volume_ml: float, contrast: str, thin: bool = False, seed: int = 0):
    """(image, true fraction, true mL) on a 1 mm grid."""
    rng = np.random.default_rng(seed)
    shape = (96, 112, 96) if volume_ml <= 60 else (128, 144, 112)
    centre = np.array(shape) / 2
    base = np.array([4.0, 30.0, 9.0]) if thin else np.array([8.0, 22.0, 10.0])
    axes = base * (volume_ml * 1000 / 2 / (4 / 3 * np.pi * np.prod(base))) ** (1 / 3)
    offset = axes[0] + 3.0
    x, y = np.meshgrid((np.arange(shape[0] * SUB) + 0.5) / SUB, (np.arange(shape[1] * SUB) + 0.5) / SUB,
                       indexing="ij")
    fraction = np.zeros(shape, np.float32)
    for k in range(shape[2]):
        hits = np.zeros((shape[0], shape[1]), np.float32)
        for s in range(SUB):
            z = k + (s + 0.5) / SUB
            inside = np.zeros(x.shape, bool)
            for side in (-1, 1):
                inside |= (((x - centre[0] - side * offset) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2
                           + ((z - centre[2]) / axes[2]) ** 2) <= 1
            hits += inside.reshape(shape[0], SUB, shape[1], SUB).sum(axis=(1, 3))
        fraction[:, :, k] = hits / SUB ** 3
    csf, tissue = (0.15, 0.8) if contrast == "t1" else (0.9, 0.35)
    image = fraction * csf + (1 - fraction) * tissue
    bias = np.exp(ndimage.zoom(rng.normal(0, 0.15, (4, 4, 4)), np.array(shape) / 4, order=3))
    image = image * bias + rng.normal(0, 0.02, shape)
    return image.astype(np.float32), fraction, float(fraction.sum()) / 1000


@pytest.mark.parametrize("volume_ml,thin", [(15, True), (15, False), (150, False)])
@pytest.mark.parametrize("contrast", ["t1", "t2"])
def test_soft_volume_and_half_rule_recover_the_true_volume(volume_ml, thin, contrast):
    image, fraction, true_ml = _phantom(volume_ml, contrast, thin)
    affine = np.eye(4)
    for decided_at in (0.25, 0.75):  # a network that over- or under-segments the boundary
        decision = fraction >= decided_at
        label = np.where(decision, 4, 0).astype(np.int16)
        raw_error = abs(decision.sum() / 1000 - true_ml) / true_ml
        pv = partial_volume.estimate(image, decision, affine)
        assert pv.usable and pv.contrast > partial_volume.MIN_CONTRAST
        soft, per_label = partial_volume.soft_volumes_ml(label, pv, affine, (4, 43))
        assert soft == pytest.approx(true_ml, rel=0.02) and per_label[4] == pytest.approx(soft) and per_label[43] == 0
        half = partial_volume.half_rule(label, pv)
        truth = fraction >= 0.5
        assert abs(np.count_nonzero(half) / 1000 - true_ml) / true_ml < min(0.02, raw_error)
        assert (half > 0)[truth].mean() > 0.97 and truth[half > 0].mean() > 0.97  # the right voxels, not only as many
        assert set(np.unique(half)) <= {0, 4}


def test_rim_voxels_are_named_after_their_nearest_label():
    image, fraction, _ = _phantom(40, "t1")
    centre = fraction.shape[0] // 2
    label = np.where(fraction >= 0.75, 4, 0).astype(np.int16)
    label[centre:][label[centre:] == 4] = 43  # the right ellipsoid is the right ventricle
    pv = partial_volume.estimate(image, label > 0, np.eye(4))
    half = partial_volume.half_rule(label, pv)
    added = (half > 0) & (label == 0)
    assert added.any()
    assert np.all(half[:centre][added[:centre]] == 4) and np.all(half[centre:][added[centre:]] == 43)
    soft, per_label = partial_volume.soft_volumes_ml(half, pv, np.eye(4), (4, 43))
    assert per_label[4] + per_label[43] == pytest.approx(soft)
    assert per_label[4] == pytest.approx(per_label[43], rel=0.02)


def test_no_contrast_keeps_the_decision_and_gives_no_soft_volume():
    _, fraction, _ = _phantom(15, "t1")
    rng = np.random.default_rng(1)
    flat = (0.5 + rng.normal(0, 0.02, fraction.shape)).astype(np.float32)  # CSF and tissue alike
    label = np.where(fraction >= 0.5, 4, 0).astype(np.int16)
    pv = partial_volume.estimate(flat, label > 0, np.eye(4))
    assert not pv.usable and "contrast" in pv.note
    assert partial_volume.half_rule(label, pv) is label
    assert partial_volume.soft_volumes_ml(label, pv, np.eye(4), (4,)) == (None, None)
    empty = partial_volume.estimate(flat, np.zeros(flat.shape, bool), np.eye(4))
    assert not empty.usable and empty.note == "no ventricles"


def test_anisotropic_voxels_count_their_own_volume():
    """The same phantom stored with 1 x 1 x 2 mm voxels (every other slice): volumes in mL follow the affine."""
    image, fraction, _ = _phantom(40, "t1")
    image, fraction = image[:, :, ::2], fraction[:, :, ::2]
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    label = np.where(fraction >= 0.5, 4, 0).astype(np.int16)
    pv = partial_volume.estimate(image, label > 0, affine)
    soft, _ = partial_volume.soft_volumes_ml(label, pv, affine, (4,))
    assert soft == pytest.approx(float(fraction.sum()) * 2 / 1000, rel=0.02)


def test_the_tissue_shell_lies_beyond_the_rim():
    """A rim voxel is compared with tissue, never with another rim voxel: the shell starts outside the rim."""
    assert partial_volume.SHELL_VOXELS[0] > partial_volume.RIM_VOXELS >= 1
    assert partial_volume.SHELL_VOXELS[1] >= partial_volume.SHELL_VOXELS[0]
