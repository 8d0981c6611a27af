"""Dice, IoU, HD95 and the surface they are measured on (VentricleSynthLib.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from VentricleSynthLib.metrics import dice, directed_surface_distances, hd95, iou, surface

SHAPE = (20, 20, 20)


def _cube(lo, size, shape=SHAPE, label=4) -> np.ndarray:
    a = np.zeros(shape, np.int16)
    a[lo[0]:lo[0] + size, lo[1]:lo[1] + size, lo[2]:lo[2] + size] = label
    return a


def test_dice_iou_hand_computed_shifted_cube():
    a = _cube((5, 5, 5), 3)  # 27 voxels
    b = _cube((6, 5, 5), 3)  # shifted by one voxel: 18 shared
    assert dice(a > 0, b > 0) == pytest.approx(2 * 18 / 54)
    assert iou(a > 0, b > 0) == pytest.approx(18 / 36)
    c = _cube((0, 0, 0), 2)
    assert dice(a > 0, c > 0) == 0.0 and iou(a > 0, c > 0) == 0.0
    assert dice(a > 0, a > 0) == 1.0


def test_hd95_parallel_plates_is_their_distance_times_spacing():
    a = np.zeros(SHAPE, bool)
    b = np.zeros(SHAPE, bool)
    a[4, 2:18, 2:18] = True
    b[9, 2:18, 2:18] = True
    assert hd95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(5.0)
    assert hd95(a, b, (0.7, 1.0, 1.0)) == pytest.approx(3.5)
    c = np.zeros(SHAPE, bool)
    d = np.zeros(SHAPE, bool)
    c[2:18, 2:18, 3] = True
    d[2:18, 2:18, 7] = True
    assert hd95(c, d, (1.0, 1.0, 3.0)) == pytest.approx(12.0)


def test_hd95_single_voxels_euclidean():
    a = np.zeros(SHAPE, bool)
    b = np.zeros(SHAPE, bool)
    a[2, 3, 4] = True
    b[5, 7, 4] = True
    assert hd95(a, b) == pytest.approx(5.0)
    assert hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(math.hypot(6, 4))


def test_hd95_ignores_a_small_outlier_that_hausdorff_would_not():
    a = _cube((2, 2, 2), 8) > 0
    b = a.copy()
    b[18, 18, 18] = True  # one far voxel
    d_ba = directed_surface_distances(b, a, (1, 1, 1))
    assert d_ba.max() == pytest.approx(math.sqrt(3 * 9 ** 2))  # the plain Hausdorff distance sees it
    assert hd95(a, b) == 0.0


def test_hd95_matches_brute_force_definition_on_random_blobs():
    rng = np.random.default_rng(3)
    from scipy import ndimage

    for trial in range(4):
        a = ndimage.gaussian_filter(rng.random(SHAPE), 2) > 0.52
        b = ndimage.gaussian_filter(rng.random(SHAPE), 2) > 0.52
        if not a.any() or not b.any():
            continue
        spacing = np.array([1.0, 1.3, 2.0]) if trial % 2 else np.ones(3)
        sa, sb = surface(a), surface(b)
        pa, pb = np.argwhere(sa) * spacing, np.argwhere(sb) * spacing
        dist = cdist(pa, pb)
        expected = max(np.percentile(dist.min(axis=1), 95), np.percentile(dist.min(axis=0), 95))
        assert hd95(a, b, spacing) == pytest.approx(expected, rel=1e-6)


def test_surface_is_the_boundary_layer():
    a = _cube((5, 5, 5), 4) > 0
    s = surface(a)
    assert s.sum() == 4 ** 3 - 2 ** 3  # the cube minus its 2x2x2 interior
    edge = np.zeros(SHAPE, bool)
    edge[0:3, 0:3, 0:3] = True  # touches the array border: border voxels are surface
    assert surface(edge).sum() == 27 - 1
