"""The data path of every model: input geometry -> profile grid (RAS, spacing, shape, [0,1]) and back.

`to_profile` returns the network-ready arrays together with the `Grid`s needed to put a result
back onto the input's own grid with `to_input_grid`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from VentricleSynthLib.imaging.geometry import Grid, brain_mask_from_image, percentile_normalise, profile_grid, resample
from VentricleSynthLib.io.nifti import Volume, check_same_grid


@dataclass(frozen=True)
class Profile:
    """Spacing (mm) and shape of the network grid, and the intensity percentiles."""

    name: str
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    percentiles: tuple[float, float] = (0.5, 99.5)

    @classmethod
    def from_dict(cls, name: str, data: dict) -> "Profile":
        spacing = data["spacing"]
        spacing = tuple(float(s) for s in (spacing if isinstance(spacing, (list, tuple)) else [spacing] * 3))
        return cls(name, spacing, tuple(int(s) for s in data["shape"]),
                   tuple(float(p) for p in data.get("percentiles", (0.5, 99.5))))


@dataclass
class Preprocessed:
    image: np.ndarray | None  # float32 in [0, 1] on `grid`
    label: np.ndarray | None  # int16 schema labels on `grid`
    grid: Grid  # the profile grid
    source: Grid  # the input's own grid


def to_profile(profile: Profile, image: Volume | None = None, label: Volume | None = None,
               brain_mask: np.ndarray | None = None) -> Preprocessed:
    """Resample image (linear) and/or label map (nearest) onto the profile grid centred on the brain.

    The brain is the label map's non-background voxels when a label map is given, else
    `brain_mask`, else the image's foreground.
    """
    if image is None and label is None:
        raise ValueError("to_profile needs an image or a label map")
    if image is not None and label is not None:
        check_same_grid(image, label)
    ref = image if image is not None else label
    if label is not None:
        mask = label.array > 0
    elif brain_mask is not None:
        mask = brain_mask
    else:
        mask = brain_mask_from_image(image.array)
    grid = profile_grid(ref, profile.spacing, profile.shape, mask=mask)
    out_image = out_label = None
    if image is not None:
        lo, hi = profile.percentiles
        resampled = resample(image.array, image.affine, grid, order=1, cval=float(image.array.min()))
        out_image = percentile_normalise(resampled, lo, hi)
    if label is not None:
        out_label = resample(label.array.astype(np.int16), label.affine, grid, order=0)
    return Preprocessed(out_image, out_label, grid, Grid.of(ref))


def to_input_grid(array: np.ndarray, grid: Grid, source: Grid, order: int = 0) -> np.ndarray:
    """Bring an array on the profile `grid` back onto the input's `source` grid (labels: order 0)."""
    return resample(array, grid.affine, source, order=order)
