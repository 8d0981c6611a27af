"""Static checks of the Slicer module (no Slicer needed): the .ui and the Python agree, the parameter
node fits the widgets, nothing heavy is imported at module import, and the CMake files ship every file.
"""

from __future__ import annotations

import ast
import fnmatch
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "VentricleSynth"
MODULE_PY = MODULE_DIR / "VentricleSynth.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "VentricleSynth.ui"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"
ROOT_CMAKE = REPO / "CMakeLists.txt"
LIB_DIR = REPO / "VentricleSynthLib"

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
                      "stepsSpinBox": "QSpinBox", "seedSpinBox": "QSpinBox", "randomSeedButton": "QPushButton",
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
    assert 'categories = ["Segmentation"]' in source
    assert "Ruschke" in source and "2411.01351" in source  # help/acknowledgement cite the paper
    assert "importlib.reload" in source and "import imp\n" not in source


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


def test_reloaded_library_modules_exist_and_stay_light(tree):
    names = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                 and any(getattr(t, "id", None) == "LIBRARY_MODULES" for t in node.targets))
    for name in names:
        parts = name.split(".")
        path = REPO.joinpath(*parts).with_suffix(".py") if len(parts) > 1 else REPO / parts[0] / "__init__.py"
        assert path.is_file(), name
        module_tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = set()
        for node in module_tree.body:  # module level only; lazy imports inside functions are fine
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
        assert not imported & {"torch", "monai", "nnunetv2", "slicer", "vtk", "qt", "training"}, (name, imported)


def test_requirements_are_lower_bounds_without_slicer_owned_packages():
    lines = [line.split("#")[0].strip() for line in
             (MODULE_DIR / "Resources" / "requirements.txt").read_text().splitlines()]
    requirements = [line for line in lines if line]
    assert requirements
    names = set()
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)>=([0-9][0-9.]*)", requirement)
        assert match, f"not a lower-bound requirement: {requirement}"
        names.add(match.group(1).lower())
    assert not names & {"torch", "torchvision", "numpy", "simpleitk", "requests"}
    assert {"monai", "nnunetv2", "nibabel", "safetensors"} <= names


def test_icon_is_a_128_pixel_png():
    from PIL import Image

    with Image.open(MODULE_DIR / "Resources" / "Icons" / "VentricleSynth.png") as icon:
        assert icon.format == "PNG" and icon.size == (128, 128)


# ------------------------------------------------------------------------------------ CMake files
def _cmake_set(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\(\s*{re.escape(variable)}\s+(.*?)\)", text, re.S)
    assert match, f"set({variable} ...) not found"
    return [token for token in match.group(1).split() if not token.startswith("#")]


def _strip_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] if not line.strip().startswith("set(EXTENSION") else line
                     for line in text.splitlines())


def test_every_library_file_is_listed_for_the_extension():
    text = _strip_comments(MODULE_CMAKE.read_text())
    listed = _cmake_set(text, "VentricleSynthLib_SCRIPTS")
    on_disk = sorted(p.name for p in LIB_DIR.glob("*.py"))
    assert sorted(listed) == on_disk, (
        f"VentricleSynth/CMakeLists.txt VentricleSynthLib_SCRIPTS differs from VentricleSynthLib/*.py: "
        f"missing {sorted(set(on_disk) - set(listed))}, stale {sorted(set(listed) - set(on_disk))}")
    assert not [p for p in LIB_DIR.iterdir() if p.is_dir() and not p.name.startswith((".", "__pycache__"))], \
        "VentricleSynthLib has sub-packages: list their files too"


def test_every_module_file_that_ships_is_listed():
    text = _strip_comments(MODULE_CMAKE.read_text())
    scripts = _cmake_set(text, "MODULE_PYTHON_SCRIPTS")
    resources = _cmake_set(text, "MODULE_PYTHON_RESOURCES")
    assert "${MODULE_NAME}.py" in scripts and "${VentricleSynthLib_PYTHON_SCRIPTS}" in scripts
    assert re.search(r"set\(MODULE_NAME\s+VentricleSynth\)", text)
    explicit = {r.replace("${MODULE_NAME}", "VentricleSynth") for r in resources if not r.startswith("${")}
    globs = re.findall(r"file\(GLOB_RECURSE\s+(\w+).*?\$\{CMAKE_CURRENT_SOURCE_DIR\}/(\S+)\s*\)", text, re.S)
    assert {name for name, _ in globs} == {"MODULE_MODEL_FILES", "MODULE_SAMPLE_DATA_FILES"}
    assert {f"${{{name}}}" for name, _ in globs} <= set(resources)
    patterns = [pattern for _, pattern in globs]
    for rel in explicit:
        assert (MODULE_DIR / rel).is_file(), f"listed resource does not exist: {rel}"
    shipped = [p for p in MODULE_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts
               and not any(part.startswith(".") for part in p.relative_to(MODULE_DIR).parts)
               and p.name != "CMakeLists.txt"]
    unlisted = []
    for path in shipped:
        rel = path.relative_to(MODULE_DIR).as_posix()
        if rel == "VentricleSynth.py" or rel in explicit or any(fnmatch.fnmatch(rel, p) for p in patterns):
            continue
        unlisted.append(rel)
    assert not unlisted, f"files in VentricleSynth/ that the CMake files do not ship: {unlisted}"
    assert "WITH_GENERIC_TESTS" in text
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py\s*\)", text)


def test_root_cmake_has_the_extension_metadata():
    text = ROOT_CMAKE.read_text()
    for variable in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                     "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf"set\({variable}\s", text), variable
    assert re.search(r'set\(EXTENSION_CATEGORY\s+"Segmentation"\)', text)
    assert re.search(r'set\(EXTENSION_DEPENDS\s+"[^"]*PyTorch', text)
    description = re.search(r'set\(EXTENSION_DESCRIPTION\s+"(.*?)"\)', text, re.S).group(1)
    assert "Ruschke" in description and "2411.01351" in description
    assert re.search(r"^project\(VentricleSynth\)", text, re.M)
    assert re.search(r"^add_subdirectory\(VentricleSynth\)", text, re.M)
    assert "find_package(Slicer REQUIRED)" in text and "include(${Slicer_USE_FILE})" in text
    assert "include(${Slicer_EXTENSION_GENERATE_CONFIG})" in text and "include(${Slicer_EXTENSION_CPACK})" in text


_STUB = r"""
cmake_minimum_required(VERSION 3.16)
project(StubSlicerBuild NONE)
set(BUILD_TESTING ON)
set(MANIFEST "${CMAKE_BINARY_DIR}/manifest.txt")
file(WRITE ${MANIFEST} "")
# What ctkMacroCompilePythonScript does with paths (see CTK's CMake/ctkMacroCompilePythonScript.cmake):
# relative -> DESTINATION/<path>; absolute -> DESTINATION/<path relative to CMAKE_CURRENT_BINARY_DIR>.
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  foreach(f ${MY_SCRIPTS})
    if(IS_ABSOLUTE ${f})
      set(src ${f})
      file(RELATIVE_PATH tgt ${CMAKE_CURRENT_BINARY_DIR} ${f})
    else()
      set(src ${CMAKE_CURRENT_SOURCE_DIR}/${f})
      set(tgt ${f})
    endif()
    if(NOT EXISTS ${src})
      message(FATAL_ERROR "nonexistent script ${src}")
    endif()
    file(APPEND ${MANIFEST} "script ${tgt}\n")
  endforeach()
  foreach(f ${MY_RESOURCES})
    if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${f})
      message(FATAL_ERROR "nonexistent resource ${f}")
    endif()
    file(APPEND ${MANIFEST} "resource ${f}\n")
  endforeach()
  if(MY_WITH_GENERIC_TESTS)
    file(APPEND ${MANIFEST} "generic-tests ${MY_NAME}\n")
  endif()
endmacro()
macro(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "SCRIPT" "" ${ARGN})
  file(APPEND ${MANIFEST} "unittest ${MY_SCRIPT}\n")
endmacro()
add_subdirectory("@MODULE@" "${CMAKE_BINARY_DIR}/module")
"""


def _configure(module_dir: Path, tmp_path: Path) -> list[tuple[str, str]]:
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake not installed")
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "CMakeLists.txt").write_text(_STUB.replace("@MODULE@", module_dir.as_posix()))
    build = tmp_path / "build"
    done = subprocess.run([cmake, "-S", str(stub), "-B", str(build)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [tuple(line.split(" ", 1)) for line in (build / "manifest.txt").read_text().splitlines()]


def test_cmake_configures_and_installs_the_expected_layout(tmp_path):
    """Run the module's CMakeLists.txt with stand-ins for Slicer's macros: every Lib file lands in
    VentricleSynthLib/ next to VentricleSynth.py (never outside the module folder), resources keep
    their Resources/ paths, and the tests are registered."""
    entries = _configure(MODULE_DIR, tmp_path)
    scripts = sorted(path for kind, path in entries if kind == "script")
    expected = sorted(["VentricleSynth.py"] + [f"VentricleSynthLib/{p.name}" for p in LIB_DIR.glob("*.py")])
    assert scripts == expected and not any(".." in s for s in scripts)
    resources = {path for kind, path in entries if kind == "resource"}
    assert {"Resources/Icons/VentricleSynth.png", "Resources/UI/VentricleSynth.ui",
            "Resources/requirements.txt"} <= resources
    models = {p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "Resources" / "Models").rglob("*")
              if p.is_file() and not any(part.startswith(".") for part in p.relative_to(MODULE_DIR).parts)}
    assert models <= resources
    assert ("generic-tests", "VentricleSynth") in entries and ("unittest", "VentricleSynth.py") in entries


def test_cmake_globs_model_bundles_and_skips_hidden_files(tmp_path):
    """The same CMakeLists.txt on a copy with fake bundles: nested bundle files ship, hidden staging
    folders and files do not."""
    root = tmp_path / "repo"
    module = root / "VentricleSynth"
    (module / "Resources" / "UI").mkdir(parents=True)
    (module / "Resources" / "Icons").mkdir(parents=True)
    shutil.copy(MODULE_CMAKE, module / "CMakeLists.txt")
    shutil.copy(MODULE_PY, module / "VentricleSynth.py")
    shutil.copy(UI_FILE, module / "Resources" / "UI" / "VentricleSynth.ui")
    shutil.copy(MODULE_DIR / "Resources" / "Icons" / "VentricleSynth.png", module / "Resources" / "Icons")
    shutil.copy(MODULE_DIR / "Resources" / "requirements.txt", module / "Resources")
    (root / "VentricleSynthLib").mkdir()
    for path in LIB_DIR.glob("*.py"):
        (root / "VentricleSynthLib" / path.name).write_text("# stub\n")
    fake = {
        "Resources/Models/mask_generator/config.json": "{}",
        "Resources/Models/mask_generator/unet.safetensors": "x",
        "Resources/Models/segmenter/nnunet/fold_0/checkpoint_final.pth": "x",
        "Resources/Models/.mask_generator.old/unet.safetensors": "hidden staging",
        "Resources/Models/image_generator/.manifest.json.tmp": "hidden file",
        "Resources/SampleData/sample_000/image.nii.gz": "x",
    }
    for rel, content in fake.items():
        (module / rel).parent.mkdir(parents=True, exist_ok=True)
        (module / rel).write_text(content)
    entries = _configure(module, tmp_path)
    resources = {path for kind, path in entries if kind == "resource"}
    shipped = {rel for rel in fake if "/." not in rel}
    assert shipped <= resources
    assert not {rel for rel in fake if "/." in rel} & resources
