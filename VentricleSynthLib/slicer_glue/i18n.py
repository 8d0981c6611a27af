"""Translation of the texts the Slicer glue shows: Slicer's `tr` (Slicer >= 5.4), imported when a text is
translated, so that this module, like the rest of the package, imports without Slicer."""

from __future__ import annotations


def tr(text: str) -> str:
    """`slicer.i18n.tr(text)` inside Slicer; the text unchanged where there is no `slicer.i18n`."""
    try:
        from slicer.i18n import tr as slicer_tr
    except ImportError:  # Slicer < 5.4, or outside the application (slicer-core has no i18n)
        return text
    return slicer_tr(text)
