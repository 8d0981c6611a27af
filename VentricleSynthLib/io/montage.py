"""Montage PNGs of cases: image slices with the ventricles outlined, one column per case with its caption."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from VentricleSynthLib.io.figures import png_figure
from VentricleSynthLib.labels import ventricle_mask


def ventricle_views(image: np.ndarray, label: np.ndarray, n_views: int = 2) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image slice, ventricle mask slice) through the ventricles' centre of mass: axial, coronal[, sagittal]."""
    vent = ventricle_mask(label)
    c = np.argwhere(vent).mean(axis=0).round().astype(int) if vent.any() else np.array(image.shape) // 2
    views = [(image[:, :, c[2]], vent[:, :, c[2]]), (image[:, c[1], :], vent[:, c[1], :]),
             (image[c[0], :, :], vent[c[0], :, :])]
    return views[:n_views]


def draw_outlined(ax, image_slice: np.ndarray, mask_slice: np.ndarray) -> None:
    """A grey [0, 1] image slice with the mask's outline in orange, no axes."""
    ax.imshow(image_slice.T, origin="lower", cmap="gray", vmin=0, vmax=1)
    if mask_slice.any():
        ax.contour(mask_slice.T.astype(float), levels=[0.5], colors="orange", linewidths=0.8)
    ax.axis("off")


def write_montage(cases: list[dict], path: Path, title: str = "") -> Path:
    """`cases`: dicts with image (3-D), label (3-D, schema) and a `caption`. Axial + coronal per case."""
    n = len(cases)
    with png_figure(path, dpi=80, nrows=2, ncols=n, figsize=(2.2 * n, 4.8), squeeze=False) as (fig, axes):
        for j, case in enumerate(cases):
            for i, (img, msk) in enumerate(ventricle_views(case["image"], case["label"])):
                draw_outlined(axes[i, j], img, msk)
            axes[0, j].set_title(case["caption"], fontsize=8)
        if title:
            fig.suptitle(title, fontsize=10)
    return path
