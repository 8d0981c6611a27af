"""Where and how the Slicer module runs the worker: Slicer's Python executable, the worker's environment
and working directory, a temporary folder, and the models folder (user setting -> $VENTRICLESYNTH_MODELS ->
bundled).

`slicer` and `qt` are imported inside functions only; functions that read Slicer take `slicer_module=`
(default: the running Slicer, or none outside it) so that they can be checked headlessly.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

SETTINGS_MODELS_DIR = "VentricleSynth/ModelsDirectory"

_RUNNING_SLICER = object()


def _slicer(slicer_module=_RUNNING_SLICER):
    if slicer_module is not _RUNNING_SLICER:
        return slicer_module
    try:
        import slicer
    except ImportError:
        return None
    return slicer


def python_executable(slicer_module=_RUNNING_SLICER) -> str:
    """Slicer's `PythonSlicer` launcher (sets up Slicer's Python environment), else this interpreter."""
    slicer = _slicer(slicer_module)
    names = ["PythonSlicer.exe", "PythonSlicer"] if os.name == "nt" else ["PythonSlicer"]
    app = getattr(slicer, "app", None)
    home = getattr(app, "slicerHome", None) if app is not None else None
    for name in names:
        if home:
            candidate = os.path.join(home, "bin", name)
            if os.path.isfile(candidate):
                return candidate
        found = shutil.which(name)
        if found:
            return found
    return sys.executable


def worker_environment(python: str, slicer_module=_RUNNING_SLICER) -> dict:
    """Environment of the worker: Slicer's startup environment when the PythonSlicer launcher runs it
    (the launcher sets up Slicer's paths), else this process's environment."""
    environment = None
    if os.path.basename(python).lower().startswith("pythonslicer"):
        try:
            environment = dict(_slicer(slicer_module).util.startupEnvironment())
        except Exception:  # noqa: BLE001 - older Slicer, or outside the application
            environment = None
    if not environment:
        environment = dict(os.environ)
    environment.update({"PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8", "PYTHONNOUSERSITE": "1"})
    environment.setdefault("nnUNet_n_proc_DA", "0")
    return environment


def worker_cwd(library_parent: str | None, module_dir: str) -> str:
    """`python -m VentricleSynthLib` finds the package in the working directory: the folder that holds
    VentricleSynthLib (found by the module at start-up), else the module's own folder."""
    return library_parent or module_dir


def temporary_directory(slicer_module=_RUNNING_SLICER) -> str:
    """A new folder for one worker run, under Slicer's temporary path when there is one."""
    app = getattr(_slicer(slicer_module), "app", None)
    base = getattr(app, "temporaryPath", None) if app is not None else None
    if base:
        os.makedirs(base, exist_ok=True)
    return tempfile.mkdtemp(prefix="VentricleSynth-", dir=base or None)


def user_models_dir() -> str:
    """The models folder set in the Models section (application settings; "" when unset)."""
    import qt

    value = qt.QSettings().value(SETTINGS_MODELS_DIR, "")
    return str(value or "")


def worth_saving(path) -> bool:
    """Whether a models folder typed in the Models section is kept in the settings: "" (back to the default) or a
    folder that holds a bundle. The path field reports every keystroke; the partial paths on the way are not."""
    from VentricleSynthLib.bundles.store import IMAGE, MASK, SEGMENTER

    path = str(path or "")
    return not path or any(os.path.isfile(os.path.join(path, kind, "config.json")) for kind in (MASK, IMAGE, SEGMENTER))


def set_user_models_dir(path) -> None:
    import qt

    qt.QSettings().setValue(SETTINGS_MODELS_DIR, str(path or ""))


def models_dir(user: str) -> str:
    """The user's folder (Models section) if set, else $VENTRICLESYNTH_MODELS, else the bundled models; a folder
    that does not exist is skipped (`bundles.store.models_dir`)."""
    from VentricleSynthLib.bundles.store import models_dir as find_models_dir

    return str(find_models_dir(user, skip_missing=True))
