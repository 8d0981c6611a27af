"""The worker's Python packages in Slicer's Python: checked against the module's Resources/requirements.txt by
installed version (nothing is imported), and installed on the user's request the way Slicer extensions install
them: PyTorch through the PyTorch extension, nnU-Net through the NNUNet extension when present, the rest with
pip. `slicer`, `qt` and the extensions' modules are imported inside functions."""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import os
import re
import tempfile
from pathlib import Path
from typing import NamedTuple

from VentricleSynthLib.slicer_glue.i18n import tr as _

REQUESTER = "VentricleSynth"
TORCH = "torch"
NNUNET = "nnunetv2"
# Slicer's own packages and PyTorch's: pip never installs or replaces them (PyTorchUtils installs torch).
SLICER_OWNED = ("torch", "torchvision", "SimpleITK", "requests", "numpy", "scipy")
_BUSY = [False]  # an installation is running: Slicer processes events during pip, so a second click can come
_OPERATOR_ORDER = {">=": 0, ">": 0, "~=": 1, "==": 1, "===": 1, "!=": 2, "<": 3, "<=": 3}


class Problem(NamedTuple):
    """A required package that is missing (`found` None) or installed in a version outside `need`."""

    name: str
    need: str
    found: str | None = None

    @property
    def requirement(self) -> str:
        return self.name + self.need

    def __str__(self) -> str:
        if self.found is None:
            return _("{name}: missing (need {need})").format(name=self.name, need=self.need)
        return _("{name}: found {found}, need {need}").format(name=self.name, found=self.found, need=self.need)


class InstallResult(NamedTuple):
    """What `ensure_dependencies` did: `error` marks a failure to show in an error dialog (not a Cancel)."""

    ok: bool
    message: str
    error: bool = False


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_class():
    try:
        from packaging.requirements import Requirement
    except ImportError:  # a Python without `packaging`: pip's copy
        from pip._vendor.packaging.requirements import Requirement
    return Requirement


def requirements_file() -> Path:
    """The module's Resources/requirements.txt: next to the library when installed, under VentricleSynth/ in a
    source checkout."""
    root = Path(__file__).resolve().parents[2]
    for path in (root / "Resources" / "requirements.txt", root / "VentricleSynth" / "Resources" / "requirements.txt"):
        if path.is_file():
            return path
    raise FileNotFoundError(f"no Resources/requirements.txt next to {root}")


def load_requirements(path=None) -> list:
    """The `packaging` Requirements of `path` (default: the module's file) whose markers apply here."""
    Requirement = _requirement_class()
    requirements = []
    for line in Path(path or requirements_file()).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate():
                requirements.append(requirement)
    return requirements


def _need(requirement) -> str:
    specifiers = sorted(requirement.specifier, key=lambda s: (_OPERATOR_ORDER.get(s.operator, 1), s.version))
    return ",".join(str(s) for s in specifiers)


def missing_dependencies(path=None) -> list:
    """One Problem per required package that is missing or of a version outside its bounds, from the installed
    distributions' metadata (no package is imported)."""
    problems = []
    for requirement in load_requirements(path):
        need = _need(requirement)
        try:
            found = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            found = None
        if not found:
            problems.append(Problem(requirement.name, need))
            continue
        try:
            ok = requirement.specifier.contains(found, prereleases=True)
        except ValueError:  # a version string `packaging` cannot read
            ok = False
        if not ok:
            problems.append(Problem(requirement.name, need, found))
    return problems


def status_text(problems: list) -> str:
    """The panel's dependency line(s): one line per problem."""
    if not problems:
        return _("All Python packages the worker needs are installed.")
    lines = "\n".join(str(problem) for problem in problems)
    return _("Python packages to install or update:") + "\n" + lines


def _extension(module: str, attribute: str):
    """A Slicer extension's Python module when it imports and has `attribute`, else None."""
    try:
        found = importlib.import_module(module)
    except Exception:  # noqa: BLE001 - an extension that is absent or fails to import is not used
        return None
    return found if hasattr(found, attribute) else None


@contextlib.contextmanager
def _wait_cursor(slicer):
    import qt

    slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
    try:
        yield
    finally:
        slicer.app.restoreOverrideCursor()


def _pinned_constraints() -> str:
    """A pip constraints file pinning the installed versions of Slicer's own packages (path; caller removes it)."""
    pins = []
    for name in SLICER_OWNED:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}\n")
        except importlib.metadata.PackageNotFoundError:
            pass
    handle, path = tempfile.mkstemp(prefix="ventriclesynth-constraints-", suffix=".txt")
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        file.writelines(pins)
    return path


def _pip(slicer, requirements: list) -> None:
    """`slicer.packaging.pip_ensure` (Slicer >= 5.12; `import slicer` does not import it), else `pip install`
    with Slicer's own packages pinned at their installed versions."""
    try:
        packaging = importlib.import_module("slicer.packaging")
    except ImportError:
        packaging = None
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        packaging.pip_ensure(requirements, requester=REQUESTER, prompt_install=False,
                             skip_packages=list(SLICER_OWNED))
        return
    constraints = _pinned_constraints()
    try:
        slicer.util.pip_install([*requirements, "-c", constraints])
    finally:
        os.remove(constraints)


def _nnunet(nnunet_lib, problem: Problem) -> None:
    """nnunetv2 through the NNUNet extension's install logic (it skips torch, SimpleITK and requests)."""
    logic = nnunet_lib.InstallLogic(doAskConfirmation=False)
    log = []
    logic.progressInfo.connect(log.append)
    if not logic.setupPythonRequirements(problem.requirement) or getattr(logic, "needsRestart", False):
        raise RuntimeError(_("the NNUNet extension did not install {requirement} ({log})").format(
            requirement=problem.requirement, log=log[-1] if log else _("no details")))


def _install(problems: list, torch_utils) -> None:
    import slicer

    todo = {_canonical(problem.name): problem for problem in problems}
    torch = todo.pop(TORCH, None)
    if torch is not None:  # PyTorchUtils imports torch into Slicer's process once installed
        logic = torch_utils.PyTorchUtilsLogic()
        if logic.installTorch(askConfirmation=False, torchVersionRequirement=torch.need) is None:
            raise RuntimeError(_("PyTorch was not installed."))
    nnunet = todo.get(NNUNET)
    nnunet_lib = _extension("SlicerNNUNetLib", "InstallLogic") if nnunet and torch_utils else None
    if nnunet_lib is not None:
        _nnunet(nnunet_lib, todo.pop(NNUNET))
    owned = {_canonical(name) for name in SLICER_OWNED}
    rest = [problem.requirement for key, problem in todo.items() if key not in owned]
    if rest:
        _pip(slicer, rest)


def _installable(problems: list) -> list:
    owned = {_canonical(name) for name in SLICER_OWNED} - {TORCH}
    return [problem for problem in problems if _canonical(problem.name) not in owned]


def ensure_dependencies(path=None, ask_confirmation: bool = True) -> InstallResult:
    """Check, ask once, then install what is missing or outdated under a wait cursor. Never raises: a Cancel
    gives (False, "... cancelled"), a failure (False, reason, error=True), a running installation refuses."""
    if _BUSY[0]:
        return InstallResult(False, _("The Python packages are being installed: wait for the installation."))
    try:
        problems = missing_dependencies(path)
        if not problems:
            return InstallResult(True, "")
        if not _installable(problems):
            return InstallResult(False, _("These packages belong to Slicer and are not replaced:\n{lines}").format(
                lines="\n".join(str(p) for p in problems)), error=True)
        import slicer

        torch_utils = _extension("PyTorchUtils", "PyTorchUtilsLogic")
        if torch_utils is None and any(_canonical(p.name) == TORCH for p in problems):
            return InstallResult(False, _(
                "VentricleSynth needs PyTorch, which the PyTorch extension installs: install that extension "
                "(Extensions Manager), restart Slicer, then press 'Install dependencies'."), error=True)
        lines = "\n".join(str(p) for p in problems)
        if ask_confirmation and not slicer.util.confirmOkCancelDisplay(
                _("VentricleSynth needs these Python packages in Slicer's Python:\n{lines}\n\nInstall them now? "
                  "This needs a network connection and may take several minutes.").format(lines=lines),
                windowTitle=REQUESTER):
            return InstallResult(False, _("Installation of the Python packages cancelled."))
        _BUSY[0] = True
        try:
            with _wait_cursor(slicer):
                _install(problems, torch_utils)
        finally:
            _BUSY[0] = False
            importlib.invalidate_caches()
        left = missing_dependencies(path)
    except Exception as exc:  # noqa: BLE001 - the panel shows the reason once, in one dialog
        return InstallResult(False, _("Failed to install the Python packages: {error}").format(
            error=str(exc) or type(exc).__name__), error=True)
    if left:
        return InstallResult(False, _("Still missing or of the wrong version after installing:\n{lines}").format(
            lines="\n".join(str(p) for p in left)), error=True)
    return InstallResult(True, _("The Python packages the worker needs are installed."))
