"""The worker runs the module offers, built but not launched (the Logic's tests run them for real): command
lines, progress plans, result loaders, temporary folders, and refusals before anything runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from VentricleSynthLib.slicer_glue import runs
from VentricleSynthLib.slicer_glue.task import WorkerTask


def test_generate_task(tmp_path):
    task = runs.generate_task(sys.executable, "/models", str(tmp_path), 42.5, guidance=3.0, steps=7, seed=2, count=3,
                              device="cpu")
    try:
        assert isinstance(task, WorkerTask) and task.kind == "generate" and task.cwd == str(tmp_path)
        assert Path(task.tempDir).is_dir() and Path(task.tempDir).name.startswith("VentricleSynth-")
        assert task.command == [sys.executable, "-m", "VentricleSynthLib", "worker", "generate", "--ventricle-ml",
                                "42.5", "--guidance", "3.0", "--steps", "7", "--seed", "2", "--count", "3",
                                "--device", "cpu", "--models", "/models", "--out",
                                os.path.join(task.tempDir, "out"), "--watch-stdin"]
        assert task.protocol.plan == [("mask", 7), ("image", 7)] and task.protocol.count == 3
        assert task.environment["PYTHONUNBUFFERED"] == "1"
        assert task.loader({"kind": "models"}) is None  # only samples are loaded
        assert not task.finished and task.loaded == []
    finally:
        os.rmdir(task.tempDir)
    unplanned = runs.generate_task(sys.executable, None, str(tmp_path), 40)
    os.rmdir(unplanned.tempDir)
    assert unplanned.protocol.plan == [] and "--steps" not in unplanned.command and "--models" not in unplanned.command


def test_generate_task_gives_each_stage_its_own_steps(tmp_path):
    """Audit 6: the panel's image steps reach the worker's image stage (it used to get the mask's count)."""
    task = runs.generate_task(sys.executable, None, str(tmp_path), 40.0, steps=25, image_steps=50)
    os.rmdir(task.tempDir)
    command = task.command
    assert command[command.index("--steps") + 1] == "25" and command[command.index("--image-steps") + 1] == "50"
    assert task.protocol.plan == [("mask", 25), ("image", 50)]


def test_segment_task_writes_the_input_volume(tmp_path):
    slicer = pytest.importorskip("slicer")
    from VentricleSynthLib.io.nifti import load_image
    from VentricleSynthLib.slicer_glue.volume_nodes import node_from_array

    scene = slicer.vtkMRMLScene()
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    node = node_from_array(np.arange(24, dtype=np.float32).reshape(2, 3, 4), affine, scene=scene)
    task = runs.segment_task(sys.executable, "/models", str(tmp_path), node, device="cuda", tta=True)
    input_path = os.path.join(task.tempDir, "input.nii.gz")
    assert task.command == [sys.executable, "-m", "VentricleSynthLib", "worker", "segment", "--input", input_path,
                            "--out", os.path.join(task.tempDir, "out"), "--device", "cuda", "--models", "/models",
                            "--tta", "--watch-stdin"]
    written = load_image(input_path)
    assert np.array_equal(written.array, np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    assert np.allclose(written.affine, affine)
    assert task.protocol.plan == [("segment", 1)] and task.loader({"kind": "sample"}) is None
    task._finish(task.protocol.finish(0))  # what the end of a run does: the temporary folder goes
    assert not os.path.exists(task.tempDir)


def test_segment_task_refusals_leave_nothing_behind(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(ValueError, match="Select an input volume"):
        runs.segment_task(sys.executable, None, str(tmp_path), None)
    slicer = pytest.importorskip("slicer")
    rgb = slicer.vtkMRMLScene().AddNewNodeByClass("vtkMRMLVectorVolumeNode", "colour photo")
    slicer.util.updateVolumeFromArray(rgb, np.zeros((4, 5, 6, 3), np.uint8))
    with pytest.raises(ValueError, match="single-component 3-D"):
        runs.segment_task(sys.executable, None, str(tmp_path), rgb)
    assert list(tmp_path.iterdir()) == []  # no temporary folder left


def test_info_task(tmp_path):
    task = runs.info_task(sys.executable, "/models", str(tmp_path))
    assert task.kind == "info" and task.tempDir is None and task.loader is None
    assert task.command == [sys.executable, "-m", "VentricleSynthLib", "worker", "info", "--models", "/models"]
