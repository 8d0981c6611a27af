"""Which Slicers the module supports: 5.10 and later (Python 3.12).

Slicer 5.8 runs Python 3.9, for which the package index offers at most torch 2.8, monai 1.5.2 and nnunetv2 2.5.2:
the bundles were never built or loaded with those, so on 5.8 the module shows one message in its panel instead of
failing half-way. This module (like everything Slicer's process imports) imports under Python 3.9.
"""

from __future__ import annotations

import sys

from VentricleSynthLib.slicer_glue.i18n import tr as _

MINIMUM_SLICER = (5, 10)  # the extension's CMakeLists.txt refuses to build against older Slicers too
MINIMUM_PYTHON = (3, 12)  # the Python of MINIMUM_SLICER (CMake checks this one: SlicerConfig has no version)


def running_slicer_version(slicer_module=None):
    """(major, minor) of the running Slicer application, or None outside it."""
    if slicer_module is None:
        try:
            import slicer as slicer_module
        except ImportError:
            return None
    app = getattr(slicer_module, "app", None)
    try:
        return int(app.majorVersion), int(app.minorVersion)
    except (AttributeError, TypeError, ValueError):
        return None


def refusal(slicer_version, python_version=None) -> str | None:
    """The message that replaces the panel on a Slicer older than MINIMUM_SLICER, else None (also outside Slicer,
    `slicer_version` None: scripts and tests run the Logic with whatever Python they have)."""
    if slicer_version is None or tuple(slicer_version) >= MINIMUM_SLICER:
        return None
    python_version = tuple(python_version or sys.version_info[:2])
    return _("VentricleSynth needs 3D Slicer {minimum} or later (Python {python}); this is Slicer {found} "
             "(Python {found_python}). Install a newer Slicer from download.slicer.org.").format(
        minimum="{}.{}".format(*MINIMUM_SLICER), python="{}.{}".format(*MINIMUM_PYTHON),
        found="{}.{}".format(*slicer_version), found_python="{}.{}".format(*python_version))


def running_refusal(slicer_module=None) -> str | None:
    """`refusal` for the running Slicer and Python."""
    return refusal(running_slicer_version(slicer_module))
