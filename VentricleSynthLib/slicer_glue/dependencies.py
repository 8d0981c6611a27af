"""The Python packages the worker needs in Slicer's Python: which are missing (found without importing
them), and their installation on the user's request (`slicer` and PyTorchUtils imported inside functions)."""

from __future__ import annotations

import importlib.util

from VentricleSynthLib.slicer_glue.i18n import tr as _

# Import name -> pip requirement of what the worker needs (torch comes from the PyTorch extension).
WORKER_PACKAGES = {
    "torch": "torch",
    "monai": "monai",
    "nibabel": "nibabel",
    "scipy": "scipy",
    "safetensors": "safetensors",
    "matplotlib": "matplotlib",
    "nnunetv2": "nnunetv2",
}


def missing_dependencies(packages: dict[str, str] = WORKER_PACKAGES) -> list[str]:
    """pip names of the worker's packages that Slicer's Python cannot find (nothing is imported)."""
    missing = []
    for module, requirement in packages.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(requirement)
    return missing


def install_dependencies(requirements: str, ask_confirmation: bool = True) -> None:
    """PyTorch through the PyTorch extension (PyTorchUtils) when present, then `requirements` (the module's
    Resources/requirements.txt) through `slicer.packaging.pip_ensure` (Slicer >= 5.12) or
    `slicer.util.pip_install`."""
    import slicer

    missing = missing_dependencies()
    if not missing:
        return
    if "torch" in missing:
        try:
            import PyTorchUtils
        except ImportError:
            PyTorchUtils = None
        if PyTorchUtils is not None:
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=ask_confirmation)
            if torch is None:
                raise RuntimeError(_("PyTorch was not installed (cancelled)."))
        else:
            if ask_confirmation and not slicer.util.confirmOkCancelDisplay(
                    _("VentricleSynth needs PyTorch. Install it now with pip (CPU/GPU build chosen by pip)? "
                      "The PyTorch extension picks the right GPU build; install it from the Extensions Manager "
                      "for GPU support.")):
                raise RuntimeError(_("PyTorch was not installed (cancelled)."))
            slicer.util.pip_install("torch")
    packaging = getattr(slicer, "packaging", None)
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        packaging.pip_ensure(packaging.load_requirements(requirements), requester="VentricleSynth",
                             prompt_install=ask_confirmation, skip_packages=["torch", "SimpleITK", "requests"])
    else:
        if ask_confirmation and not slicer.util.confirmOkCancelDisplay(
                _("VentricleSynth needs these Python packages: {names}. Install them now?").format(
                    names=", ".join(m for m in missing_dependencies() if m != "torch"))):
            raise RuntimeError(_("The Python packages were not installed (cancelled)."))
        slicer.util.pip_install(["-r", requirements])
