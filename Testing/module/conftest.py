"""Loading VentricleSynth/VentricleSynth.py for real outside Slicer: the slicer-core wheel where it exists (MRML),
with stand-ins for what no wheel provides (Qt, ScriptedLoadableModule, parameterNodeWrapper, slicer.i18n,
slicer.app); under Python 3.9, which has no slicer-core, `slicer` and `vtk` are stand-ins too."""

from __future__ import annotations

import importlib.util
import sys
import types
import unittest
from pathlib import Path

import pytest

MODULE_PY = Path(__file__).resolve().parents[2] / "VentricleSynth" / "VentricleSynth.py"


class Layout:
    """A widget's layout: what was added to it."""

    def __init__(self):
        self.widgets = []

    def addWidget(self, widget):
        self.widgets.append(widget)

    def addStretch(self, stretch=0):
        pass


class QLabel:
    def __init__(self, text=""):
        self.text, self.wordWrap = text, False


class Base:
    def __init__(self, *args, **kwargs):
        self.layout = Layout()

    def setup(self):
        pass


@pytest.fixture
def load_module(monkeypatch):
    """load_module(slicer_version=None) -> (module, settings dict): VentricleSynth.py executed with the stand-ins,
    `slicer.app` reporting `slicer_version` (None: no application, as in scripts and tests)."""
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # no __pycache__ inside the module folder

    def load(slicer_version=None):
        settings: dict = {}
        try:
            import slicer
        except ImportError:  # Python 3.9: no slicer-core wheel
            slicer = types.ModuleType("slicer")
            slicer.__path__ = []
            slicer.vtkMRMLScalarVolumeNode = type("vtkMRMLScalarVolumeNode", (), {})
            util = types.ModuleType("slicer.util")
            util.VTKObservationMixin = type("VTKObservationMixin", (), {"__init__": lambda self: None})
            slicer.util = util
            monkeypatch.setitem(sys.modules, "slicer", slicer)
            monkeypatch.setitem(sys.modules, "slicer.util", util)
            monkeypatch.setitem(sys.modules, "vtk", types.ModuleType("vtk"))
        qt = types.ModuleType("qt")
        qt.QSettings = type("QSettings", (), {"value": lambda self, key, default=None: settings.get(key, default),
                                              "setValue": lambda self, key, value: settings.__setitem__(key, value)})
        qt.QLabel = QLabel
        slm = types.ModuleType("slicer.ScriptedLoadableModule")
        slm.ScriptedLoadableModule = slm.ScriptedLoadableModuleWidget = slm.ScriptedLoadableModuleLogic = Base
        slm.ScriptedLoadableModuleTest = unittest.TestCase
        pnw = types.ModuleType("slicer.parameterNodeWrapper")
        pnw.parameterNodeWrapper = lambda cls: cls
        pnw.WithinRange = pnw.Choice = lambda *args, **kwargs: None
        i18n = types.ModuleType("slicer.i18n")
        i18n.tr = str
        i18n.translate = lambda context, text: text
        for name, module in (("qt", qt), ("slicer.ScriptedLoadableModule", slm), ("slicer.parameterNodeWrapper", pnw),
                             ("slicer.i18n", i18n)):
            monkeypatch.setitem(sys.modules, name, module)
        app = None if slicer_version is None else types.SimpleNamespace(
            majorVersion=slicer_version[0], minorVersion=slicer_version[1])
        monkeypatch.setattr(slicer, "app", app, raising=False)
        if hasattr(slicer, "vtkMRMLScene"):
            monkeypatch.setattr(slicer, "mrmlScene", slicer.vtkMRMLScene(), raising=False)
        spec = importlib.util.spec_from_file_location("VentricleSynth", MODULE_PY)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module, settings

    return load
