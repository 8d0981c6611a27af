"""PNG figures: headless matplotlib, matplotlib's default style, written atomically.

Every figure is drawn and saved inside `plt.style.context("default")` because other libraries change the
process-wide rcParams: nnU-Net's progress plot calls seaborn's `set(font_scale=2.5)`, after which the
experiment's report plots (drawn in the same process after training) had axis labels larger than their axes.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from VentricleSynthLib.io.atomic import atomic_write


@contextmanager
def png_figure(path: Path, dpi: int = 90, **subplots) -> Iterator[tuple]:
    """`with png_figure(path, figsize=...) as (fig, axes):` draw; on exit tight layout, write PNG, close."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.style.context("default"):
        fig, axes = plt.subplots(**subplots)
        try:
            yield fig, axes
            fig.tight_layout()
            atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
        finally:
            plt.close(fig)
