"""Where and how the module runs the worker, headless with stand-in `slicer`/`qt` objects: the PythonSlicer
lookup, the worker's environment, working directory and temporary folder, and the models folder order."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from VentricleSynthLib.slicer_glue import environment

REPO = Path(__file__).resolve().parents[2]


def _slicer(home=None, temporary=None, startup=None):
    app = types.SimpleNamespace(slicerHome=home, temporaryPath=temporary)

    def startupEnvironment():
        if isinstance(startup, Exception):
            raise startup
        return startup

    return types.SimpleNamespace(app=app, util=types.SimpleNamespace(startupEnvironment=startupEnvironment))


def _launcher(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    launcher = folder / ("PythonSlicer.exe" if os.name == "nt" else "PythonSlicer")
    launcher.write_text("#!/bin/sh\n")
    launcher.chmod(0o755)
    return launcher


def test_python_executable_prefers_slicer_home_then_path_then_this_interpreter(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert environment.python_executable(_slicer(home=str(tmp_path / "no-slicer"))) == sys.executable
    assert environment.python_executable(None) == sys.executable  # outside Slicer
    on_path = _launcher(tmp_path / "on-path")
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert environment.python_executable(None) == str(on_path)
    home = tmp_path / "Slicer-5.10"
    in_home = _launcher(home / "bin")
    assert environment.python_executable(_slicer(home=str(home))) == str(in_home)


def test_python_executable_outside_slicer_is_this_interpreter(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert environment.python_executable() == sys.executable  # the slicer-core wheel has no slicer.app


def test_worker_environment_from_slicer_startup_environment_for_the_launcher(monkeypatch):
    monkeypatch.setenv("VENTRICLESYNTH_TEST_MARKER", "from-this-process")
    fake = _slicer(startup={"SLICER_ONLY": "1", "nnUNet_n_proc_DA": "4"})
    env = environment.worker_environment("/opt/Slicer/bin/PythonSlicer", fake)
    assert env["SLICER_ONLY"] == "1" and "VENTRICLESYNTH_TEST_MARKER" not in env
    assert env["nnUNet_n_proc_DA"] == "4"  # kept when set
    assert (env["PYTHONUNBUFFERED"], env["PYTHONIOENCODING"], env["PYTHONNOUSERSITE"]) == ("1", "utf-8", "1")
    other = environment.worker_environment(sys.executable, fake)  # not the launcher: this process's environment
    assert other["VENTRICLESYNTH_TEST_MARKER"] == "from-this-process" and "SLICER_ONLY" not in other
    assert other["nnUNet_n_proc_DA"] == os.environ.get("nnUNet_n_proc_DA", "0")
    for broken in (_slicer(startup=RuntimeError("old Slicer")), _slicer(startup={}), None):
        env = environment.worker_environment("PythonSlicer.exe", broken)
        assert env["VENTRICLESYNTH_TEST_MARKER"] == "from-this-process"


def test_worker_cwd_is_the_folder_holding_the_library():
    assert environment.worker_cwd("/ext/lib-parent", "/ext/module") == "/ext/lib-parent"
    assert environment.worker_cwd(None, "/ext/module") == "/ext/module"


def test_temporary_directory_under_slicer_temporary_path(tmp_path):
    base = tmp_path / "slicer-tmp" / "not-yet"
    made = Path(environment.temporary_directory(_slicer(temporary=str(base))))
    assert made.parent == base and made.is_dir() and made.name.startswith("VentricleSynth-")
    other = Path(environment.temporary_directory(None))
    assert other.is_dir() and other.name.startswith("VentricleSynth-") and other.parent != base
    other.rmdir()


def test_models_folder_order_user_then_environment_then_bundled(tmp_path, monkeypatch):
    bundled = str(REPO / "VentricleSynth" / "Resources" / "Models")  # beside VentricleSynth.py, as installed
    user, env = tmp_path / "user", tmp_path / "env"
    monkeypatch.delenv("VENTRICLESYNTH_MODELS", raising=False)
    assert environment.models_dir("") == bundled
    monkeypatch.setenv("VENTRICLESYNTH_MODELS", str(env))
    assert environment.models_dir("") == bundled  # a folder that does not exist is skipped
    env.mkdir()
    assert environment.models_dir("") == str(env)
    assert environment.models_dir(str(user)) == str(env)
    user.mkdir()
    assert environment.models_dir(str(user)) == str(user)


def test_user_models_folder_is_an_application_setting(monkeypatch):
    settings = {}

    class QSettings:
        def value(self, key, default=None):
            return settings.get(key, default)

        def setValue(self, key, value):
            settings[key] = value

    monkeypatch.setitem(sys.modules, "qt", types.SimpleNamespace(QSettings=QSettings))
    assert environment.user_models_dir() == ""
    environment.set_user_models_dir("/data/models")
    assert settings == {"VentricleSynth/ModelsDirectory": "/data/models"}
    assert environment.user_models_dir() == "/data/models"
    environment.set_user_models_dir(None)
    assert environment.user_models_dir() == ""


def test_environment_imports_without_slicer_or_qt():
    code = ("import sys, VentricleSynthLib.slicer_glue.environment\n"
            "sys.exit(1 if {'qt', 'slicer'} & set(sys.modules) else 0)\n")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


@pytest.mark.parametrize("name", ["PythonSlicer", "pythonslicer.exe", "PythonSlicer-real"])
def test_launcher_names_use_slicer_startup_environment(name):
    env = environment.worker_environment(f"/x/{name}", _slicer(startup={"ONLY": "1"}))
    assert env["ONLY"] == "1"


def test_a_models_folder_is_saved_once_it_holds_bundles_not_per_keystroke(tmp_path):
    """Audit 13: the path field reports every keystroke; only "" and a folder holding a bundle are worth saving."""
    folder = tmp_path / "my models"
    (folder / "segmenter").mkdir(parents=True)
    (folder / "segmenter" / "config.json").write_text("{}")
    typed = str(folder)
    saved = [typed[:n] for n in range(len(typed) + 1) if environment.worth_saving(typed[:n])]
    assert saved == ["", typed]
    assert not environment.worth_saving(str(tmp_path))  # a folder, but no bundle in it
