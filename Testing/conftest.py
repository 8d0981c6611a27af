"""Shared fixtures: small synthetic NIfTI files, voxel->world affines, a CLI runner, the models folder for real
worker runs, and tiny generator and segmenter models trained once per test session (`trained`, `tiny_segmenter`).
Plain helpers that tests import live in testing_helpers.py (several conftest.py files exist, so `conftest` is not
an importable name).

Real worker runs use, in order: $VENTRICLESYNTH_TEST_MODELS, the bundled VentricleSynth/Resources/Models, or
small *random-weight* bundles written here (plumbing only: no training, no quality claims).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from testing_helpers import run_train, tiny_generator_config, tiny_segmenter_config

REPO_ROOT = Path(__file__).resolve().parents[1]
# Set by `make test-slicer-pythons`: this Python is one of Slicer's (3.9, 3.12) with only what Slicer's own process
# has; tests that run the worker in it (marked, or using the model fixtures) are left to the project's Python.
SLICER_PYTHON_SUITE = os.environ.get("VENTRICLESYNTH_SLICER_PYTHON_SUITE")
WORKER_FIXTURES = {"models", "trained", "tiny_segmenter"}


def pytest_collection_modifyitems(config, items):
    if not SLICER_PYTHON_SUITE:
        return
    skip = pytest.mark.skip(reason=f"runs the worker; Slicer's Python {SLICER_PYTHON_SUITE} suite has no torch here")
    for item in items:
        if item.get_closest_marker("worker_packages") or WORKER_FIXTURES & set(item.fixturenames):
            item.add_marker(skip)


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


def _random_bundles(root: Path) -> Path:
    """Small random-weight generator bundles on a 16^3 grid of 4 mm voxels (no training)."""
    import torch

    from VentricleSynthLib.bundles import format as bundles
    from VentricleSynthLib.generation.networks import image_autoencoder, image_unet, mask_autoencoder, mask_unet
    from VentricleSynthLib.labels import LABELS, SCHEMA

    torch.manual_seed(0)
    shape, spacing = (16, 16, 16), 4.0
    affine = np.diag([spacing] * 3 + [1.0])
    affine[:3, 3] = -spacing * (np.asarray(shape) - 1) / 2
    ae = {"channels": [8, 8], "num_res_blocks": 1, "attention_levels": [False, False], "norm_num_groups": 8,
          "with_encoder_nonlocal_attn": False, "with_decoder_nonlocal_attn": False, "latent_channels": 3}
    unet = {"channels": [8, 8], "num_res_blocks": 1, "attention_levels": [False, False], "norm_num_groups": 8,
            "num_head_channels": 8}
    common = {"version": "test-random-weights",
              "scheduler": {"num_train_timesteps": 1000, "schedule": "scaled_linear_beta", "beta_start": 0.0015,
                            "beta_end": 0.0205},
              "scale_factor": 1.0, "latent_shape": [3, 8, 8, 8], "affine": affine.tolist(),
              "profile": {"name": "test-random", "spacing": [spacing] * 3, "shape": list(shape)},
              "labels": {"freesurfer": list(LABELS), "names": [SCHEMA[v][0] for v in LABELS]}}
    bundles.save_bundle(root / "mask_generator", {
        "name": "mask_generator", **common, "architecture": {"autoencoder": ae, "unet": unet},
        "volume_normalisation": {"min_ml": 5.0, "max_ml": 100.0, "quantity": "ventricle_ml"},
        "sampling": {"guidance": 2.0, "steps": 3}}, {"autoencoder": mask_autoencoder(ae), "unet": mask_unet(unet, 3)})
    image_ae = {**ae, "spade_intermediate_channels": 8}
    image_un = {**unet, "spade_intermediate_channels": 8}
    bundles.save_bundle(root / "image_generator", {
        "name": "image_generator", **common, "architecture": {"autoencoder": image_ae, "unet": image_un},
        "sampling": {"steps": 3}}, {"autoencoder": image_autoencoder(image_ae), "unet": image_unet(image_un, 3)})
    return root


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """(models folder, origin): trained bundles when available, else random-weight plumbing bundles."""
    env = os.environ.get("VENTRICLESYNTH_TEST_MODELS")
    if env and (Path(env) / "mask_generator").is_dir():
        return Path(env), "env"
    bundled = REPO_ROOT / "VentricleSynth" / "Resources" / "Models"
    if (bundled / "mask_generator").is_dir() and (bundled / "image_generator").is_dir():
        return bundled, "bundled"
    return _random_bundles(tmp_path_factory.mktemp("random-models")), "random"


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """WORK folder with the data and all four generator stages trained at a reduced tiny profile (bundles/)."""
    work = tmp_path_factory.mktemp("gen")
    config = tiny_generator_config(work)
    for stage in ("data", "mask-ae", "mask-ldm", "image-ae", "image-ldm"):
        done = run_train(stage, "--config", config, "--work", work, timeout=600)
        assert done.returncode == 0, f"{stage}: {done.stderr[-2000:]}"
    return work


@pytest.fixture(scope="session")
def tiny_segmenter(tmp_path_factory):
    """{work, config, bundle}: a segmenter trained two epochs of two iterations at a reduced tiny profile."""
    work = tmp_path_factory.mktemp("segwork")
    config = tiny_segmenter_config(work / "tiny_reduced.yaml", trainer={
        "epochs": 2, "iterations_per_epoch": 2, "val_iterations_per_epoch": 1, "checkpoint_every": 1,
        "initial_lr": 1.0e-6})
    done = run_train("data", "--config", config, "--work", work)
    assert done.returncode == 0, done.stderr[-3000:]
    done = run_train("segmenter", "--config", config, "--work", work)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    return {"work": work, "config": config, "bundle": work / "bundles" / "segmenter"}
