"""The worker's Python packages in Slicer's Python: the check by installed version (real distribution metadata,
written into a temporary site folder; nothing imported) and the installation flow with stand-ins for `slicer`,
`qt`, PyTorchUtils and SlicerNNUNetLib that record what they are asked and "install" by writing metadata."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

from VentricleSynthLib.slicer_glue import dependencies

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO / "VentricleSynth" / "Resources" / "requirements.txt"


def _dist(site: Path, name: str, version: str) -> None:
    """Metadata of an installed distribution `name` `version` (replacing any other version of it)."""
    for old in site.glob(f"{name.replace('-', '_')}-*.dist-info"):
        for file in old.iterdir():
            file.unlink()
        old.rmdir()
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    return folder


def _requirements(tmp_path, *lines) -> Path:
    path = tmp_path / "requirements.txt"
    path.write_text("# comment\n\n" + "\n".join(lines) + "\n")
    return path


def test_check_reports_missing_and_wrong_versions_without_importing(site, tmp_path):
    _dist(site, "vs-fake-old", "1.0")
    _dist(site, "vs-fake-new", "3.0")
    _dist(site, "vs-fake-good", "1.6.1")
    (site / "vs_fake_good.py").write_text("raise RuntimeError('imported')\n")
    path = _requirements(tmp_path, "vs-fake-old>=1.2,<2", "vs-fake-new<2.15,>=2.8,!=2.9.*  # trailing comment",
                         "vs-fake-good>=1.6,<1.7", "vs-fake-absent>=1", "vs-fake-absent-elsewhere; python_version<'3'")
    problems = dependencies.missing_dependencies(path)
    assert problems == [("vs-fake-old", ">=1.2,<2", "1.0"), ("vs-fake-new", ">=2.8,!=2.9.*,<2.15", "3.0"),
                        ("vs-fake-absent", ">=1", None)]
    assert "vs_fake_good" not in sys.modules
    assert [str(p) for p in problems] == ["vs-fake-old: found 1.0, need >=1.2,<2",
                                          "vs-fake-new: found 3.0, need >=2.8,!=2.9.*,<2.15",
                                          "vs-fake-absent: missing (need >=1)"]
    assert problems[1].requirement == "vs-fake-new>=2.8,!=2.9.*,<2.15"
    assert dependencies.status_text(problems).splitlines() == ["Python packages to install or update:",
                                                               *map(str, problems)]
    assert dependencies.status_text([]) == "All Python packages the worker needs are installed."


def test_local_and_pre_release_builds_inside_the_bounds_pass(site, tmp_path):
    _dist(site, "vs-fake-torch", "2.14.1+cu128")
    _dist(site, "vs-fake-rc", "2.14.0rc1")
    _dist(site, "vs-fake-nine", "2.9.1+cpu")
    path = _requirements(tmp_path, "vs-fake-torch>=2.8,!=2.9.*,<2.15", "vs-fake-rc>=2.8,<2.15",
                         "vs-fake-nine>=2.8,!=2.9.*,<2.15")
    assert dependencies.missing_dependencies(path) == [("vs-fake-nine", ">=2.8,!=2.9.*,<2.15", "2.9.1+cpu")]


@pytest.mark.worker_packages  # reads the versions installed in the project's environment
def test_the_module_requirements_hold_the_tested_versions_between_their_bounds():
    """This venv holds the versions the bundles were tested with: each is inside its bounds, the next minor of
    the ML packages outside; torch, monai and nnunetv2 are bounded on both sides; Slicer's numpy is not listed."""
    assert dependencies.requirements_file() == REQUIREMENTS
    requirements = {r.name: r for r in dependencies.load_requirements()}
    assert {"torch", "monai", "nnunetv2", "nibabel", "safetensors", "matplotlib", "scipy"} == set(requirements)
    assert dependencies.missing_dependencies() == []
    pinned = dict(line.split("==") for line in (REPO / "requirements" / "constraints.txt").read_text().splitlines()
                  if "==" in line and not line.startswith("#"))
    assert pinned["torch"] in requirements["torch"].specifier
    for name, too_new, too_old in (("torch", "2.15.0", "2.7.1"), ("monai", "1.7.0", "1.5.2"),
                                   ("nnunetv2", "2.9.0", "2.6.4"), ("safetensors", "0.9.0", "0.3.3")):
        assert too_new not in requirements[name].specifier and too_old not in requirements[name].specifier
    assert "2.9.1" not in requirements["torch"].specifier  # nnunetv2 excludes torch 2.9


def test_the_check_runs_under_python_3_9_with_pips_packaging(tmp_path):
    """Slicer 5.8's Python reads this module (to refuse cleanly): no runtime `X | Y`; without `packaging`
    the check uses pip's copy."""
    found = sorted(Path.home().glob(".pyenv/versions/3.9*/bin/python3.9"))
    if not found:
        pytest.skip("no Python 3.9 (pyenv) here")
    code = ("import sys, importlib.util; sys.path.insert(0, sys.argv[1]); "
            "import VentricleSynthLib.slicer_glue.dependencies as d; "
            "print(importlib.util.find_spec('packaging') is None); "
            "print(d.status_text([d.Problem('monai', '>=1.6', '1.5')]).splitlines()[-1]); "
            "print(sorted(p.name for p in d.missing_dependencies()))")
    done = subprocess.run([str(found[-1]), "-c", code, str(REPO)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    no_packaging, line, names = done.stdout.splitlines()
    assert line == "monai: found 1.5, need >=1.6"
    assert set(eval(names)) <= {"torch", "monai", "nnunetv2", "nibabel", "safetensors", "matplotlib", "scipy"}
    if no_packaging == "True":
        assert "torch" in eval(names)  # read with pip._vendor.packaging: a bare 3.9 has no torch


# ------------------------------------------------------------------------------------ installation
class _Slicer(types.ModuleType):
    """What the installation uses of `slicer`: a confirmation, the wait cursor and pip, recorded in `calls`."""

    def __init__(self, calls, answer=True, pip=None):
        super().__init__("slicer")
        self.calls = calls
        self.app = types.SimpleNamespace(setOverrideCursor=lambda cursor: calls.append(("cursor", cursor)),
                                         restoreOverrideCursor=lambda: calls.append(("cursor", None)))
        self.util = types.SimpleNamespace(confirmOkCancelDisplay=self._confirm(answer), pip_install=pip or self._pip,
                                          errorDisplay=lambda *a, **k: calls.append(("errorDisplay", a)))

    def _confirm(self, answer):
        def confirm(text, windowTitle=None):
            self.calls.append(("confirm", text))
            return answer

        return confirm

    def _pip(self, args):
        self.calls.append(("pip_install", list(args)))


@pytest.fixture
def fake(monkeypatch, site):
    """Stand-ins: `slicer` (no slicer.packaging: Slicer 5.10), `qt`, no PyTorch or NNUNet extension."""
    calls = []
    slicer = _Slicer(calls)
    monkeypatch.setitem(sys.modules, "slicer", slicer)
    monkeypatch.setitem(sys.modules, "slicer.packaging", None)
    monkeypatch.setitem(sys.modules, "qt", types.SimpleNamespace(Qt=types.SimpleNamespace(WaitCursor="wait")))
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    monkeypatch.setitem(sys.modules, "SlicerNNUNetLib", None)
    return types.SimpleNamespace(slicer=slicer, calls=calls, site=site)


def _torch_utils(monkeypatch, calls, result=True):
    class PyTorchUtilsLogic:
        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
                         torchvisionVersionRequirement=None):
            calls.append(("installTorch", askConfirmation, torchVersionRequirement))
            return result

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))


def test_cancel_installs_nothing_and_shows_no_error(fake, tmp_path):
    fake.slicer.util.confirmOkCancelDisplay = fake.slicer._confirm(False)
    result = dependencies.ensure_dependencies(_requirements(tmp_path, "vs-fake-a>=1"))
    assert result == (False, "Installation of the Python packages cancelled.", False)
    assert [c[0] for c in fake.calls] == ["confirm"] and "vs-fake-a: missing (need >=1)" in fake.calls[0][1]
    fake.slicer.util.confirmOkCancelDisplay = fake.slicer._confirm(True)
    assert dependencies.ensure_dependencies(_requirements(tmp_path, "vs-fake-a>=1")).error  # pip "ran", still missing


@pytest.mark.worker_packages  # reads the versions installed in the project's environment
def test_confirmation_then_wait_cursor_around_pip_with_the_pins_and_slicer_packages_pinned(fake, tmp_path):
    _dist(fake.site, "vs-fake-b", "0.1")
    seen = {}

    def pip(args):
        fake.calls.append(("pip_install", list(args)))
        seen["constraints"] = Path(args[args.index("-c") + 1]).read_text()
        _dist(fake.site, "vs-fake-a", "1.6.1")
        _dist(fake.site, "vs-fake-b", "0.5")

    fake.slicer.util.pip_install = pip
    path = _requirements(tmp_path, "vs-fake-a>=1.6,<1.7", "vs-fake-b>=0.4,<0.9", "scipy>=1.0")
    assert dependencies.ensure_dependencies(path) == (True, "The Python packages the worker needs are installed.",
                                                      False)
    assert [c[0] for c in fake.calls] == ["confirm", "cursor", "pip_install", "cursor"]
    assert fake.calls[1] == ("cursor", "wait") and fake.calls[3] == ("cursor", None)
    args = fake.calls[2][1]
    assert args[:2] == ["vs-fake-a>=1.6,<1.7", "vs-fake-b>=0.4,<0.9"] and args[2] == "-c"
    assert not Path(args[3]).exists()  # the constraints file is removed afterwards
    assert "torch==2.14.1" in seen["constraints"].splitlines() and "numpy==" in seen["constraints"]
    assert dependencies.missing_dependencies(path) == []


def test_a_second_click_during_the_installation_starts_no_second_one(fake, tmp_path):
    path = _requirements(tmp_path, "vs-fake-a>=1")
    inner = []

    def pip(args):  # Slicer processes events while pip runs: the user clicks again
        fake.calls.append(("pip_install", list(args)))
        inner.append(dependencies.ensure_dependencies(path))
        _dist(fake.site, "vs-fake-a", "1.0")

    fake.slicer.util.pip_install = pip
    assert dependencies.ensure_dependencies(path).ok
    assert [c[0] for c in fake.calls].count("pip_install") == 1 and [c[0] for c in fake.calls].count("confirm") == 1
    assert inner[0].ok is False and not inner[0].error and "being installed" in inner[0].message
    assert not dependencies._BUSY[0]


def test_a_failing_pip_returns_its_reason_once_and_frees_the_button(fake, tmp_path):
    def pip(args):
        raise subprocess.CalledProcessError(1, ["pip", "install"])

    fake.slicer.util.pip_install = pip
    result = dependencies.ensure_dependencies(_requirements(tmp_path, "vs-fake-a>=1"))
    assert not result.ok and result.error and "Failed to install the Python packages" in result.message
    assert "returned non-zero exit status 1" in result.message
    assert [c[0] for c in fake.calls] == ["confirm", "cursor", "cursor"] and not dependencies._BUSY[0]


@pytest.mark.worker_packages  # reads the versions installed in the project's environment
def test_torch_through_pytorchutils_with_the_bounds_and_never_through_pip(fake, tmp_path, monkeypatch):
    _torch_utils(monkeypatch, fake.calls)
    path = _requirements(tmp_path, "torch>=2.15,<2.16", "vs-fake-a>=1")  # this venv's torch 2.14.1 is too old
    result = dependencies.ensure_dependencies(path, ask_confirmation=False)
    assert ("installTorch", False, ">=2.15,<2.16") in fake.calls
    pip = [c for c in fake.calls if c[0] == "pip_install"]
    assert len(pip) == 1 and pip[0][1][0] == "vs-fake-a>=1" and not any("torch>" in a for a in pip[0][1])
    assert not result.ok and "torch: found 2.14.1, need >=2.15,<2.16" in result.message  # the stand-in installs none
    assert "confirm" not in [c[0] for c in fake.calls]


def test_torch_needed_without_the_pytorch_extension_is_refused_before_asking(fake, tmp_path):
    result = dependencies.ensure_dependencies(_requirements(tmp_path, "torch>=2.15"))
    assert not result.ok and result.error and "PyTorch extension" in result.message
    assert fake.calls == []


def test_slicer_packaging_is_imported_and_pip_ensure_skips_slicers_packages(fake, tmp_path, monkeypatch):
    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_ensure = lambda requirements, **kwargs: fake.calls.append(("pip_ensure", requirements, kwargs))
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)  # not an attribute of `slicer` (5.12)
    assert not hasattr(fake.slicer, "packaging")
    dependencies.ensure_dependencies(_requirements(tmp_path, "vs-fake-a>=1,<2", "numpy>=99"), ask_confirmation=False)
    assert fake.calls[1] == ("pip_ensure", ["vs-fake-a>=1,<2"], {
        "requester": "VentricleSynth", "prompt_install": False,
        "skip_packages": ["torch", "torchvision", "SimpleITK", "requests", "numpy", "scipy"]})
    assert "pip_install" not in [c[0] for c in fake.calls]


def test_nnunet_through_the_nnunet_extension_when_present(fake, tmp_path, monkeypatch):
    _torch_utils(monkeypatch, fake.calls)
    asked = []

    class InstallLogic:
        def __init__(self, doAskConfirmation=True):
            asked.append(doAskConfirmation)
            self.progressInfo = types.SimpleNamespace(connect=lambda slot: setattr(self, "log", slot))
            self.needsRestart = False

        def setupPythonRequirements(self, nnUNetRequirements="nnunetv2"):
            fake.calls.append(("nnunet", nnUNetRequirements))
            self.log("Error occurred during install : no network")
            return False

    monkeypatch.setitem(sys.modules, "SlicerNNUNetLib", types.SimpleNamespace(InstallLogic=InstallLogic))
    result = dependencies.ensure_dependencies(_requirements(tmp_path, "nnunetv2>=2.9,<2.10", "vs-fake-a>=1"))
    assert asked == [False] and ("nnunet", "nnunetv2>=2.9,<2.10") in fake.calls
    assert "pip_install" not in [c[0] for c in fake.calls]  # a failed nnU-Net stops before pip
    assert result.error and "no network" in result.message
    monkeypatch.setitem(sys.modules, "SlicerNNUNetLib", None)  # no NNUNet extension: nnunetv2 by pip
    fake.calls.clear()
    dependencies.ensure_dependencies(_requirements(tmp_path, "nnunetv2>=2.9,<2.10"), ask_confirmation=False)
    assert next(c for c in fake.calls if c[0] == "pip_install")[1][0] == "nnunetv2>=2.9,<2.10"


def test_only_slicer_owned_packages_wrong_is_reported_not_installed(fake, tmp_path):
    result = dependencies.ensure_dependencies(_requirements(tmp_path, "numpy>=99"))
    assert not result.ok and "belong to Slicer" in result.message and fake.calls == []
