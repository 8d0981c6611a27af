"""Static checks of the Slicer module (no Slicer needed): the .ui and the Python agree, the parameter
node fits the widgets, the module file stays thin and imports nothing heavy, and the library modules Slicer's
process imports stay light. (The CMake files: test_module_cmake.py.)
"""

from __future__ import annotations

import ast
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "VentricleSynth"
MODULE_PY = MODULE_DIR / "VentricleSynth.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "VentricleSynth.ui"
LIB_DIR = REPO / "VentricleSynthLib"
PANEL_PY = LIB_DIR / "slicer_glue" / "panel.py"

HEAVY = {"torch", "monai", "nnunetv2", "nibabel", "scipy", "matplotlib", "safetensors", "numpy", "SimpleITK"}


@pytest.fixture(scope="module")
def tree():
    return ast.parse(MODULE_PY.read_text(encoding="utf-8"), filename=str(MODULE_PY))


@pytest.fixture(scope="module")
def ui():
    return ET.parse(UI_FILE).getroot()


def _ui_widgets(ui) -> dict[str, str]:
    return {w.get("name"): w.get("class") for w in ui.iter("widget")}


def _parameter_fields(tree) -> dict[str, ast.expr]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(
                (isinstance(d, ast.Name) and d.id == "parameterNodeWrapper") or
                (isinstance(d, ast.Attribute) and d.attr == "parameterNodeWrapper") for d in node.decorator_list):
            return {s.target.id: s.annotation for s in node.body
                    if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
    raise AssertionError("no @parameterNodeWrapper class in VentricleSynth.py")


def _slicer_parameter_names(ui) -> dict[str, str]:
    """widget name -> SlicerParameterName."""
    out = {}
    for widget in ui.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                out[widget.get("name")] = prop.find("string").text
    return out


def _annotation_parts(annotation: ast.expr) -> tuple[str, list[str]]:
    """('float', ['WithinRange', ...]) for Annotated[float, WithinRange(...)]; ('vtkMRMLScalarVolumeNode', [])."""
    if isinstance(annotation, ast.Subscript) and getattr(annotation.value, "id", None) == "Annotated":
        elements = annotation.slice.elts
        base = ast.unparse(elements[0])
        validators = [ast.unparse(e.func) for e in elements[1:] if isinstance(e, ast.Call)]
        return base, validators
    return ast.unparse(annotation), []


# ----------------------------------------------------------------------------------- .ui <-> .py
def test_every_self_ui_attribute_exists_in_the_ui_file(tree, ui):
    used = {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"}
    assert used, "the module uses no self.ui widgets?"
    missing = sorted(used - set(_ui_widgets(ui)))
    assert not missing, f"self.ui.<name> used in VentricleSynth.py but absent from the .ui: {missing}"


def test_every_ui_attribute_the_panel_glue_sets_exists_in_the_ui_file(ui):
    """slicer_glue/panel.py sets texts and tables on `ui` (the same widgets): the names exist in the .ui."""
    panel = ast.parse(PANEL_PY.read_text(encoding="utf-8"))
    used = {node.attr for node in ast.walk(panel)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "ui"}
    assert {"progressBar", "statusLabel", "volumesTable", "modelsTable", "generateButton"} <= used
    missing = sorted(used - set(_ui_widgets(ui)))
    assert not missing, f"ui.<name> used in slicer_glue/panel.py but absent from the .ui: {missing}"


def test_every_slicer_parameter_name_is_a_parameter_node_field(tree, ui):
    names = _slicer_parameter_names(ui)
    assert names, "no SlicerParameterName properties in the .ui"
    fields = _parameter_fields(tree)
    unknown = sorted({v for v in names.values() if v not in fields})
    assert not unknown, f"SlicerParameterName values with no parameter-node field: {unknown}"
    assert len(set(names.values())) == len(names), "two widgets bound to the same parameter"


def test_bound_widgets_fit_their_parameter_types(tree, ui):
    """The parameterNodeWrapper GUI connectors refuse mismatches at runtime; catch them here."""
    widgets = _ui_widgets(ui)
    fields = _parameter_fields(tree)
    for widget_name, parameter in _slicer_parameter_names(ui).items():
        cls = widgets[widget_name]
        base, validators = _annotation_parts(fields[parameter])
        where = f"{widget_name} ({cls}) <-> {parameter}: {base} {validators}"
        if cls in ("QComboBox", "ctkComboBox"):
            assert base == "str" and "Choice" in validators, where
        elif cls in ("ctkSliderWidget", "qMRMLSliderWidget"):
            assert base in ("float", "int") and "WithinRange" in validators, where
        elif cls in ("QSpinBox", "QSlider"):
            assert base == "int", where
        elif cls in ("QDoubleSpinBox", "ctkDoubleSpinBox"):
            assert base in ("float", "int"), where
        elif cls in ("QCheckBox", "ctkCheckBox"):
            assert base == "bool", where
        elif cls == "qMRMLNodeComboBox":
            node_types = [s.text for w in ui.iter("widget") if w.get("name") == widget_name
                          for p in w.findall("property") if p.get("name") == "nodeTypes" for s in p.iter("string")]
            assert base.startswith("vtkMRML") and base in node_types, where
        else:
            raise AssertionError(f"no known connector for {where}")


def test_ui_connections_and_custom_widgets_are_consistent(ui):
    widgets = _ui_widgets(ui)
    for connection in ui.iter("connection"):
        assert connection.find("sender").text in widgets and connection.find("receiver").text in widgets
    declared = {c.find("class").text for c in ui.iter("customwidget")}
    qt_classes = {cls for cls in widgets.values() if cls.startswith("Q")}
    custom = set(widgets.values()) - qt_classes
    assert custom <= declared, f"custom widgets used but not declared: {sorted(custom - declared)}"
    assert ui.find("widget").get("class") == "qMRMLWidget"  # setMRMLScene reaches the node selectors
    names = [w.get("name") for w in ui.iter("widget")]
    assert len(names) == len(set(names)), "duplicate widget names"


def test_panel_has_the_sections_and_controls_the_issue_asks_for(ui):
    widgets = _ui_widgets(ui)
    sections = {w.get("name"): w.find("property[@name='text']/string").text for w in ui.iter("widget")
                if w.get("class") == "ctkCollapsibleButton"}
    assert {"Generate", "Segment", "Models"} <= set(sections.values())
    for name, cls in {"ventricleVolumeSliderWidget": "ctkSliderWidget", "guidanceSliderWidget": "ctkSliderWidget",
                      "maskStepsSpinBox": "QSpinBox", "refineCheckBox": "QCheckBox",
                      "imageStepsSpinBox": "QSpinBox", "seedSpinBox": "QSpinBox", "randomSeedButton": "QPushButton",
                      "sampleCountSpinBox": "QSpinBox", "deviceComboBox": "QComboBox",
                      "generateButton": "QPushButton", "inputVolumeSelector": "qMRMLNodeComboBox",
                      "segmentButton": "QPushButton", "volumesTable": "QTableWidget", "progressBar": "QProgressBar",
                      "modelsPathLineEdit": "ctkPathLineEdit", "modelsTable": "QTableWidget",
                      "installDependenciesButton": "QPushButton"}.items():
        assert widgets.get(name) == cls, name


# ------------------------------------------------------------------------------- module file
def test_module_file_structure(tree):
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    bases = {name: [ast.unparse(b) for b in node.bases] for name, node in classes.items()}
    assert "ScriptedLoadableModule" in bases["VentricleSynth"]
    assert "ScriptedLoadableModuleWidget" in bases["VentricleSynthWidget"]
    assert "VTKObservationMixin" in bases["VentricleSynthWidget"]
    assert "ScriptedLoadableModuleLogic" in bases["VentricleSynthLogic"]
    assert "ScriptedLoadableModuleTest" in bases["VentricleSynthTest"]
    test_methods = {f.name for f in classes["VentricleSynthTest"].body if isinstance(f, ast.FunctionDef)}
    assert {"runTest", "setUp", "test_GenerateAndSegment"} <= test_methods
    source = MODULE_PY.read_text(encoding="utf-8")
    # audit 16: the category translated in Slicer's context for module categories
    assert 'categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]' in source
    from VentricleSynthLib.slicer_glue import module_texts

    assert "Ruschke" in module_texts.acknowledgement_text() and "2411.01351" in module_texts.PAPER
    assert module_texts.DOCUMENTATION_URL in module_texts.help_text()
    assert "importlib.reload" in source and "import imp\n" not in source


def test_module_file_is_thin(tree):
    """At most 400 lines: metadata, parameter node, widget, Logic facade, self-test; no ML, no protocol parsing,
    no process handling (those live in VentricleSynthLib.slicer_glue and VentricleSynthLib.worker)."""
    source = MODULE_PY.read_text(encoding="utf-8")
    assert len(source.splitlines()) <= 400
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    assert classes == {"VentricleSynth", "VentricleSynthParameterNode", "VentricleSynthWidget", "VentricleSynthLogic",
                       "VentricleSynthTest"}
    for word in ("WorkerProtocol", ".feed(", "qt.QProcess", "subprocess", "import signal", "import torch",
                 "pip_install", "find_spec", "startupEnvironment", "tempfile", "shutil"):
        assert word not in source, word


def test_module_import_pulls_in_nothing_heavy(tree):
    """Top-level imports of VentricleSynth.py: Slicer, Qt, VTK and the standard library only."""
    top = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            top += [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            top.append(node.module.split(".")[0])
    assert not (set(top) & HEAVY), f"heavy imports at module level: {sorted(set(top) & HEAVY)}"
    assert "VentricleSynthLib" not in top  # imported lazily, after the path is set up


def _library_modules_used(tree) -> set[str]:
    """`VentricleSynthLib.<name>` for every `_lib("<name>")` in the module file (its only way to the library)."""
    return {"VentricleSynthLib." + node.args[0].value for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_lib"
            and node.args and isinstance(node.args[0], ast.Constant)}


def test_library_modules_the_module_uses_exist_and_the_reload_list_follows_the_package(tree):
    used = _library_modules_used(tree)
    assert {"VentricleSynthLib.slicer_glue.runs", "VentricleSynthLib.slicer_glue.task",
            "VentricleSynthLib.slicer_glue.reloading", "VentricleSynthLib.generation.settings"} <= used
    for name in used:
        assert REPO.joinpath(*name.split(".")).with_suffix(".py").is_file(), name
    source = MODULE_PY.read_text(encoding="utf-8")
    assert "LIBRARY_MODULES" not in source  # no hand list: reloadLibrary reloads what is loaded
    assert "reload_order()" in source


def test_library_modules_for_slicer_import_no_heavy_packages(tree):
    """What Slicer's own process imports (the modules the module file uses, all of slicer_glue, the worker's
    protocol, client and processes, and the worker entry) pulls in neither torch nor slicer/vtk/qt at import."""
    names = sorted(_library_modules_used(tree) | {
        "VentricleSynthLib.slicer_glue." + p.stem for p in (LIB_DIR / "slicer_glue").glob("*.py")} | {
        "VentricleSynthLib.worker.protocol", "VentricleSynthLib.worker.client", "VentricleSynthLib.worker.processes",
        "VentricleSynthLib.worker.server", "VentricleSynthLib.cli"})
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    importlib.import_module(name)\n"
            "bad = sorted(m for m in ('torch', 'monai', 'slicer', 'vtk', 'qt', 'nnunetv2', 'training') "
            "if m in sys.modules)\n"
            "print(bad)\n"
            "sys.exit(1 if bad else 0)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_requirements_have_tested_bounds_and_leave_slicer_owned_packages_alone():
    """Every requirement has a lower bound; the worker's ML packages also the tested upper bound (audit 3, 4);
    packages Slicer owns are never listed (scipy, which Slicer ships, only with a lower bound)."""
    from VentricleSynthLib.slicer_glue.dependencies import load_requirements

    found = {r.name.lower(): r for r in load_requirements(MODULE_DIR / "Resources" / "requirements.txt")}
    assert {"torch", "monai", "nnunetv2", "nibabel", "safetensors", "matplotlib"} <= set(found)
    assert not set(found) & {"numpy", "simpleitk", "requests", "torchvision"}
    for name, requirement in found.items():
        operators = {spec.operator for spec in requirement.specifier}
        assert operators & {">=", ">"}, f"{name} has no lower bound"
        if name != "scipy":
            assert operators & {"<", "<="}, f"{name} has no tested upper bound"


def test_icon_is_a_128_pixel_png():
    from PIL import Image

    with Image.open(MODULE_DIR / "Resources" / "Icons" / "VentricleSynth.png") as icon:
        assert icon.format == "PNG" and icon.size == (128, 128)
