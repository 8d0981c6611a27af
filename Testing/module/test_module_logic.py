"""The Slicer module's Logic itself, in blocking mode: VentricleSynth/VentricleSynth.py imported for real with
stand-ins for what the slicer-core wheel lacks (Qt, ScriptedLoadableModule, parameterNodeWrapper), running the
real worker on the `models` fixture's bundles (Testing/conftest.py)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from VentricleSynthLib.slicer_glue.dependencies import WORKER_PACKAGES
from VentricleSynthLib.worker.protocol import Progress

MODULE_PY = Path(__file__).resolve().parents[2] / "VentricleSynth" / "VentricleSynth.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def module_logic(monkeypatch, models):
    """VentricleSynth/VentricleSynth.py imported for real, with stand-ins for what slicer-core lacks (Qt,
    ScriptedLoadableModule, parameterNodeWrapper) and a scene as slicer.mrmlScene."""
    import importlib.util
    import types

    slicer = pytest.importorskip("slicer")

    settings: dict = {}

    class QSettings:
        def value(self, key, default=None):
            return settings.get(key, default)

        def setValue(self, key, value):
            settings[key] = value

    qt = types.ModuleType("qt")
    qt.QSettings = QSettings
    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class _Base:
        def __init__(self, *args, **kwargs):
            pass

    import unittest

    slm.ScriptedLoadableModule = slm.ScriptedLoadableModuleWidget = slm.ScriptedLoadableModuleLogic = _Base
    slm.ScriptedLoadableModuleTest = unittest.TestCase
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper = lambda cls: cls
    pnw.WithinRange = pnw.Choice = lambda *args, **kwargs: None
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", slm)
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", pnw)
    monkeypatch.setattr(slicer, "mrmlScene", slicer.vtkMRMLScene(), raising=False)
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # no __pycache__ inside the module folder
    spec = importlib.util.spec_from_file_location("VentricleSynth", MODULE_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
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
    progress = [e for e in events if isinstance(e, Progress)]
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
    assert set(logic.missingDependencies()) <= set(WORKER_PACKAGES.values())
    assert "torch" not in logic.missingDependencies()  # this venv has it
    logic.setUserModelsDir(str(tmp_path))
    assert logic.generatorDefaults() == {}
    task = logic.generate(40.0, steps=1, device="cpu", waitForCompletion=True, timeout=300)
    assert task.outcome.status == "user_error" and "not found" in task.outcome.message
    assert not task.loaded and not os.path.exists(task.tempDir)
