"""Volumes in mL with hand-computed expectations for anisotropic, oblique and flipped geometry."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from VentricleSynthLib.labels import LABELS, VENTRICLE_LABELS, label_name
from VentricleSynthLib.volumes import label_volumes_ml, tiv_ml, ventricle_volume_ml, volume_report, voxel_volume_ml


def _thousand_ventricle_voxels() -> np.ndarray:
    """20x20x10 grid with a 10x10x10 block (1000 voxels) of left lateral ventricle and some other tissue."""
    lab = np.zeros((20, 20, 10), np.int16)
    lab[10:, :, :] = 2  # white matter: 2000 voxels, not ventricle
    lab[:10, :10, :] = 4  # 1000 ventricle voxels
    return lab


@pytest.mark.parametrize("name, affine3", [
    ("anisotropic RAS", np.diag([2.0, 1.0, 0.5])),
    ("LPS flipped", np.diag([-2.0, -1.0, 0.5])),
    ("single flip", np.diag([2.0, 1.0, -0.5])),
    ("permuted axes", np.array([[0, 0, 0.5], [2.0, 0, 0], [0, 1.0, 0]])),
])
def test_thousand_voxels_of_2x1x05_mm_is_one_ml(name, affine3, make_affine):
    affine = np.eye(4)
    affine[:3, :3] = affine3
    affine[:3, 3] = [-37.0, 12.5, 80.0]  # translation never matters
    lab = _thousand_ventricle_voxels()
    assert voxel_volume_ml(affine) == pytest.approx(0.001)
    assert ventricle_volume_ml(lab, affine) == pytest.approx(1.0)
    assert tiv_ml(lab, affine) == pytest.approx(3.0)


@pytest.mark.parametrize("axis, degrees", [("x", 20.0), ("y", -33.0), ("z", 45.0)])
@pytest.mark.parametrize("lps", [False, True])
def test_oblique_affine_volume(axis, degrees, lps, make_affine):
    affine = make_affine((2.0, 1.0, 0.5), rotation_deg=degrees, axis=axis, lps=lps, centre=(5, -3, 2))
    # the affine really is oblique (not axis-aligned) and keeps the voxel size
    assert np.count_nonzero(np.abs(affine[:3, :3]) > 1e-6) > 3
    lab = _thousand_ventricle_voxels()
    assert ventricle_volume_ml(lab, affine) == pytest.approx(1.0)
    assert tiv_ml(lab, affine) == pytest.approx(3.0)


def test_sheared_affine_uses_determinant():
    # columns (1,0,0), (1,1,0), (0,0,3): the parallelepiped has volume |det| = 3 mm^3, not 1*sqrt2*3
    affine = np.eye(4)
    affine[:3, :3] = [[1, 1, 0], [0, 1, 0], [0, 0, 3]]
    assert voxel_volume_ml(affine) == pytest.approx(0.003)


def test_per_label_volumes():
    lab = np.zeros((10, 10, 10), np.int16)
    lab.flat[:100] = 4
    lab.flat[100:300] = 43
    lab.flat[300:350] = 14
    lab.flat[350:360] = 15
    lab.flat[360:500] = 2  # not a ventricle
    lab.flat[500:520] = 24  # CSF, not a ventricle
    affine = np.diag([2.0, 2.0, 2.0, 1.0])  # 8 mm^3 = 0.008 mL per voxel
    per = label_volumes_ml(lab, affine)
    assert set(per) == set(VENTRICLE_LABELS)
    assert per[4] == pytest.approx(0.8)
    assert per[43] == pytest.approx(1.6)
    assert per[14] == pytest.approx(0.4)
    assert per[15] == pytest.approx(0.08)
    assert per[5] == 0.0 and per[44] == 0.0
    assert ventricle_volume_ml(lab, affine) == pytest.approx(0.8 + 1.6 + 0.4 + 0.08)
    assert tiv_ml(lab, affine) == pytest.approx(520 * 0.008)
    # other label sets
    other = label_volumes_ml(lab, affine, labels=(2, 24, 60))
    assert other == pytest.approx({2: 140 * 0.008, 24: 20 * 0.008, 60: 0.0})


def test_volume_report_contents():
    lab = np.zeros((10, 10, 10), np.int16)
    lab[:5] = 2  # 500 voxels of white matter
    lab[0, :, :] = 4  # 100 voxels
    lab[1, :5, :] = 44  # 50 voxels
    affine = np.diag([1.0, 2.0, 3.0, 1.0])  # 6 mm^3
    rep = volume_report(lab, affine)
    assert rep["ventricle_ml"] == pytest.approx(150 * 0.006)
    assert rep["tiv_ml"] == pytest.approx(500 * 0.006)
    assert rep["relative_volume"] == pytest.approx(150 / 500)
    assert rep["per_label_ml"] == pytest.approx({label_name(v): 0.0 for v in VENTRICLE_LABELS}
                                                | {"Left-Lateral-Ventricle": 0.6, "Right-Inf-Lat-Vent": 0.3})


def test_volume_report_empty_map_has_no_relative_volume():
    rep = volume_report(np.zeros((4, 4, 4), np.int16), np.eye(4))
    assert rep["ventricle_ml"] == 0 and rep["tiv_ml"] == 0
    assert rep["relative_volume"] is None


@settings(max_examples=40, deadline=None)
@given(lab=hnp.arrays(np.int16, (6, 5, 4), elements=st.sampled_from(LABELS)),
       spacing=st.tuples(*[st.floats(0.3, 4.0)] * 3), degrees=st.floats(-90, 90))
def test_volume_properties(make_affine, lab, spacing, degrees):
    affine = make_affine(spacing, rotation_deg=degrees, axis="y", lps=True)
    voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000
    total = ventricle_volume_ml(lab, affine)
    n_vent = sum(int((lab == v).sum()) for v in VENTRICLE_LABELS)
    assert total == pytest.approx(n_vent * voxel_ml)
    assert total == pytest.approx(sum(label_volumes_ml(lab, affine).values()))
    assert tiv_ml(lab, affine) == pytest.approx(np.count_nonzero(lab) * voxel_ml)
    assert total <= tiv_ml(lab, affine) + 1e-12


def test_fragmented_ventricles_are_in_more_pieces_than_the_six_structures():
    from VentricleSynthLib.volumes import MAX_VENTRICLE_PIECES, fragmented, ventricle_pieces

    label = np.zeros((30, 30, 30), np.int16)
    label[5:15, 5:15, 5:15] = 4  # one block of 1000 voxels
    assert ventricle_pieces(label) == (1, 1.0) and not fragmented(label)
    label[15, 15, 15] = 43  # touching the block's corner only: the same 26-connected piece
    assert ventricle_pieces(label)[0] == 1
    for k in range(MAX_VENTRICLE_PIECES - 1):  # specks up to six pieces: whole
        label[20 + 2 * k, 25, 25] = 14
    assert ventricle_pieces(label)[0] == MAX_VENTRICLE_PIECES and not fragmented(label)
    label[28, 28, 28] = 15  # one speck more, whatever its size
    n, largest = ventricle_pieces(label)
    assert n == MAX_VENTRICLE_PIECES + 1 and largest > 0.99 and fragmented(label)
    assert ventricle_pieces(np.zeros((4, 4, 4), np.int16)) == (0, 0.0) and not fragmented(np.zeros((4, 4, 4)))
