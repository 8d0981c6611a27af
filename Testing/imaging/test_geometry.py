"""Voxel grids, resampling between them, canonical orientation, bounding boxes and foreground masks."""

from __future__ import annotations

import numpy as np
import pytest
from testing_helpers import voxel_world

from VentricleSynthLib.imaging.geometry import (
    Grid,
    brain_mask_from_image,
    percentile_normalise,
    profile_grid,
    ras_grid,
    resample,
    resample_volume,
    to_canonical,
    world_bbox,
)
from VentricleSynthLib.io.nifti import Volume
from VentricleSynthLib.metrics import dice


@pytest.fixture
def ramp():
    rng = np.random.default_rng(3)
    return rng.integers(0, 50, size=(8, 9, 10)).astype(np.int16)


@pytest.mark.parametrize("order", [0, 1])
def test_resample_identity_returns_same_array(ramp, make_affine, order):
    affine = make_affine((0.9, 1.2, 3.0), rotation_deg=20, axis="x", lps=True)
    arr = ramp if order == 0 else ramp.astype(np.float32) * 0.5
    out = resample(arr, affine, Grid(arr.shape, affine.copy()), order=order)
    np.testing.assert_array_equal(out, arr)
    assert out is not arr


@pytest.mark.parametrize("order", [0, 1, 3])
def test_resample_integer_shift(ramp, order):
    src = np.eye(4)
    target_affine = np.eye(4)
    target_affine[:3, 3] = [2.0, 0.0, -1.0]  # target voxel (i,j,k) is source voxel (i+2, j, k-1)
    out = resample(ramp.astype(np.float32), src, Grid(ramp.shape, target_affine), order=order, cval=-7)
    np.testing.assert_allclose(out[:-2, :, 1:], ramp[2:, :, :-1], atol=1e-4)
    assert np.all(out[-2:] == -7) and np.all(out[:, :, 0] == -7)


def test_resample_flipped_grid_over_same_world(ramp):
    n = np.asarray(ramp.shape)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps[:3, 3] = [n[0] - 1, n[1] - 1, 0]  # covers the same voxel centres as the identity grid
    out = resample(ramp, np.eye(4), Grid(ramp.shape, lps), order=0)
    np.testing.assert_array_equal(out, ramp[::-1, ::-1, :])
    assert out.dtype == ramp.dtype


def test_resample_downsample_nearest_picks_voxel_centres(ramp):
    src = np.diag([1.0, 1.0, 1.0, 1.0])
    target = Grid((4, 4, 5), np.diag([2.0, 2.0, 2.0, 1.0]))
    out = resample(ramp, src, target, order=0)
    np.testing.assert_array_equal(out, ramp[::2, ::2, ::2][:4, :4, :5])


def test_resample_labels_are_never_interpolated(ramp, make_affine):
    target = Grid((12, 12, 12), make_affine((0.7, 0.7, 0.7), rotation_deg=33, axis="y", shape=(12, 12, 12),
                                             centre=(3.5, 4, 4.5)))
    out = resample(ramp, np.eye(4), target, order=0)
    assert out.dtype == np.int16
    assert set(np.unique(out).tolist()) <= set(np.unique(ramp).tolist()) | {0}
    assert len(np.unique(out)) > 10


def test_resample_displacement_field(ramp, make_affine):
    src = np.eye(4)
    target = Grid(ramp.shape, np.eye(4))
    disp = np.zeros((3,) + ramp.shape, np.float32)
    disp[1] = 1.0  # pull every target voxel from 1 mm further along +y
    out = resample(ramp, src, target, order=0, displacement=disp)
    np.testing.assert_array_equal(out[:, :-1], ramp[:, 1:])
    assert np.all(out[:, -1] == 0)
    # a zero field equals the plain affine path, also on an oblique target
    oblique = Grid((10, 10, 10), make_affine((0.8, 1, 1.1), rotation_deg=15, axis="z", shape=(10, 10, 10),
                                             centre=(3.5, 4, 4.5)))
    img = ramp.astype(np.float32)
    np.testing.assert_allclose(resample(img, src, oblique, displacement=np.zeros((3, 10, 10, 10))),
                               resample(img, src, oblique), atol=1e-3)


def test_resample_volume_carries_target_affine(ramp):
    target = ras_grid(2.0, (4, 4, 5), (3.0, 4.0, 4.0))
    vol = resample_volume(Volume(ramp, np.eye(4)), target, order=0)
    np.testing.assert_array_equal(vol.affine, target.affine)
    assert vol.shape == (4, 4, 5)
    np.testing.assert_array_equal(vol.array, ramp[0:8:2, 1:9:2, 0:10:2])


# --- grids, orientation, boxes ------------------------------------------------------------------------

@pytest.mark.parametrize("spacing, shape, centre", [
    (2.0, (40, 48, 40), (0.0, 0.0, 0.0)),
    ((1.667, 1.75, 1.667), (96, 128, 96), (12.5, -30.0, 7.25)),
    ((4.0, 4.0, 4.0), (5, 6, 7), (-1.0, 2.0, 3.0)),
])
def test_ras_grid_centre_and_spacing(spacing, shape, centre):
    g = ras_grid(spacing, shape, centre)
    assert g.shape == shape
    np.testing.assert_allclose(g.centre_world(), centre, atol=1e-9)
    np.testing.assert_allclose(g.spacing, np.broadcast_to(spacing, (3,)))
    np.testing.assert_allclose(g.affine[:3, :3], np.diag(np.broadcast_to(spacing, (3,))))
    assert "".join(Volume(np.zeros(shape), g.affine).axcodes) == "RAS"
    # the first voxel is half the extent below the centre
    half_extent = np.asarray(g.spacing) * (np.asarray(shape) - 1) / 2
    np.testing.assert_allclose(g.affine[:3, 3], np.asarray(centre) - half_extent)


@pytest.mark.parametrize("affine3, codes", [
    (np.diag([-1.0, -1.0, 1.0]), "LPS"),
    (np.diag([0.9, -1.2, -3.0]), "RPI"),
    (np.array([[0, 0, -1.0], [2.0, 0, 0], [0, -1.5, 0]]), "AIL"),
])
def test_to_canonical_gives_ras_and_keeps_world_positions(affine3, codes):
    affine = np.eye(4)
    affine[:3, :3] = affine3
    affine[:3, 3] = [5.0, -7.0, 11.0]
    arr = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    vol = Volume(arr, affine)
    assert vol.axcodes == codes
    can = to_canonical(vol)
    assert can.axcodes == "RAS"
    assert sorted(can.shape) == sorted(arr.shape)
    assert np.all(np.diag(can.affine)[:3] > 0)
    # every voxel keeps its value at its world position
    ijk = np.indices(arr.shape).reshape(3, -1)
    world = affine[:3, :3] @ ijk + affine[:3, 3:4]
    can_ijk = np.rint(np.linalg.solve(can.affine[:3, :3], world - can.affine[:3, 3:4])).astype(int)
    np.testing.assert_array_equal(can.array[tuple(can_ijk)], arr[tuple(ijk)])


def test_to_canonical_oblique_gives_ras(make_affine):
    affine = make_affine((0.9, 1.2, 3.0), rotation_deg=20, axis="x", lps=True)
    can = to_canonical(Volume(np.random.default_rng(0).random((5, 6, 7)), affine))
    assert can.axcodes == "RAS"
    np.testing.assert_allclose(sorted(can.spacing), sorted([0.9, 1.2, 3.0]))


def test_world_bbox_single_voxel_and_block():
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    affine[:3, 3] = [10, 20, 30]
    mask = np.zeros((6, 6, 6), bool)
    mask[2, 3, 4] = True
    lo, hi = world_bbox(mask, affine)
    np.testing.assert_allclose(lo, [14, 29, 46])
    np.testing.assert_allclose(hi, [14, 29, 46])
    mask[1:4, 0:2, 5] = True
    lps = np.diag([-2.0, -3.0, 4.0, 1.0])
    lo, hi = world_bbox(mask, lps)
    np.testing.assert_allclose(lo, [-6, -9, 16])
    np.testing.assert_allclose(hi, [-2, 0, 20])
    with pytest.raises(ValueError):
        world_bbox(np.zeros((3, 3, 3), bool), affine)


def test_world_bbox_oblique_contains_all_voxels(make_affine):
    affine = make_affine((1.0, 2.0, 0.5), rotation_deg=30, axis="z", lps=True, centre=(1, 2, 3))
    mask = np.zeros((10, 10, 10), bool)
    mask[2:5, 3:8, 1:9] = True
    lo, hi = world_bbox(mask, affine)
    world = voxel_world(mask.shape, affine)[:, mask]
    np.testing.assert_allclose(lo, world.min(axis=1), atol=1e-9)
    np.testing.assert_allclose(hi, world.max(axis=1), atol=1e-9)


def test_profile_grid_centred_on_mask(make_affine):
    affine = make_affine((0.9, 1.2, 3.0), rotation_deg=20, axis="y", lps=True, centre=(4, 5, 6))
    mask = np.zeros((30, 30, 12), bool)
    mask[3:12, 5:20, 2:6] = True
    vol = Volume(mask.astype(np.float32), affine)
    g = profile_grid(vol, 2.0, (20, 22, 24), mask=mask)
    lo, hi = world_bbox(mask, affine)
    np.testing.assert_allclose(g.centre_world(), (lo + hi) / 2)
    assert g.shape == (20, 22, 24)
    # without a mask, the image foreground is used
    g2 = profile_grid(vol, 2.0, (20, 22, 24))
    np.testing.assert_allclose(g2.centre_world(), (lo + hi) / 2, atol=1.5)


def test_brain_mask_from_image_largest_component_filled():
    shape = (30, 30, 30)
    r = np.sqrt(((np.indices(shape) - 14.5) ** 2).sum(axis=0))
    img = np.where(r < 10, 100.0, 0.0)
    img[r < 3] = 0.0  # a dark hole inside (ventricles)
    img[1:4, 1:4, 1:4] = 100.0  # a separate bright speck
    img += np.random.default_rng(0).normal(0, 2, shape)
    mask = brain_mask_from_image(img)
    assert dice(mask, r < 10) > 0.95
    assert mask[r < 3].all()  # hole filled
    assert not mask[1:4, 1:4, 1:4].any()  # only the largest component


def test_percentile_normalise_range_and_order():
    rng = np.random.default_rng(0)
    img = rng.normal(300, 50, (20, 20, 20)).astype(np.float32)
    img[0, 0, 0] = 1e6  # an outlier is clipped, not allowed to squash the rest
    out = percentile_normalise(img)
    assert out.dtype == np.float32 and out.shape == img.shape
    assert out.min() == 0.0 and out.max() == 1.0
    assert out[0, 0, 0] == 1.0
    assert 0.4 < np.median(out) < 0.6
    lo, hi = np.percentile(img, [0.5, 99.5])
    inside = (img > lo) & (img < hi)
    np.testing.assert_allclose(out[inside], (img[inside] - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
    # monotone
    flat_i, flat_o = img.ravel(), out.ravel()
    order = np.argsort(flat_i)
    assert np.all(np.diff(flat_o[order]) >= 0)


def test_percentile_normalise_with_mask_and_constant():
    img = np.zeros((10, 10, 10), np.float32)
    img[2:8, 2:8, 2:8] = np.linspace(10, 20, 216).reshape(6, 6, 6)
    mask = img > 0
    out = percentile_normalise(img, 0, 100, mask=mask)
    np.testing.assert_allclose(out[mask], (img[mask] - 10) / 10, atol=1e-6)
    assert np.all(out[~mask] == 0)
    flat = percentile_normalise(np.full((4, 4, 4), 3.0))
    assert np.all(np.isfinite(flat)) and flat.min() >= 0 and flat.max() <= 1
