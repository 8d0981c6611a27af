"""Fixtures of the Slicer-glue tests: a headless MRML scene (slicer-core wheel), voxel->RAS affines of several
kinds, and a label map with known voxel counts per ventricle."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def scene():
    slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")
    return slicer.vtkMRMLScene()


@pytest.fixture
def grid_affines(make_affine):
    """grid_affines(shape) -> {"identity", "anisotropic", "oblique", "lps-oblique"}: voxel->RAS affines."""

    def affines(shape):
        return {
            "identity": np.eye(4),
            "anisotropic": make_affine((0.9, 1.3, 2.5), shape=shape, centre=(4.0, -7.0, 11.0)),
            "oblique": make_affine((1.1, 0.95, 1.7), rotation_deg=23.0, axis="x", shape=shape,
                                   centre=(-3.0, 2.0, 5.0)),
            "lps-oblique": make_affine((1.2, 1.2, 3.0), rotation_deg=-17.0, axis="z", lps=True, shape=shape,
                                       centre=(30.0, -40.0, 12.0)),
        }

    return affines


@pytest.fixture
def ventricle_labels():
    """ventricle_labels(shape) -> label map with known voxel counts per ventricle label plus some tissue;
    label 5 deliberately absent."""

    def label_map(shape=(24, 26, 22)):
        label = np.zeros(shape, np.int16)
        label[2:20, 2:22, 2:18] = 2  # white matter
        label[4:8, 5:12, 4:10] = 4  # 4*7*6 = 168 voxels
        label[12:16, 5:12, 4:10] = 43  # 168
        label[9:11, 8:12, 12:15] = 14  # 2*4*3 = 24
        label[9:11, 15:18, 5:8] = 15  # 2*3*3 = 18
        label[16:18, 14:16, 10:13] = 44  # 2*2*3 = 12
        return label

    return label_map
