"""PNG figures: matplotlib's default style whatever the process set, written atomically, always closed."""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import pytest
import seaborn

from VentricleSynthLib.io.figures import png_figure


def test_figures_keep_matplotlib_defaults_after_nnunet_restyles_the_process(tmp_path):
    """nnU-Net's progress plot calls seaborn's set(font_scale=2.5) for the whole process; the experiment's report
    plots, drawn after its trainings, once came out with axis labels larger than their axes."""
    with matplotlib.rc_context():
        seaborn.set(font_scale=2.5)
        with png_figure(tmp_path / "plot.png", figsize=(4, 3)) as (fig, ax):
            ax.set_xlabel("reference ventricular volume (mL)")
            label_size = ax.xaxis.label.get_fontsize()
            tick_size = ax.xaxis.get_major_ticks()[0].label1.get_fontsize()
            face = matplotlib.colors.to_hex(ax.get_facecolor())
        assert matplotlib.rcParams["font.size"] == pytest.approx(12 * 2.5)  # the caller's style is left alone
    assert (label_size, tick_size, face) == (10.0, 10.0, "#ffffff")  # matplotlib's defaults, not seaborn's
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert fig.number not in plt.get_fignums()

    with pytest.raises(RuntimeError):
        with png_figure(tmp_path / "failed.png") as (fig, ax):
            raise RuntimeError("drawing failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]  # no partial or temporary file
    assert fig.number not in plt.get_fignums()
