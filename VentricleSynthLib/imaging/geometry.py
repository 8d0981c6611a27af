"""Voxel grids and resampling between them, in world (RAS mm) coordinates.

One general operation does all geometric work: `resample(array, source_affine, target_grid)`
pulls values through world space, so LPS, oblique and anisotropic inputs need no special cases,
and the way back (profile grid -> the input's own grid) is the same call with the grids swapped.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from VentricleSynthLib.affines import spacing_of
from VentricleSynthLib.io.nifti import Volume
from VentricleSynthLib.morphology import connected_components, largest_piece


@dataclass(frozen=True)
class Grid:
    """A voxel grid: shape and 4x4 voxel->world affine."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @classmethod
    def of(cls, volume: Volume) -> "Grid":
        return cls(volume.shape, volume.affine)

    @property
    def spacing(self) -> np.ndarray:
        return spacing_of(self.affine)

    def centre_world(self) -> np.ndarray:
        centre_ijk = (np.asarray(self.shape, dtype=float) - 1) / 2
        return self.affine[:3, :3] @ centre_ijk + self.affine[:3, 3]


def ras_grid(spacing, shape, centre_world) -> Grid:
    """An axis-aligned RAS grid of `shape` voxels of `spacing` mm whose centre sits at `centre_world`."""
    spacing = np.broadcast_to(np.asarray(spacing, dtype=float), (3,))
    shape = tuple(int(s) for s in shape)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = np.asarray(centre_world, dtype=float) - spacing * (np.asarray(shape) - 1) / 2
    return Grid(shape, affine)


def resample(array: np.ndarray, source_affine: np.ndarray, target: Grid, order: int = 1,
             cval: float = 0.0, displacement: np.ndarray | None = None) -> np.ndarray:
    """Sample `array` (on `source_affine`) at every voxel of `target`.

    order 0 = nearest (label maps), 1 = linear (images). `displacement`, if given, is a world-space
    field of shape (3, *target.shape) in mm added to each target voxel's position before sampling
    (a pull-back warp).
    """
    if displacement is None and np.allclose(source_affine, target.affine) and array.shape == target.shape:
        return array.copy()
    world_to_src = np.linalg.inv(source_affine) @ target.affine
    if displacement is None:
        if order == 0:
            # Integer labels: affine_transform with nearest keeps the dtype semantics.
            return ndimage.affine_transform(array, world_to_src[:3, :3], world_to_src[:3, 3],
                                            output_shape=target.shape, order=0, mode="constant",
                                            cval=cval, output=array.dtype if array.dtype.kind in "iu" else None)
        return ndimage.affine_transform(array.astype(np.float32, copy=False), world_to_src[:3, :3],
                                        world_to_src[:3, 3], output_shape=target.shape, order=order,
                                        mode="constant", cval=cval)
    ijk = np.indices(target.shape, dtype=np.float32).reshape(3, -1)
    world = target.affine[:3, :3].astype(np.float32) @ ijk + target.affine[:3, 3:4].astype(np.float32)
    world += displacement.reshape(3, -1).astype(np.float32)
    src_inv = np.linalg.inv(source_affine).astype(np.float32)
    src_ijk = src_inv[:3, :3] @ world + src_inv[:3, 3:4]
    data = array if order == 0 else array.astype(np.float32, copy=False)
    out = ndimage.map_coordinates(data, src_ijk, order=order, mode="constant", cval=cval)
    return out.reshape(target.shape)


def resample_volume(volume: Volume, target: Grid, order: int = 1, cval: float = 0.0) -> Volume:
    return Volume(resample(volume.array, volume.affine, target, order=order, cval=cval), target.affine.copy())


def to_canonical(volume: Volume) -> Volume:
    """Reorder/flip axes to the closest RAS orientation (no interpolation)."""
    img = nib.as_closest_canonical(nib.Nifti1Image(volume.array, volume.affine))
    return Volume(np.asarray(img.dataobj), np.asarray(img.affine, dtype=np.float64))


def canonical_grid(grid: Grid) -> tuple[Grid, np.ndarray | None]:
    """`grid` with its axes permuted and flipped to the closest RAS storage (as `to_canonical`), and the
    nibabel orientation that brings an array on the canonical grid back to `grid`'s storage (None: already RAS)."""
    ornt = nib.orientations.io_orientation(grid.affine)
    if np.array_equal(ornt, nib.orientations.axcodes2ornt("RAS")):
        return grid, None
    affine = grid.affine @ nib.orientations.inv_ornt_aff(ornt, grid.shape)
    shape = tuple(int(grid.shape[int(i)]) for i in np.argsort(ornt[:, 0]))
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), ornt)
    return Grid(shape, affine), back


def world_bbox(mask: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-space (min, max) corners of the voxels where `mask` is true."""
    idx = np.argwhere(mask)
    if idx.size == 0:
        raise ValueError("empty mask has no bounding box")
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])], float)
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    return world.min(axis=0), world.max(axis=0)


def brain_mask_from_image(image: np.ndarray) -> np.ndarray:
    """A rough foreground mask: above 10 % of the robust maximum, largest component, holes filled."""
    hi = np.percentile(image, 99.5)
    lo = np.percentile(image, 0.5)
    fg = image > lo + 0.1 * (hi - lo)
    fg = ndimage.binary_opening(fg, iterations=1)
    pieces, n = connected_components(fg)
    if n == 0:
        return image > lo
    return ndimage.binary_fill_holes(largest_piece(pieces, n))


def profile_grid(volume: Volume, spacing, shape, mask: np.ndarray | None = None) -> Grid:
    """The profile's RAS grid centred on the bounding box of `mask` (else of the image's foreground)."""
    if mask is None:
        mask = brain_mask_from_image(volume.array)
    lo, hi = world_bbox(mask, volume.affine)
    return ras_grid(spacing, shape, (lo + hi) / 2)


def percentile_normalise(image: np.ndarray, lower: float = 0.5, upper: float = 99.5,
                         mask: np.ndarray | None = None) -> np.ndarray:
    """Linearly map the [lower, upper] percentiles (of `mask` voxels, else all) to [0, 1] and clip."""
    values = image[mask] if mask is not None and mask.any() else image
    lo, hi = np.percentile(values, [lower, upper])
    if hi <= lo:
        hi = lo + 1e-6
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
