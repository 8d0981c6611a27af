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


def segmenter_cases(n: int, shape=(28, 40, 32), spacing: float = 4.0) -> list:
    """n small segmenter cases (training.segmenter.raw_export.Case) already on a profile grid of `shape` and
    `spacing`: images in [0, 1], two ventricle labels (FreeSurfer 4 and 43); the last one is the val split."""
    from training.segmenter.raw_export import Case
    from VentricleSynthLib.io.nifti import Volume

    affine = np.diag([spacing] * 3 + [1.0])
    out = []
    for i in range(n):
        image = np.random.default_rng(i).random(shape).astype(np.float32) * 0.5
        label = np.zeros(shape, np.int16)
        label[8:14 + i, 10:20, 12:18], label[18:24, 10:20 + i, 12:18] = 4, 43
        image[label > 0] += 0.4
        out.append(Case(f"case_{i:04d}", f"test/case_{i}", "val" if i == n - 1 else "train",
                        lambda im=image, lab=label: (Volume(im, affine), Volume(lab, affine))))
    return out


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


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Everything under `root` (hidden files too; `root` itself if it is a file): sha256 (or '<dir>', or a symlink's
    target) and permission bits, to show that a command changed nothing."""
    import hashlib

    def state(path: Path) -> tuple[str, int]:
        if path.is_symlink():
            return f"-> {os.readlink(path)}", 0
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "<dir>"
        return digest, path.stat().st_mode & 0o777

    root = Path(root)
    if not root.is_dir() or root.is_symlink():
        return {".": state(root)} if root.exists() or root.is_symlink() else {}
    return {str(p.relative_to(root)): state(p) for p in sorted(root.rglob("*"))}


def assert_one_error(returncode: int, stderr: str, *words: str) -> str:
    """A user error as the house promises: exit 2, no traceback, exactly one `error:` line on stderr, the last one
    (warnings may come before it), naming `words`."""
    assert returncode == 2, (returncode, stderr)
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors == lines[-1:], stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def labelled_heads_folder(root: Path, cases: int = 2, shape=(30, 36, 30)) -> Path:
    """A plain folder `CASE/t1.nii.gz` + `CASE/seg.nii.gz` of small synthetic heads (FreeSurfer labels, 2 mm)."""
    import nibabel as nib

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1)
    ijk = np.indices(shape).astype(float)
    c = (np.asarray(shape) - 1) / 2
    r = np.sqrt(sum(((ijk[i] - c[i]) / rad) ** 2 for i, rad in enumerate((12, 15, 12))))
    for k in range(cases):
        lab = np.zeros(shape, np.int16)
        lab[r < 1.0] = 24
        lab[r < 0.9] = 2
        lab[10:13, 13:21 + k % 5, 13:17] = 4
        lab[17:20, 13:21 + k % 5, 13:17] = 43
        img = np.where(lab == 2, 110.0, np.where(lab > 0, 25.0, 0.0))
        img = (img + np.random.default_rng(k).normal(0, 2.0, shape)).astype(np.float32)
        for name, array in (("t1.nii.gz", img), ("seg.nii.gz", lab)):
            (root / f"case{k:03d}").mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(array, affine), str(root / f"case{k:03d}" / name))
    return root
