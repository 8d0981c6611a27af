"""The Slicer module's Logic itself, in blocking mode: VentricleSynth/VentricleSynth.py imported for real with
stand-ins for what the slicer-core wheel lacks (Testing/module/conftest.py), running the real worker on the
`models` fixture's bundles (Testing/conftest.py)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from VentricleSynthLib.worker.protocol import Progress

MODULE_PY = Path(__file__).resolve().parents[2] / "VentricleSynth" / "VentricleSynth.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def module_logic(monkeypatch, models, load_module):
    """VentricleSynth/VentricleSynth.py imported for real (Testing/module/conftest.py), a scene as
    slicer.mrmlScene, its Logic on the `models` bundles."""
    pytest.importorskip("slicer", reason="needs the slicer-core wheel (MRML)")
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    module, _settings = load_module()
    logic = module.VentricleSynthLogic()
    logic.setUserModelsDir(str(models[0]))
    return module, logic


def test_slicer_logic_generates_and_segments_in_blocking_mode(module_logic):
    """The Logic's own code path: command line, working directory, environment, temporary folder,
    loading RESULT files into nodes, cleanup. (The QProcess path shares all of it but the process.)"""
    module, logic = module_logic
    from VentricleSynthLib.slicer_glue import mrml
    from VentricleSynthLib.slicer_glue.segmentation_nodes import ventricle_report

    assert logic.modelsDir() == str(logic.userModelsDir())
    defaults = logic.generatorDefaults()
    low, high = defaults["trained_range_ml"]
    events = []
    task = logic.generate(round((low + high) / 2, 1), steps=2, seed=3, count=2, device="cpu",
                          waitForCompletion=True, onEvent=events.append, timeout=600)
    assert task.outcome.ok, task.outcome.message
    assert task.command[1:5] == ["-m", "VentricleSynthLib", "worker", "generate"] and "--watch-stdin" in task.command
    assert not os.path.exists(task.tempDir), "temporary folder left behind"
    assert len(task.loaded) == 2 and not logic.isRunning() and logic.tasks == []
    assert task.cwd == module.LIBRARY_PARENT_DIR == str(MODULE_PY.parents[1])  # `-m VentricleSynthLib` finds it
    assert task.environment["PYTHONNOUSERSITE"] == "1" and task.command[0] == sys.executable
    assert task.command[task.command.index("--models") + 1] == logic.modelsDir()
    progress = [e for e in events if isinstance(e, Progress) and e.stage in ("mask", "image")]  # not "redraw"
    assert progress[-1].fraction == pytest.approx(1.0) and len(progress) == 2 * 2 * 2
    volume_node, segmentation_node = task.loaded[0]
    assert mrml.is_synthetic(volume_node) and mrml.is_synthetic(segmentation_node)
    assert volume_node.GetScene() is not None  # in slicer.mrmlScene
    record = json.loads(volume_node.GetAttribute(mrml.RECORD_ATTRIBUTE))
    assert ventricle_report(segmentation_node)["ventricle_ml"] == pytest.approx(record["got_ml"], abs=1e-3)

    task = logic.segment(volume_node, device="cpu", waitForCompletion=True, timeout=600)
    assert not os.path.exists(task.tempDir)
    if (Path(logic.modelsDir()) / "segmenter").is_dir():
        assert task.outcome.ok, task.outcome.message
        assert ventricle_report(task.loaded[0])["ventricle_ml"] >= 0
    else:  # no segmenter bundle (or this small random-model sample refused as input): a clear refusal
        assert task.outcome.status == "user_error" and task.outcome.message and not task.loaded

    task = logic.modelsInfo(waitForCompletion=True, timeout=300)
    assert task.outcome.ok and task.outcome.results[0]["kind"] == "models"


def test_slicer_logic_reports_missing_models_and_dependencies(module_logic, tmp_path):
    module, logic = module_logic
    assert logic.missingDependencies() == []  # this venv has the tested versions of every requirement
    logic.setUserModelsDir(str(tmp_path))
    assert logic.generatorDefaults() == {}
    task = logic.generate(40.0, steps=1, device="cpu", waitForCompletion=True, timeout=300)
    assert task.outcome.status == "user_error" and "not found" in task.outcome.message
    assert not task.loaded and not os.path.exists(task.tempDir)
