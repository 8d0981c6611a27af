"""Plain helpers the tests import (`from testing_helpers import ...`); fixtures live in conftest.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]


def voxel_world(shape, affine) -> np.ndarray:
    """(3, *shape) world coordinates (mm) of every voxel centre."""
    ijk = np.indices(shape).reshape(3, -1).astype(float)
    return (affine[:3, :3] @ ijk + affine[:3, 3:4]).reshape((3,) + tuple(shape))


TRAIN = [sys.executable, str(REPO_ROOT / "training" / "train.py")]
TRAIN_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1"}


def run_train(*args, timeout: float = 3600, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python training/train.py ARGS...` from the repository root, one thread, no nnU-Net worker processes."""
    return subprocess.run([*TRAIN, *map(str, args)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env or TRAIN_ENV)


def tiny_generator_config(folder: Path, **train_overrides) -> Path:
    """folder/tiny_test.yaml: the tiny config with a small cohort and some generator stages' train settings changed
    (stage -> dict)."""
    import yaml

    config = yaml.safe_load((REPO_ROOT / "training" / "configs" / "tiny.yaml").read_text())
    config["data"]["natural"]["count"] = 8
    config["data"]["enlarged"]["count"] = 0
    config["data"]["uniform"]["count"] = 6
    for stage, values in train_overrides.items():
        config["generators"][stage]["train"].update(values)
    path = Path(folder) / "tiny_test.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def tiny_segmenter_config(path: Path, **segmenter) -> Path:
    """The tiny config with a small cohort (8 natural, 2 enlarged) and the segmenter section updated."""
    import yaml

    config = yaml.safe_load((REPO_ROOT / "training" / "configs" / "tiny.yaml").read_text())
    config["data"].update({"workers": 1, "natural": {"count": 8, "val_fraction": 0.25},
                           "enlarged": {"count": 2, "low_ml": 60, "high_ml": 150}, "uniform": {"count": 0}})
    config["segmenter"] = {**config.get("segmenter", {}), **segmenter}
    path.write_text(yaml.safe_dump(config))
    return path
