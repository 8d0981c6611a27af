"""Montage PNGs of cases: image slices with the ventricles outlined, one column per case with its caption."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .labels import ventricle_mask
from .nifti import atomic_write_bytes


def write_montage(cases: list[dict], path: Path, title: str = "") -> Path:
    """`cases`: dicts with image (3-D), label (3-D, schema) and a `caption`. Axial + coronal per case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(cases)
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 4.8), squeeze=False)
    for j, case in enumerate(cases):
        image, vent = case["image"], ventricle_mask(case["label"])
        # the slices through the ventricles' centre of mass
        centre = np.argwhere(vent).mean(axis=0).round().astype(int) if vent.any() else np.array(image.shape) // 2
        views = [(image[:, :, centre[2]], vent[:, :, centre[2]]), (image[:, centre[1], :], vent[:, centre[1], :])]
        for i, (img, msk) in enumerate(views):
            ax = axes[i, j]
            ax.imshow(img.T, origin="lower", cmap="gray", vmin=0, vmax=1)
            if msk.any():
                ax.contour(msk.T.astype(float), levels=[0.5], colors="orange", linewidths=0.8)
            ax.axis("off")
        axes[0, j].set_title(case["caption"], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write_bytes(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    plt.close(fig)
    return path
