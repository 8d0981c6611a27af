"""Which images the segmenter measures: refusals (CT, label maps, thick slices, slabs) and warnings about
doubtful inputs and results."""

from __future__ import annotations

import numpy as np

from VentricleSynthLib.errors import InvalidImageError
from VentricleSynthLib.io.nifti import Volume
from VentricleSynthLib.labels import has_integer_values

THICK_SLICE_MM = 5.0  # at or above: refused unless allow_thick_slices (then a warning)

WARN_SLICE_MM = 3.0  # at or above: a warning

MIN_FOV_MM = 80.0  # every axis must cover at least this much (a whole brain is ~140-170 mm)

MAX_PLAUSIBLE_ML = 400.0



class UnsuitableImageError(InvalidImageError):
    """A readable image that the segmenter cannot measure reliably (CT, a label map, thick slices, a slab)."""


def check_input(volume: Volume, allow_thick_slices: bool = False) -> list[str]:
    """Refuse images the segmenter cannot measure; return warnings for doubtful ones."""
    warnings: list[str] = []
    arr = volume.array
    sample = arr[:: max(1, arr.shape[0] // 96), :: max(1, arr.shape[1] // 96), :: max(1, arr.shape[2] // 96)]
    low = float(np.percentile(sample, 1))
    if float(arr.min()) <= -500 and (low <= -500 or float(np.mean(sample <= -500)) >= 0.02):
        raise UnsuitableImageError(
            f"intensities look like CT Hounsfield units (minimum {float(arr.min()):.0f}, 1st percentile {low:.0f}); "
            f"the segmenter measures MRI")
    if has_integer_values(sample):
        values = np.unique(sample)
        if values.size <= 40:
            raise UnsuitableImageError(
                f"image holds only {values.size} distinct integer values ({', '.join(str(int(v)) for v in values[:8])}"
                f"{' ...' if values.size > 8 else ''}): it looks like a label map or mask, not an MRI")
    spacing = volume.spacing
    thickest = float(spacing.max())
    if thickest >= THICK_SLICE_MM:
        message = (f"voxels are {thickest:.1f} mm thick along axis {int(spacing.argmax())} "
                   f"(spacing {' x '.join(f'{s:.2f}' for s in spacing)} mm); ventricle volumes need slices "
                   f"thinner than {THICK_SLICE_MM:g} mm")
        if not allow_thick_slices:
            raise UnsuitableImageError(message + " (allow_thick_slices / --allow-thick-slices to segment anyway)")
        warnings.append(message + ": segmented anyway on request; the volume is unreliable")
    elif thickest >= WARN_SLICE_MM:
        warnings.append(f"voxels are {thickest:.1f} mm thick along axis {int(spacing.argmax())}: "
                        f"partial-volume effects make the ventricle volume less accurate")
    extent = np.asarray(volume.shape) * spacing
    if extent.min() < MIN_FOV_MM:
        raise UnsuitableImageError(
            f"the image covers only {extent.min():.0f} mm along axis {int(extent.argmin())} "
            f"(field of view {' x '.join(f'{e:.0f}' for e in extent)} mm); a whole-brain image is needed")
    return warnings


def output_checks(label_profile: np.ndarray, total_ml: float) -> list[str]:
    """Warnings about a result on the profile grid (how clearly the image shows the ventricles: `contrast`)."""
    warnings = []
    vent = label_profile > 0
    if not vent.any():
        warnings.append("no ventricles found: is this a brain MRI?")
        return warnings
    border = np.zeros_like(vent)
    border[[0, -1], :, :] = border[:, [0, -1], :] = border[:, :, [0, -1]] = True
    if (vent & border).any():
        warnings.append("ventricle voxels touch the edge of the analysed field of view; part of the ventricles "
                        "may be cut off")
    if total_ml > MAX_PLAUSIBLE_ML:
        warnings.append(f"ventricle volume {total_ml:.0f} mL is implausibly large; check the input")
    return warnings
