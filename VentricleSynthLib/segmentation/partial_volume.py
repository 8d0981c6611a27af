"""Partial volume: how much of each voxel at the ventricles' boundary is ventricle, from the image itself.

The boundary convention: **a voxel counts as ventricle when at least half of it is ventricle.** The network
decides which voxels are ventricle; where it stops is a side effect of its training labels and of resampling,
so the rim is decided again here. Around the network's boundary (`RIM_VOXELS` voxels in and out) each voxel's
ventricle fraction is read from its intensity, a linear mix of pure ventricle CSF and the tissue around it:

    fraction = (intensity - tissue) / (csf - tissue), clipped to [0, 1]

with `csf` read from the nearest voxel of the ventricles' core (a Gaussian-weighted mean, `CSF_SIGMA_MM`) and
`tissue` from the nearest voxel of a thin shell just outside (`SHELL_VOXELS`, averaged over `TISSUE_SIGMA_MM`):
each rim voxel is compared with the tissue it borders (white matter, caudate, thalamus differ), a bias field
is followed, and any contrast (CSF dark on T1, bright on T2) is handled alike. Voxels deeper inside are whole
ventricle, voxels further out none.

Two volumes follow: the voxel count under the convention (rim voxels with fraction >= 0.5 are kept, the rest
dropped), and the partial-volume (soft) volume, the sum of the fractions, which estimates the true volume
without the half-voxel rounding. Where the image gives no usable contrast between CSF and tissue, the
network's boundary is kept and no soft volume is given (`None`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel.orientations import apply_orientation, io_orientation
from scipy import ndimage

from VentricleSynthLib.imaging.geometry import Grid, canonical_grid
from VentricleSynthLib.volumes import voxel_volume_ml

# what `segment` reports as its boundary rule, by the bundle's decision.boundary
BOUNDARIES = {
    "half": "a voxel counts when at least half of it is ventricle (its fraction read from the image at the "
            "network's boundary); soft volumes sum the fractions",
    "network": "a voxel counts when the network labels it (its boundary follows its training labels); soft "
               "volumes sum each boundary voxel's ventricle fraction read from the image",
}
# The rim and the tissue shell, measured on the T1 phantoms (benchmarks/phantom.py, 15 mL, bundled model): the
# network's boundary can sit two voxels inside the true one, and a shell that still holds missed ventricle reads
# CSF as tissue. Rim 1, shell (2, 3): soft volume -5.1 %; rim 2, shell (2, 3): -4.6 %; rim 2, shell (3, 4): -2.2 %;
# rim 3, shell (4, 5): +2.4 % (the wider rim starts counting noise in the tissue as ventricle).
RIM_VOXELS = 2  # the rim re-decided around the network's boundary, in voxels each way
SHELL_VOXELS = (3, 4)  # the tissue reference: voxels this far outside the network's boundary (beyond the rim)
TISSUE_SIGMA_MM = 1.5  # noise averaging of the tissue reference (each rim voxel reads the tissue nearest it)
CSF_SIGMA_MM = 6.0  # reach of the local CSF estimate (a bias field varies slower)
MIN_CONTRAST = 4.0  # |csf - tissue| must exceed this many noise standard deviations
MIN_LOCAL_CONTRAST = 0.5  # a rim voxel's own |csf - tissue|, relative to the typical one, to be read at all
MIN_CORE_VOXELS = 20


@dataclass
class PartialVolume:
    """The rim's ventricle fractions and what follows from them (see the module notes)."""

    fraction: np.ndarray | None  # float32 on `box` of the input: 1 in the core, 0 beyond the rim; None: no contrast
    contrast: float  # |csf - tissue| in noise standard deviations
    note: str = ""
    box: tuple[slice, ...] = ()  # the part of the input grid holding every ventricle voxel and the rim

    @property
    def usable(self) -> bool:
        return self.fraction is not None


def _spacing(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))


def _local_mean(image: np.ndarray, weight: np.ndarray, sigma_vox: np.ndarray) -> np.ndarray:
    """Gaussian-weighted mean of `image` over `weight` (normalised convolution); NaN where no weight reaches."""
    w = ndimage.gaussian_filter(weight.astype(np.float32), sigma_vox, mode="constant")
    v = ndimage.gaussian_filter((image * weight).astype(np.float32), sigma_vox, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(w > 1e-9, v / w, np.nan)


def _nearest(values: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Every voxel gets `values` at its nearest voxel of `where`."""
    index = ndimage.distance_transform_edt(~where, return_distances=False, return_indices=True)
    return values[tuple(index)]


def estimate(image: np.ndarray, ventricles: np.ndarray, affine: np.ndarray) -> PartialVolume:
    """Ventricle fractions on `image`'s grid around the boolean `ventricles` mask (the network's decision)."""
    image = np.asarray(image, dtype=np.float32)
    ventricles = np.asarray(ventricles, dtype=bool)
    if not ventricles.any():
        return PartialVolume(None, 0.0, "no ventricles")
    spacing = _spacing(affine)
    # work in the ventricles' box (plus the shell and the estimates' reach): whole heads are large
    idx = np.argwhere(ventricles)
    pad = SHELL_VOXELS[1] + np.ceil(3 * CSF_SIGMA_MM / spacing).astype(int) + 2
    lo, hi = np.maximum(idx.min(0) - pad, 0), np.minimum(idx.max(0) + pad + 1, ventricles.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    img, mask = image[box], ventricles[box]

    rim = RIM_VOXELS
    inner = ndimage.binary_erosion(mask, iterations=rim, border_value=1)
    outer = ndimage.binary_dilation(mask, iterations=rim)
    core = ndimage.binary_erosion(mask, iterations=rim + 1, border_value=1)
    if core.sum() < MIN_CORE_VOXELS:
        core = inner if inner.sum() >= MIN_CORE_VOXELS else mask
    shell = (ndimage.binary_dilation(mask, iterations=SHELL_VOXELS[1])
             & ~ndimage.binary_dilation(mask, iterations=SHELL_VOXELS[0] - 1) & (img > 0))  # not air outside heads
    if shell.sum() < MIN_CORE_VOXELS:
        return PartialVolume(None, 0.0, "no tissue around the ventricles")
    # each voxel's references: the (smoothed) CSF of the nearest core voxel and tissue of the nearest shell voxel
    csf = _nearest(_local_mean(img, core, CSF_SIGMA_MM / spacing), core)
    tissue = _nearest(_local_mean(img, shell, TISSUE_SIGMA_MM / spacing), shell)
    residual = (img - csf)[core]  # the noise about the local CSF level (a bias field is not noise)
    noise = float(np.median(np.abs(residual - np.median(residual))) * 1.4826) or 1e-6
    local = np.abs(tissue - csf)
    typical = float(np.median(local[mask]))
    contrast = typical / noise
    if not contrast >= MIN_CONTRAST:
        return PartialVolume(None, contrast, f"CSF/tissue contrast {contrast:.1f} noise SDs is too low")
    band = outer & ~inner
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.clip((img - tissue) / (csf - tissue), 0.0, 1.0)
    # where the ventricles border other CSF (cisterns, fissures) there is no edge to read: keep the decision
    readable = np.isfinite(f) & (local >= MIN_LOCAL_CONTRAST * typical)
    f = np.where(readable, f, mask.astype(np.float32))
    return PartialVolume(np.where(band, f, inner.astype(np.float32)).astype(np.float32), contrast, box=box)


def _nearest_label(label: np.ndarray) -> np.ndarray:
    """Each voxel's nearest labelled voxel's label."""
    return _nearest(label, label > 0)


def half_rule(label: np.ndarray, pv: PartialVolume) -> np.ndarray:
    """The label map under the convention: rim voxels at least half ventricle are ventricle (named after the
    nearest labelled voxel), the others background. Unchanged without a usable estimate."""
    if not pv.usable or not (label[pv.box] > 0).any():
        return label
    out = label.copy()
    out[pv.box] = np.where(pv.fraction >= 0.5, _nearest_label(label[pv.box]), 0)
    return out


def soft_volumes_ml(label: np.ndarray, pv: PartialVolume, affine: np.ndarray,
                    labels: tuple[int, ...]) -> tuple[float | None, dict[int, float] | None]:
    """(total, per label) partial-volume ventricle volume in mL: each voxel's fraction, credited to the nearest
    labelled voxel's label. (None, None) without a usable estimate."""
    if not pv.usable:
        return None, None
    if not (label[pv.box] > 0).any():
        return 0.0, {lab: 0.0 for lab in labels}
    voxel = voxel_volume_ml(affine)
    named = _nearest_label(label[pv.box])
    per = {lab: float(pv.fraction[named == lab].sum()) * voxel for lab in labels}
    return float(pv.fraction.sum()) * voxel, per


def apply(image: np.ndarray, label: np.ndarray, affine: np.ndarray, labels: tuple[int, ...], half: bool = True
          ) -> tuple[np.ndarray, PartialVolume, float | None, dict[int, float] | None]:
    """The network's `label` map re-decided at its rim by the convention (`half_rule`; `half=False` keeps the
    network's boundary), the estimate, and the soft volumes (`soft_volumes_ml`). Computed on the RAS-canonical
    storage of the grid (axes permuted and flipped, no interpolation), so that ties (equidistant labels) fall the
    same way however the input is stored."""
    canonical, back = canonical_grid(Grid(tuple(label.shape), np.asarray(affine, float)))
    if back is not None:
        forward = io_orientation(affine)
        image, label = apply_orientation(image, forward), apply_orientation(label, forward)
    pv = estimate(image, label > 0, canonical.affine)
    if half:
        label = half_rule(label, pv)
    soft, per_label = soft_volumes_ml(label, pv, canonical.affine, labels)
    if back is not None:
        label = np.ascontiguousarray(apply_orientation(label, back))
    return label, pv, soft, per_label
