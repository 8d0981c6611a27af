"""The widget's own decisions, on VentricleSynth.py loaded outside Slicer (Testing/module/conftest.py): the models
folder setting (audit 13) and the volume Segment starts with (audit 14)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from VentricleSynthLib.slicer_glue.environment import SETTINGS_MODELS_DIR

BUNDLED = Path(__file__).resolve().parents[2] / "VentricleSynth" / "Resources" / "Models"


def test_typing_a_models_folder_saves_it_once(load_module, monkeypatch):
    module, settings = load_module()
    widget = module.VentricleSynthWidget()
    widget.logic = module.VentricleSynthLogic()
    applied = []
    monkeypatch.setattr(widget, "applyModelDefaults", lambda: applied.append(widget.logic.modelsDir()))
    monkeypatch.setattr(widget, "updateModelSummary", lambda: None)
    history = []
    typed = str(BUNDLED)
    for n in range(1, len(typed) + 1):  # ctkPathLineEdit's currentPathChanged, once per keystroke
        widget.onModelsPathChanged(typed[:n])
        history.append(settings.get(SETTINGS_MODELS_DIR))
    assert set(history) == {None, typed} and history[-1] == typed
    assert applied == [typed]  # the bundle defaults applied once, for the finished path


def test_segment_never_starts_with_a_label_map_or_a_synthetic_sample(load_module):
    slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (MRML)")
    module, _settings = load_module()
    from VentricleSynthLib.slicer_glue.mrml import tag_synthetic
    from VentricleSynthLib.slicer_glue.volume_nodes import node_from_array

    scene = slicer.mrmlScene
    label_map = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    synthetic = node_from_array(np.zeros((4, 4, 4), np.float32), np.eye(4), name="sample", scene=scene)
    tag_synthetic(synthetic)
    assert module._panel.default_input_volume(scene) is None
    scan = node_from_array(np.ones((4, 4, 4), np.float32), np.eye(4), name="scan", scene=scene)
    assert scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode") is label_map  # what the module used to take
    assert module._panel.default_input_volume(scene) is scan
