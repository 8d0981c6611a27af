"""The worker's Python packages in Slicer's Python: what is missing (found without importing anything) and the
installation on the user's request, with a stand-in `slicer` (dialogs and pip recorded, nothing installed)."""

from __future__ import annotations

import sys
import types

import pytest

from VentricleSynthLib.slicer_glue import dependencies


def test_missing_dependencies_names_pip_requirements_without_importing(monkeypatch):
    sys.modules.pop("this", None)  # the Zen of Python prints itself when imported
    packages = {"json": "json-req", "ventriclesynth_no_such_module": "no-such-package", "this": "zen"}
    assert dependencies.missing_dependencies(packages) == ["no-such-package"]
    assert "this" not in sys.modules
    broken = types.ModuleType("ventriclesynth_broken_spec")
    broken.__spec__ = None  # find_spec raises ValueError for such a module
    monkeypatch.setitem(sys.modules, "ventriclesynth_broken_spec", broken)
    assert dependencies.missing_dependencies({"ventriclesynth_broken_spec": "broken"}) == ["broken"]
    assert dependencies.missing_dependencies({"os.path": "dotted"}) == []


def test_the_worker_packages_in_this_environment():
    assert set(dependencies.WORKER_PACKAGES) == {"torch", "monai", "nibabel", "scipy", "safetensors", "matplotlib",
                                                 "nnunetv2"}
    missing = dependencies.missing_dependencies()
    assert set(missing) <= set(dependencies.WORKER_PACKAGES.values()) and "torch" not in missing


class _Slicer:
    """What install_dependencies uses of `slicer`: a confirmation dialog and pip, recorded."""

    def __init__(self, confirm=True, packaging=False):
        self.calls = []
        self.util = types.SimpleNamespace(confirmOkCancelDisplay=self._confirm(confirm), pip_install=self._pip)
        if packaging:
            self.packaging = types.SimpleNamespace(
                load_requirements=lambda path: ("requirements of", path),
                pip_ensure=lambda requirements, **kwargs: self.calls.append(("pip_ensure", requirements, kwargs)))

    def _confirm(self, answer):
        def confirm(text):
            self.calls.append(("confirm", text))
            return answer

        return confirm

    def _pip(self, args):
        self.calls.append(("pip_install", args))


@pytest.fixture
def missing(monkeypatch):
    """Make `missing_dependencies()` report the given names (the venv has everything)."""
    state = {"names": []}
    monkeypatch.setattr(dependencies, "missing_dependencies", lambda packages=None: list(state["names"]))
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # the PyTorch extension is not installed
    return state


def test_nothing_missing_installs_nothing(monkeypatch, missing):
    fake = _Slicer()
    monkeypatch.setitem(sys.modules, "slicer", fake)
    dependencies.install_dependencies("/ext/requirements.txt")
    assert fake.calls == []


def test_torch_by_pip_then_the_requirements_after_asking(monkeypatch, missing):
    missing["names"] = ["torch", "monai", "nnunetv2"]
    fake = _Slicer()
    monkeypatch.setitem(sys.modules, "slicer", fake)
    dependencies.install_dependencies("/ext/requirements.txt")
    kinds = [call[0] for call in fake.calls]
    assert kinds == ["confirm", "pip_install", "confirm", "pip_install"]
    assert "PyTorch" in fake.calls[0][1] and fake.calls[1] == ("pip_install", "torch")
    assert "monai, nnunetv2" in fake.calls[2][1] and fake.calls[3] == ("pip_install", ["-r", "/ext/requirements.txt"])
    fake.calls.clear()
    dependencies.install_dependencies("/ext/requirements.txt", ask_confirmation=False)
    assert [call[0] for call in fake.calls] == ["pip_install", "pip_install"]


def test_declining_installs_nothing_and_says_so(monkeypatch, missing):
    missing["names"] = ["torch"]
    fake = _Slicer(confirm=False)
    monkeypatch.setitem(sys.modules, "slicer", fake)
    with pytest.raises(RuntimeError, match="PyTorch was not installed"):
        dependencies.install_dependencies("/ext/requirements.txt")
    missing["names"] = ["monai"]
    with pytest.raises(RuntimeError, match="Python packages were not installed"):
        dependencies.install_dependencies("/ext/requirements.txt")
    assert not [call for call in fake.calls if call[0] == "pip_install"]


def test_pytorch_extension_then_pip_ensure_when_slicer_has_them(monkeypatch, missing):
    missing["names"] = ["torch", "monai"]
    asked = []

    class PyTorchUtilsLogic:
        def installTorch(self, askConfirmation):
            asked.append(askConfirmation)
            return object()

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    fake = _Slicer(packaging=True)
    monkeypatch.setitem(sys.modules, "slicer", fake)
    dependencies.install_dependencies("/ext/requirements.txt", ask_confirmation=False)
    assert asked == [False]
    assert fake.calls == [("pip_ensure", ("requirements of", "/ext/requirements.txt"),
                           {"requester": "VentricleSynth", "prompt_install": False,
                            "skip_packages": ["torch", "SimpleITK", "requests"]})]
    PyTorchUtilsLogic.installTorch = lambda self, askConfirmation: None  # the user cancelled
    with pytest.raises(RuntimeError, match="PyTorch was not installed"):
        dependencies.install_dependencies("/ext/requirements.txt")
