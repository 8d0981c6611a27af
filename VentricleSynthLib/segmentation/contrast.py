"""Bright-CSF images (T2-, PD-weighted): read by the dark-CSF network through an intensity-mirrored view.

The bundled network was trained on T1 images, where CSF is dark; it also reads FLAIR (CSF dark), but on an image
whose CSF is bright it finds almost nothing (Dice 0.003 on T2-like heads, benchmarks/contrasts.py). Mirroring the
head's intensities (1 - x inside the head, background kept dark) turns such an image into a dark-CSF one with
the T1 ordering of tissues (T2: CSF > grey > white matter becomes CSF < grey < white matter), which the network
reads. `Segmenter.segment` reads both the image and its mirrored view (a second pass on the small profile grid)
and keeps the reading whose ventricles stand out darker against the tissue just around them (`dark_csf_edge`):
a right reading finds the ventricles' edge, a wrong one finds shapes with no consistent edge. Measured on the
contrast benchmark's 30 heads (6 each of cohort T1, rendered T1, FLAIR, T2, PD) and on Colin27 and pycortex S1:
the right reading's edge was 0.51-2.50, the wrong one's 0.08-0.51, and the larger edge chose the right reading
for every head. A reading as given with an edge of at least SURE_EDGE is kept at once (one pass: every T1 and
FLAIR head there; the wrong readings as given, of T2 and PD heads, scored at most 0.24).
"""

from __future__ import annotations

import numpy as np

FOREGROUND = 0.05  # profile-grid intensities ([0, 1]) above this are head, not air
EDGE_VOXELS = 2  # the tissue just around the ventricles: this many voxels outside them

CLEAR_EDGE = 0.4  # below this the chosen reading's edge is no clearer than a wrong reading's (module notes)
READING_THRESHOLD = 0.5  # the ventricles whose edge judges a reading (any bundle's decision threshold aside)
SURE_EDGE = 0.5  # a reading as given this clear is kept without the mirrored view (wrong ones as given: <= 0.24)

MIRRORED_NOTE = ("CSF reads bright in this image (T2/PD-like): segmented on its head's intensities mirrored (the "
                 "model reads dark CSF); check the result")
UNCLEAR_NOTE = ("the segmented ventricles show no clear edge against the tissue around them, as given or mirrored "
                "(not a T1, FLAIR, T2 or PD brain MRI?); the volume is unreliable")


def dark_csf_edge(image: np.ndarray, ventricles: np.ndarray) -> float:
    """How much darker the found ventricles are than the tissue within EDGE_VOXELS around them (medians, relative
    to the head's median intensity); -inf where nothing was found."""
    from scipy import ndimage

    if not ventricles.any():
        return float("-inf")
    around = ndimage.binary_dilation(ventricles, iterations=EDGE_VOXELS) & ~ventricles
    head = image > FOREGROUND
    scale = float(np.median(image[head])) if head.any() else 1.0
    return (float(np.median(image[around])) - float(np.median(image[ventricles]))) / max(scale, 1e-6)


def mirrored(image: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """A profile-grid image ([0, 1]) with its head's intensities mirrored, background left dark, normalised to the
    profile's percentiles again (as `imaging.profile.to_profile` normalises any input)."""
    from VentricleSynthLib.imaging.geometry import brain_mask_from_image, percentile_normalise  # scipy: on use

    head = brain_mask_from_image(image)
    flipped = np.where(head, 1.0 - image, 0.0).astype(np.float32)
    return percentile_normalise(flipped, *percentiles)
