"""One PNG per scan: every tool's ventricles (and the label map's, when the scan has one) over the same axial
and coronal slices through the centre of all tools' ventricles together, zoomed onto them, in the neurological
convention (the head's left on the picture's left), whatever the scan's storage orientation."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from VentricleSynthLib.labels import label_colour, ventricle_mask  # noqa: E402

SHOWN = (4, 43, 5, 44, 14, 15)  # the ventricle labels, coloured as the schema colours them


def _to_ras(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    ornt = nib.orientations.io_orientation(affine)
    return nib.orientations.apply_orientation(array, ornt)


def _colormap() -> tuple[ListedColormap, np.ndarray]:
    lut = np.zeros(max(SHOWN) + 1, dtype=np.int64)
    colours = [(0, 0, 0, 0)]
    for i, label in enumerate(SHOWN, start=1):
        lut[label] = i
        colours.append((*[c / 255 for c in label_colour(label)], 0.65))
    return ListedColormap(colours), lut


def _window(union: np.ndarray, axis: int, spacing: float, margin_mm: float = 25.0) -> slice:
    """The ventricles' extent along `axis` plus a margin: the pictures zoom onto the ventricles."""
    hits = np.flatnonzero(union.any(axis=tuple(a for a in range(3) if a != axis)))
    if not hits.size:
        return slice(None)
    margin = int(round(margin_mm / spacing))
    return slice(max(hits[0] - margin, 0), min(hits[-1] + margin + 1, union.shape[axis]))


def save_picture(image: np.ndarray, affine: np.ndarray, maps: dict[str, np.ndarray], title: str, out: Path) -> Path:
    """`maps`: row name -> label map (schema numbers) on the image's grid."""
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))[np.argsort(
        nib.orientations.io_orientation(affine)[:, 0])]
    grey = _to_ras(image, affine)
    low, high = np.percentile(grey, (1, 99.5))
    ras = {name: _to_ras(np.where(np.isin(m, SHOWN), m, 0), affine) for name, m in maps.items()}
    union = np.any([ventricle_mask(m) for m in ras.values()], axis=0) if ras else np.zeros(grey.shape, bool)
    centre = np.argwhere(union).mean(axis=0).round().astype(int) if union.any() else np.array(grey.shape) // 2
    cmap, lut = _colormap()
    x, y, z = (_window(union, axis, spacing[axis]) for axis in range(3))
    views = (("axial", lambda a: a[x, y, centre[2]].T, spacing[1] / spacing[0]),
             ("coronal", lambda a: a[x, centre[1], z].T, spacing[2] / spacing[0]))
    fig, axes = plt.subplots(len(ras), len(views), figsize=(4.5 * len(views), 3.6 * len(ras)), squeeze=False)
    for row, (name, labels) in enumerate(ras.items()):
        for col, (view, cut, aspect) in enumerate(views):
            ax = axes[row][col]
            ax.imshow(cut(grey), cmap="gray", vmin=low, vmax=high, origin="lower", aspect=aspect)
            ax.imshow(lut[cut(labels)], cmap=cmap, vmin=0, vmax=len(SHOWN), origin="lower", aspect=aspect,
                      interpolation="nearest")
            ax.set_title(f"{name} — {view}", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{title} (image left = head's left; slices through the tools' common ventricle centre)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
