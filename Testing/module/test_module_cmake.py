"""The CMake files of the extension (no Slicer needed): the library ships recursively by glob, every module
file ships, the root file has the extension's metadata, and configuring with stand-ins for Slicer's macros
installs the expected layout."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "VentricleSynth"
MODULE_PY = MODULE_DIR / "VentricleSynth.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "VentricleSynth.ui"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"
ROOT_CMAKE = REPO / "CMakeLists.txt"
LIB_DIR = REPO / "VentricleSynthLib"


def _cmake_set(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\(\s*{re.escape(variable)}\s+(.*?)\)", text, re.S)
    assert match, f"set({variable} ...) not found"
    return [token for token in match.group(1).split() if not token.startswith("#")]


def _strip_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] if not line.strip().startswith("set(EXTENSION") else line
                     for line in text.splitlines())


def _library_glob(text: str) -> tuple[str, str, str]:
    """(glob pattern, RELATIVE folder, exclusion regex) of the VentricleSynthLib_SCRIPTS glob."""
    match = re.search(r"file\(GLOB_RECURSE\s+VentricleSynthLib_SCRIPTS\s+RELATIVE\s+(\S+)\s+"
                      r"CONFIGURE_DEPENDS\s+(\S+)\s*\)", text)
    assert match, "VentricleSynthLib is not shipped by file(GLOB_RECURSE VentricleSynthLib_SCRIPTS RELATIVE ...)"
    exclude = re.search(r'list\(FILTER\s+VentricleSynthLib_SCRIPTS\s+EXCLUDE\s+REGEX\s+"([^"]+)"\)', text)
    assert exclude, "no list(FILTER VentricleSynthLib_SCRIPTS EXCLUDE REGEX ...)"
    return match.group(2), match.group(1), exclude.group(1)


def _emulate_library_glob(text: str, library: Path) -> set[str]:
    """The files CMake ships from `library`, by the CMakeLists' own glob and exclusion (emulated in Python)."""
    pattern, relative, exclude = _library_glob(text)
    assert relative == "${VentricleSynthLib_DIR}" and pattern == "${VentricleSynthLib_DIR}/*.py"
    found = {p.relative_to(library).as_posix() for p in library.rglob("*.py") if p.is_file()}
    return {rel for rel in found if not re.search(exclude, rel)}


def test_the_library_ships_recursively_every_file_of_the_package():
    """A recursive glob, not a hand list: every tracked VentricleSynthLib/**.py ships at its own sub-path,
    __pycache__ stays out."""
    text = _strip_comments(MODULE_CMAKE.read_text())
    assert "set(VentricleSynthLib_SCRIPTS" not in text  # no hand list left
    assert re.search(r"get_filename_component\(VentricleSynthLib_DIR\s+\$\{CMAKE_CURRENT_SOURCE_DIR\}/\.\./"
                     r"VentricleSynthLib\s+ABSOLUTE\)", text)
    assert re.search(r"configure_file\(\s*\$\{VentricleSynthLib_DIR\}/\$\{script\}\s+"
                     r"\$\{CMAKE_CURRENT_BINARY_DIR\}/VentricleSynthLib/\$\{script\}\s+COPYONLY", text)
    shipped = _emulate_library_glob(text, LIB_DIR)
    listed = subprocess.run(["git", "ls-files", "VentricleSynthLib"], cwd=REPO, capture_output=True,
                            text=True).stdout.split()
    tracked = {Path(f).relative_to("VentricleSynthLib").as_posix() for f in listed if f.endswith(".py")}
    assert tracked or not (REPO / ".git").exists()
    assert tracked <= shipped, f"package files the extension would not ship: {sorted(tracked - shipped)}"
    assert {"__init__.py", "worker/protocol.py", "slicer_glue/task.py"} <= shipped
    assert not [rel for rel in shipped if "__pycache__" in rel]
    assert not re.search(r"__pycache__/", "worker/protocol.py") and re.search(_library_glob(text)[2],
                                                                            "worker/__pycache__/x.py")


def test_every_module_file_that_ships_is_listed():
    text = _strip_comments(MODULE_CMAKE.read_text())
    scripts = _cmake_set(text, "MODULE_PYTHON_SCRIPTS")
    resources = _cmake_set(text, "MODULE_PYTHON_RESOURCES")
    assert "${MODULE_NAME}.py" in scripts and "${VentricleSynthLib_PYTHON_SCRIPTS}" in scripts
    assert re.search(r"set\(MODULE_NAME\s+VentricleSynth\)", text)
    explicit = {r.replace("${MODULE_NAME}", "VentricleSynth") for r in resources if not r.startswith("${")}
    globs = [(name, body.split("${CMAKE_CURRENT_SOURCE_DIR}/")[-1].strip())
             for name, body in re.findall(r"file\(GLOB_RECURSE\s+(\w+)([^)]*)\)", text)
             if name != "VentricleSynthLib_SCRIPTS"]
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
    VentricleSynthLib/<sub-path> next to VentricleSynth.py (never outside the module folder), resources keep
    their Resources/ paths, and the tests are registered."""
    entries = _configure(MODULE_DIR, tmp_path)
    scripts = sorted(path for kind, path in entries if kind == "script")
    expected = sorted(["VentricleSynth.py"] + [f"VentricleSynthLib/{p.relative_to(LIB_DIR).as_posix()}"
                                               for p in LIB_DIR.rglob("*.py") if "__pycache__" not in p.parts])
    assert scripts == expected and not any(".." in s for s in scripts)
    resources = {path for kind, path in entries if kind == "resource"}
    assert {"Resources/Icons/VentricleSynth.png", "Resources/UI/VentricleSynth.ui",
            "Resources/requirements.txt"} <= resources
    models = {p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "Resources" / "Models").rglob("*")
              if p.is_file() and not any(part.startswith(".") for part in p.relative_to(MODULE_DIR).parts)}
    assert models <= resources
    assert ("generic-tests", "VentricleSynth") in entries and ("unittest", "VentricleSynth.py") in entries


def test_cmake_globs_model_bundles_and_skips_hidden_files(tmp_path):
    """The same CMakeLists.txt on a copy with fake bundles and a fake package: nested bundle and package files
    ship (at their sub-paths), hidden staging folders and __pycache__ do not."""
    root = tmp_path / "repo"
    module = root / "VentricleSynth"
    (module / "Resources" / "UI").mkdir(parents=True)
    (module / "Resources" / "Icons").mkdir(parents=True)
    shutil.copy(MODULE_CMAKE, module / "CMakeLists.txt")
    shutil.copy(MODULE_PY, module / "VentricleSynth.py")
    shutil.copy(UI_FILE, module / "Resources" / "UI" / "VentricleSynth.ui")
    shutil.copy(MODULE_DIR / "Resources" / "Icons" / "VentricleSynth.png", module / "Resources" / "Icons")
    shutil.copy(MODULE_DIR / "Resources" / "requirements.txt", module / "Resources")
    for rel in ("__init__.py", "worker/__init__.py", "worker/protocol.py", "slicer_glue/deep/er/x.py",
                "__pycache__/stale.py", "worker/__pycache__/protocol.py"):
        (root / "VentricleSynthLib" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "VentricleSynthLib" / rel).write_text("# stub\n")
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
    scripts = {path for kind, path in entries if kind == "script"}
    assert scripts == {"VentricleSynth.py", "VentricleSynthLib/__init__.py", "VentricleSynthLib/worker/__init__.py",
                       "VentricleSynthLib/worker/protocol.py", "VentricleSynthLib/slicer_glue/deep/er/x.py"}
    assert (tmp_path / "build" / "module" / "VentricleSynthLib" / "slicer_glue" / "deep" / "er" / "x.py").is_file()
    resources = {path for kind, path in entries if kind == "resource"}
    shipped = {rel for rel in fake if "/." not in rel}
    assert shipped <= resources
    assert not {rel for rel in fake if "/." in rel} & resources


def test_metadata_agrees_with_the_module_texts():
    """Homepage, contributors and the minimum Slicer: one value each, the same in CMake and in the module."""
    from VentricleSynthLib.slicer_glue import compatibility, module_texts

    text = ROOT_CMAKE.read_text()
    assert re.search(rf'set\(EXTENSION_HOMEPAGE\s+"{re.escape(module_texts.DOCUMENTATION_URL)}"\)', text)
    contributors = re.search(r'set\(EXTENSION_CONTRIBUTORS\s+"(.*?)"\)', text).group(1)
    assert contributors == ", ".join(module_texts.CONTRIBUTORS)
    python = "{}.{}".format(*compatibility.MINIMUM_PYTHON)
    slicer = "{}.{}".format(*compatibility.MINIMUM_SLICER)
    assert re.search(rf'if\(Slicer_REQUIRED_PYTHON_VERSION VERSION_LESS "{re.escape(python)}"\)', text)
    assert f"Requires 3D Slicer {slicer} or later" in text


_STUB_SLICER_CONFIG = """
set(Slicer_REQUIRED_PYTHON_VERSION "@PYTHON@")
set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/empty.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/empty.cmake")
"""


@pytest.mark.parametrize("python, accepted", [("3.9.10", False), ("3.12.10", True)])
def test_root_cmake_refuses_slicers_older_than_the_minimum(tmp_path, python, accepted):
    """The root CMakeLists.txt against a stand-in SlicerConfig of Slicer 5.8 (Python 3.9.10) stops with one message;
    against 5.10/5.12's (Python 3.12.10) it configures."""
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake not installed")
    config = tmp_path / "slicer"
    config.mkdir()
    (config / "SlicerConfig.cmake").write_text(_STUB_SLICER_CONFIG.replace("@PYTHON@", python))
    macros = _STUB.split("add_subdirectory(")[0].split("set(BUILD_TESTING ON)", 1)[1]
    (config / "UseSlicer.cmake").write_text("set(BUILD_TESTING ON)" + macros)
    (config / "empty.cmake").write_text("")
    source = tmp_path / "source"
    shutil.copytree(REPO / "VentricleSynth", source / "VentricleSynth",
                    ignore=shutil.ignore_patterns("Models", "__pycache__"))
    shutil.copytree(LIB_DIR, source / "VentricleSynthLib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT_CMAKE, source / "CMakeLists.txt")
    done = subprocess.run([cmake, "-S", str(source), "-B", str(tmp_path / "build"), f"-DSlicer_DIR={config}"],
                          capture_output=True, text=True, timeout=120)
    if accepted:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    else:
        assert done.returncode != 0 and "needs 3D Slicer 5.10 or later" in done.stderr, done.stderr[-3000:]
