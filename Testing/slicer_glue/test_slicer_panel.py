"""What the module's panel shows, on stand-in widgets (qt is not importable here): worker events, buttons, the
bundle's defaults, results of generate / segment / info runs, and the Models section's texts."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from VentricleSynthLib.slicer_glue import panel
from VentricleSynthLib.slicer_glue.mrml import RECORD_ATTRIBUTE
from VentricleSynthLib.worker.protocol import Message, Outcome, Plan, Progress, Result


class _Widget(types.SimpleNamespace):
    """A label, button, slider or progress bar: attributes, plus the calls the panel makes."""

    def setValue(self, value):
        self.value = value

    def appendPlainText(self, text):
        self.__dict__.setdefault("lines", []).append(text)

    def setRowCount(self, rows):
        self.rows = {} if rows == 0 else self.__dict__.get("rows", {})
        self.rowCount = rows

    def setItem(self, row, column, item):
        self.rows.setdefault(row, {})[column] = item


@pytest.fixture
def ui(monkeypatch):
    class Item:
        def __init__(self, text):
            self.text, self.toolTip, self.alignment = text, None, None

        def setToolTip(self, text):
            self.toolTip = text

        def setTextAlignment(self, alignment):
            self.alignment = alignment

    qt = types.SimpleNamespace(QTableWidgetItem=Item, Qt=types.SimpleNamespace(AlignRight=2, AlignVCenter=128))
    monkeypatch.setitem(sys.modules, "qt", qt)
    names = ("progressBar", "statusLabel", "logTextEdit", "generateButton", "segmentButton", "refreshModelsButton",
             "installDependenciesButton", "trainedRangeLabel", "ventricleVolumeSliderWidget", "generateResultLabel",
             "volumesTable", "segmentResultLabel", "modelsTable", "versionsLabel", "modelsCollapsibleButton",
             "exportVolumesButton")
    return types.SimpleNamespace(**{name: _Widget() for name in names})


def test_worker_events_on_the_bar_the_status_line_and_the_log(ui):
    panel.show_event(ui, Progress("mask", 3, 10, 1, 2, fraction=0.15))
    assert ui.progressBar.value == 15 and ui.statusLabel.text == "sample 1/2, mask: step 3/10"
    panel.show_event(ui, Message("warning", "low memory"))
    panel.show_event(ui, Message("error", "boom"))
    panel.show_event(ui, Message("log", "loading"))
    panel.show_event(ui, Result({"kind": "sample", "files": {"image": "/x"}, "got_ml": 41.5}))
    panel.show_event(ui, Plan([("mask", 2)], 1))  # nothing to show
    assert ui.statusLabel.text == "Warning: low memory"
    assert ui.logTextEdit.lines == ["warning: low memory", "error: boom", "loading",
                                    'result: {"kind": "sample", "got_ml": 41.5}']
    assert ui.progressBar.value == 15
    long = panel.event_display(Result({"kind": "x" * 1000}))[2]
    assert len(long) == len("result: ") + 500


def test_buttons_while_a_task_runs(ui):
    running = types.SimpleNamespace(kind="segment", finished=False)
    panel.update_buttons(ui, running, has_input=True)
    assert (ui.segmentButton.text, ui.segmentButton.enabled, ui.segmentButton.toolTip) == (
        "Cancel", True, "Stop the segmentation")
    assert (ui.generateButton.text, ui.generateButton.enabled) == ("Generate", False)
    assert not ui.refreshModelsButton.enabled and not ui.installDependenciesButton.enabled
    for task in (None, types.SimpleNamespace(kind="segment", finished=True)):
        panel.update_buttons(ui, task, has_input=False)
        assert ui.generateButton.enabled and ui.refreshModelsButton.enabled
        assert (ui.segmentButton.text, ui.segmentButton.enabled, ui.segmentButton.toolTip) == (
            "Segment ventricles", False, "Select an input volume first")
    panel.update_buttons(ui, types.SimpleNamespace(kind="generate", finished=False), has_input=True)
    assert ui.generateButton.text == "Cancel" and ui.generateButton.enabled and not ui.segmentButton.enabled
    assert not ui.exportVolumesButton.enabled  # no segmentation with a volume table yet


def test_bundle_defaults_once_per_models_folder(ui):
    defaults = {"models_dir": "/m", "trained_range_ml": (8.54, 150.0), "guidance": 2.0, "steps": 10,
                "image_steps": 30, "profile": "tiny"}
    node = types.SimpleNamespace(defaultsFromModels="", guidanceScale=4.0, maskSteps=50, imageSteps=50,
                                 ventricleVolumeMl=40.0)
    panel.apply_model_defaults(ui, node, defaults, "/m")
    assert (ui.ventricleVolumeSliderWidget.minimum, ui.ventricleVolumeSliderWidget.maximum) == (8.5, 150.0)
    assert ui.trainedRangeLabel.text == "Trained range: 8.5 to 150.0 mL (tiny profile)"
    # audit 6: each stage gets its own bundle's steps (the image stage no longer inherits the mask's 10)
    assert (node.guidanceScale, node.maskSteps, node.imageSteps, node.ventricleVolumeMl, node.defaultsFromModels) \
        == (2.0, 10, 30, 79.3, "/m")
    node.guidanceScale, node.maskSteps = 7.0, 3  # the user's own choices
    panel.apply_model_defaults(ui, node, defaults, "/m")
    assert (node.guidanceScale, node.maskSteps, node.imageSteps) == (7.0, 3, 30)
    panel.apply_model_defaults(ui, None, {}, "/nowhere")
    assert ui.trainedRangeLabel.text == "No mask model found in /nowhere"
    assert panel.bundle_parameters({"models_dir": "/n"}, "/m") == {"defaultsFromModels": "/n"}


@pytest.mark.parametrize("trained", [(0.01, 5.0), (0.3, 0.05), (120.0, 900.0), (8.54, 150.0)])
def test_volume_slider_stays_inside_the_parameter_range(trained):
    """Audit 15: the slider's range (the bundle's trained range) never leaves the range the parameter node
    accepts, which VentricleSynth.py takes from the same constant (a value outside it raised in the connector)."""
    (low, high), _text = panel.trained_range({"trained_range_ml": trained}, "/m")
    minimum, maximum = panel.VOLUME_RANGE_ML
    assert minimum <= low <= high <= maximum
    source = (Path(__file__).resolve().parents[2] / "VentricleSynth" / "VentricleSynth.py").read_text()
    assert re.search(r"ventricleVolumeMl: Annotated\[float, WithinRange\(\*[\w.]*VOLUME_RANGE_ML\)\]", source)


def _node(name, record):
    return types.SimpleNamespace(GetName=lambda: name, GetAttribute=lambda key: json.dumps(record)
                                 if key == RECORD_ATTRIBUTE else None, GetDisplayNode=lambda: None)


def test_results_of_a_generate_run(ui, monkeypatch):
    shown = []
    monkeypatch.setattr(panel, "show_sample", lambda *nodes: shown.append(nodes))
    a, b = _node("SYNTHETIC a", {"asked_ml": 40.0, "got_ml": 38.25}), _node("SYNTHETIC b", {})
    panel.show_result(ui, types.SimpleNamespace(kind="generate", loaded=[(a, "seg a"), (b, "seg b")]))
    assert ui.generateResultLabel.text == ("SYNTHETIC a: asked 40.0 mL, got 38.2 mL\n"
                                           "SYNTHETIC b: asked nan mL, got nan mL")
    assert shown == [(a, "seg a")]
    panel.show_result(ui, types.SimpleNamespace(kind="generate", loaded=[]))
    assert ui.generateResultLabel.text == "" and len(shown) == 1


def test_results_of_a_segment_run(ui):
    slicer = pytest.importorskip("slicer")
    from VentricleSynthLib.slicer_glue.segmentation_nodes import segmentation_from_label_map

    label = np.zeros((10, 10, 10), np.int16)
    label[2:4, 2:4, 2:4] = 4
    label[6:9, 6:9, 6:9] = 43
    node = segmentation_from_label_map(label, np.eye(4), scene=slicer.vtkMRMLScene(), closed_surface=False)
    node.SetAttribute(RECORD_ATTRIBUTE, json.dumps({"warnings": ["small brain", "odd spacing"]}))
    panel.show_result(ui, types.SimpleNamespace(kind="segment", loaded=[node]))
    rows = [(row[0].text, row[1].text) for _, row in sorted(ui.volumesTable.rows.items())]
    assert rows[:2] == [("Left-Lateral-Ventricle", "0.01"), ("Right-Lateral-Ventricle", "0.03")]
    assert rows[-1] == ("Ventricular system (total)", "0.04") and len(rows) == 7  # 35 voxels of 1 mm
    assert ui.volumesTable.rows[0][1].alignment == 2 | 128 and ui.volumesTable.rows[0][0].alignment is None
    assert ui.segmentResultLabel.text == "Warning: small brain\nWarning: odd spacing"
    panel.show_result(ui, types.SimpleNamespace(kind="segment", loaded=[]))
    assert ui.volumesTable.rowCount == 0 and ui.volumesTable.rows == {}


def test_results_of_a_models_run(ui):
    info = {"kind": "models", "models_dir": "/m", "versions": {"torch": "2.8", "monai": None},
            "devices": {"cuda": False, "mps": False},
            "models": [{"name": "mask_generator", "path": "/m/mask_generator", "verified": True, "version": 3,
                        "profile": "paper", "sha256": "ab" * 32},
                       {"name": "broken", "path": "/m/broken", "verified": False, "error": "checksum"}]}
    task = types.SimpleNamespace(kind="info", outcome=Outcome("ok", 0, "Finished.", [{"kind": "other"}, info]))
    panel.show_result(ui, task)
    rows = ui.modelsTable.rows
    assert [item.text for item in rows[0].values()] == ["mask_generator", "3", "paper", "verified", "ab" * 6]
    assert [item.text for item in rows[1].values()] == ["broken", "", "", "FAILED: checksum", ""]
    assert rows[0][0].toolTip == "/m/mask_generator" and rows[0][3].toolTip == "verified"
    assert ui.versionsLabel.text == "Models folder: /m\ntorch 2.8\nCUDA: False; MPS: False"
    panel.show_result(ui, types.SimpleNamespace(kind="info", outcome=Outcome("failed", 1, "x", [])))
    assert ui.modelsTable.rowCount == 0


def test_models_folder_and_dependency_texts(ui):
    panel.show_models_folder(ui, {}, "/m")
    assert ui.modelsCollapsibleButton.toolTip == "/m"
    assert ui.versionsLabel.text == "Models folder /m holds no generator bundle."
    panel.show_models_folder(ui, {"steps": 50}, "/m")
    assert ui.versionsLabel.text == "Models folder: /m. Press 'Verify models' to check checksums."


def test_prepare_sets_up_tables_and_the_bar(ui):
    calls = []
    ui.volumesTable.setColumnCount = lambda n: calls.append(("columns", n))
    ui.volumesTable.setHorizontalHeaderLabels = lambda labels: calls.append(("labels", labels))
    header = types.SimpleNamespace(setStretchLastSection=lambda on: calls.append(("stretch", on)))
    ui.volumesTable.horizontalHeader = ui.modelsTable.horizontalHeader = lambda: header
    ui.progressBar.setRange = lambda low, high: calls.append(("range", low, high))
    panel.prepare(ui)
    assert calls == [("columns", 2), ("labels", ["Structure", "Volume (mL)"]), ("stretch", True),
                     ("stretch", True), ("range", 0, 100)]
    assert ui.progressBar.value == 0
