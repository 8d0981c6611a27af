"""Planning and preprocessing (training/segmenter/planning.py, nnunet_env.pools_in_process): with one process
(nnUNet_def_n_proc=1) nnU-Net's integrity check, fingerprint, planner and preprocessing start no child process,
and give what nnU-Net's own pipeline with its pools gives (fingerprint, plans, every preprocessed case).

Why: nnU-Net starts a spawn pool even for one process and forks 12 workers for every listing of the raw files;
on a loaded machine the CPU check of benchmarks/gpu_check.py ran out of its budget there.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from testing_helpers import REPO_ROOT, segmenter_cases

from training.config import Config
from training.segmenter import nnunet_env
from training.segmenter.planning import CONFIGURATION, PLANS, plan_and_preprocess
from training.segmenter.raw_export import dataset_name, export_raw
from training.stage_configs import SegmenterConfig
from VentricleSynthLib.imaging.profile import Profile

pytestmark = pytest.mark.slow
DATASET_ID = 907

NNUNET_WITH_POOLS = f"""
from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset,
    plan_experiment_dataset, preprocess_dataset)
extract_fingerprint_dataset({DATASET_ID}, num_processes=2, check_dataset_integrity=True, verbose=False,
                            show_progress_bar=False)
plan_experiment_dataset({DATASET_ID}, overwrite_plans_name="{PLANS}")
preprocess_dataset({DATASET_ID}, "{PLANS}", ("{CONFIGURATION}",), [2], verbose=False, show_progress_bar=False)
"""


def _folders(root: Path) -> dict[str, str]:
    return {var: str(root / sub) for var, sub in nnunet_env.FOLDERS.items()}


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and not isinstance(a, np.ndarray):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(np.array_equal(a, b))


def _case(folder: Path, case: str) -> tuple:
    import blosc2

    return (blosc2.open(str(folder / f"{case}.b2nd"))[:], blosc2.open(str(folder / f"{case}_seg.b2nd"))[:],
            pickle.loads((folder / f"{case}.pkl").read_bytes()))


def test_one_process_plans_in_this_process_with_the_results_of_nnunets_own_pools(tmp_path, monkeypatch):
    cases = segmenter_cases(3)
    name = dataset_name(DATASET_ID, "T")
    profile = Profile("t", (4.0, 4.0, 4.0), (28, 40, 32))
    ours, theirs = _folders(tmp_path / "ours"), _folders(tmp_path / "theirs")
    theirs["nnUNet_raw"] = ours["nnUNet_raw"]  # one raw dataset (NibabelIO, as gpu_check runs it), two pipelines
    for folder in {**ours, **theirs}.values():
        Path(folder).mkdir(parents=True, exist_ok=True)
    export_raw(cases, Path(ours["nnUNet_raw"]), name, profile, progress=lambda _: None, reader_writer="NibabelIO")
    env = {**os.environ, **theirs, "OMP_NUM_THREADS": "1", "nnUNet_n_proc_DA": "1"}
    done = subprocess.run([sys.executable, "-c", NNUNET_WITH_POOLS], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    for var, folder in ours.items():
        monkeypatch.setenv(var, folder)
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")

    def no_child(self):
        raise AssertionError(f"a child process was started: {self}")

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", no_child)
    settings = SegmenterConfig.from_config(Config("x", None, {"segmenter": {
        "plan": "default", "dataset_id": DATASET_ID, "image_reader_writer": "NibabelIO"}}))
    plan_and_preprocess(DATASET_ID, cases, settings, profile, progress=lambda _: None)
    real = {"multiprocessing": multiprocessing, "Pool": multiprocessing.Pool}
    for module, attribute in nnunet_env.POOL_MODULES.items():
        assert getattr(sys.modules[module], attribute) is real[attribute], f"{module}.{attribute} not given back"

    pre = {side: Path(folders["nnUNet_preprocessed"]) / name for side, folders in (("ours", ours),
                                                                                   ("theirs", theirs))}
    for file in ("dataset_fingerprint.json", f"{PLANS}.json", "dataset.json"):
        assert json.loads((pre["ours"] / file).read_text()) == json.loads((pre["theirs"] / file).read_text()), file
    data = {side: p / f"{PLANS}_{CONFIGURATION}" for side, p in pre.items()}
    for case in cases:
        mine, nnunets = _case(data["ours"], case.case_id), _case(data["theirs"], case.case_id)
        assert _same(mine, nnunets), case.case_id
        gt = f"gt_segmentations/{case.case_id}.nii.gz"
        assert (pre["ours"] / gt).read_bytes() == (pre["theirs"] / gt).read_bytes()
    assert "nibabel_stuff" in mine[2]  # read through NibabelIO
