"""Shared fixtures: small synthetic NIfTI files, voxel->world affines, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _rotation(axis: str, degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _make_affine(spacing=(1.0, 1.0, 1.0), rotation_deg: float = 0.0, axis: str = "z", lps: bool = False,
                 shape=None, centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    """4x4 voxel->RAS affine: (LPS flip) @ rotation @ diag(spacing), placed so that the centre voxel of
    `shape` (if given) sits at world `centre`, else with the origin voxel at `centre`."""
    m = _rotation(axis, rotation_deg) @ np.diag(np.asarray(spacing, dtype=float))
    if lps:
        m = np.diag([-1.0, -1.0, 1.0]) @ m
    affine = np.eye(4)
    affine[:3, :3] = m
    offset = np.zeros(3) if shape is None else (np.asarray(shape, dtype=float) - 1) / 2
    affine[:3, 3] = np.asarray(centre, dtype=float) - m @ offset
    return affine


@pytest.fixture(scope="session")
def make_affine():
    """Factory for voxel->RAS affines: make_affine(spacing, rotation_deg, axis, lps, shape, centre)."""
    return _make_affine


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    img = nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine)
    nib.save(img, str(path))
    return path


@pytest.fixture
def nifti_file(tmp_path):
    """Factory writing `array` (with `affine`, default identity) to tmp_path/name; returns the path."""

    def make(name: str, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
        return _write_nifti(tmp_path / name, array, affine)

    return make


@pytest.fixture
def image_and_label():
    """A small synthetic head: (image float32, label int16) 24^3 with a brain, CSF and two ventricles."""
    shape = (24, 24, 24)
    ijk = np.indices(shape).astype(float)
    r = np.sqrt(((ijk - 11.5) ** 2).sum(axis=0))
    label = np.zeros(shape, np.int16)
    label[r < 10] = 24  # CSF shell
    label[r < 9] = 2  # white matter
    label[(r < 9) & (ijk[0] >= 12)] = 41
    label[8:11, 9:14, 9:14] = 4  # left lateral ventricle (low i = left in RAS)
    label[13:16, 9:14, 9:14] = 43  # right lateral ventricle
    label[11:13, 10:13, 6:9] = 14  # third ventricle
    rng = np.random.default_rng(0)
    image = np.where(label > 0, 100.0, 5.0) + np.where(np.isin(label, (4, 43, 14, 24)), -60.0, 0.0)
    image = (image + rng.normal(0, 2, shape)).astype(np.float32)
    return image, label


@pytest.fixture
def run_cli():
    """Run `python -m VentricleSynthLib ARGS...` in a subprocess from the repository root."""

    def run(*args, timeout: float = 120) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "2")
        return subprocess.run([sys.executable, "-m", "VentricleSynthLib", *map(str, args)], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=timeout, env=env)

    return run
