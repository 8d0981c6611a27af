"""NIfTI reading and writing with validation (written atomically); the `Volume` value type.

A `Volume` is a 3-D numpy array plus its 4x4 voxel->RAS(mm) affine (and, when read from a file, that file's
header). Readers refuse anything that is not a finite, non-constant, single 3-D volume with a typed
`InvalidImageError`.

Orientation: a NIfTI header holds two voxel->world transforms, the qform and the sform, each with a code
(0 = absent). nibabel (`Volume.affine` from `load_image`) takes the sform whenever its code is > 0; ITK
(SimpleITK, Slicer, ITK-SNAP; measured with ITK 5.4) takes the sform only when its code is 1 (scanner), else
the qform when its code is > 0. When the two disagree, `viewer_affine` is the transform ITK shows, and
`orientation_warnings` says so; with both codes 0 the orientation is a guess (both readers agree on left/right:
the first axis runs towards the left).
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from VentricleSynthLib.affines import spacing_of
from VentricleSynthLib.errors import GeometryMismatchError, InvalidImageError
from VentricleSynthLib.io.atomic import atomic_write
from VentricleSynthLib.labels import has_integer_values, validate_label_map

NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass
class Volume:
    array: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header | None = field(default=None, repr=False, compare=False)  # of the file read

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        return spacing_of(self.affine)

    @property
    def axcodes(self) -> str:
        return "".join(nib.aff2axcodes(self.affine))


def is_nifti_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _read(path: Path) -> nib.Nifti1Image:
    if not path.exists():
        raise InvalidImageError(f"{path}: no such file")
    if path.is_dir():
        raise InvalidImageError(f"{path}: is a folder, expected a NIfTI file (.nii or .nii.gz)")
    if not is_nifti_path(path):
        raise InvalidImageError(f"{path}: not a NIfTI file name (expected .nii or .nii.gz)")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except PermissionError:
        raise InvalidImageError(f"{path}: permission denied: the file cannot be read by this user") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise InvalidImageError(f"{path}: truncated or corrupt gzip data ({exc.__class__.__name__})") from None
    except (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError) as exc:
        raise InvalidImageError(f"{path}: not a readable NIfTI image ({exc})") from None
    except (OSError, ValueError) as exc:
        raise InvalidImageError(f"{path}: cannot read image data ({exc})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InvalidImageError(f"{path}: not a NIfTI image ({type(img).__name__})")
    return img, data


def _as_3d(path: Path, data: np.ndarray) -> np.ndarray:
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    elif data.ndim == 5 and data.shape[3] == 1 and data.shape[4] == 1:
        data = data[..., 0, 0]
    if data.ndim == 2 or (data.ndim == 3 and min(data.shape) == 1):
        raise InvalidImageError(f"{path}: image is 2-D (shape {data.shape}); a 3-D volume is needed")
    if data.ndim != 3:
        raise InvalidImageError(
            f"{path}: image has shape {data.shape}; expected a single 3-D volume, not a {data.ndim}-D series"
        )
    return data


def _affine(path: Path, img: nib.Nifti1Image) -> np.ndarray:
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InvalidImageError(f"{path}: invalid voxel-to-world matrix (singular or not finite)")
    return affine


def load_image(path: str | os.PathLike) -> Volume:
    """Read an intensity image as float32. Refuses NaN/Inf, empty and constant images."""
    path = Path(path)
    img, data = _read(path)
    data = _as_3d(path, data)
    if data.dtype.kind not in "biuf":
        raise InvalidImageError(f"{path}: unsupported voxel type {data.dtype}")
    arr = np.asarray(data, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise InvalidImageError(f"{path}: image contains NaN or Inf values")
    if arr.max() == arr.min():
        raise InvalidImageError(f"{path}: image is constant (every voxel is {float(arr.min()):g}): nothing to measure")
    return Volume(arr, _affine(path, img), img.header)


def load_label_map(path: str | os.PathLike, mapping=None, allow_empty: bool = False) -> Volume:
    """Read a label map as int16 in the schema (after `mapping`, if given). Refuses unknown labels, and an
    all-background map unless `allow_empty` (a prediction may rightly find nothing)."""
    path = Path(path)
    img, data = _read(path)
    data = _as_3d(path, data)
    arr = np.asarray(data)
    if not np.all(np.isfinite(arr)):
        raise InvalidImageError(f"{path}: label map contains NaN or Inf values")
    if not has_integer_values(arr):
        raise InvalidImageError(f"{path}: label map has non-integer values")
    if mapping is not None:
        arr = mapping.apply(arr)
    else:
        validate_label_map(arr, what=str(path))
    arr = arr.astype(np.int16)
    if not allow_empty and not np.any(arr):
        raise InvalidImageError(f"{path}: label map is empty (all background)")
    return Volume(arr, _affine(path, img))


def check_same_grid(a: Volume, b: Volume, what: str = "image and label map", atol: float = 1e-3) -> None:
    """Raise `GeometryMismatchError` unless both volumes share shape and affine (within `atol` mm)."""
    if a.shape != b.shape:
        raise GeometryMismatchError(f"{what} differ in shape: {a.shape} vs {b.shape}")
    if not np.allclose(a.affine, b.affine, atol=atol):
        diff = float(np.abs(a.affine - b.affine).max())
        raise GeometryMismatchError(f"{what} differ in geometry (affines differ by up to {diff:.3g} mm)")


def viewer_affine(volume: Volume) -> np.ndarray:
    """The voxel->RAS affine ITK-based viewers show for `volume`'s file (see the module docstring)."""
    header = volume.header
    if header is None:
        return volume.affine
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    if qcode > 0 and scode != 1:
        return np.asarray(header.get_qform(), dtype=np.float64)
    return volume.affine


def orientation_warnings(volume: Volume, atol: float = 1e-3) -> list[str]:
    """Warnings about `volume`'s header orientation: none stored, or a qform and an sform that disagree."""
    header = volume.header
    if header is None:
        return []
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    if qcode == 0 and scode == 0:
        axes = "".join(nib.aff2axcodes(volume.affine))
        message = (f"the image stores no orientation (qform_code = sform_code = 0): its axes were taken as {axes}, "
                   f"so left/right labels rest on a guess")
        return [message]
    if qcode > 0 and scode > 0:
        qform, sform = header.get_qform(), header.get_sform()
        if not np.allclose(qform, sform, atol=atol):
            used = "qform" if np.allclose(viewer_affine(volume), qform) else "sform"
            message = (f"the image's qform ({''.join(nib.aff2axcodes(qform))}) and sform "
                       f"({''.join(nib.aff2axcodes(sform))}) disagree by up to "
                       f"{float(np.abs(qform - sform).max()):.3g} mm; the {used} was used, as ITK-based viewers "
                       f"(Slicer, ITK-SNAP) do, and the output keeps both so it overlays the input exactly")
            return [message]
    return []


def _copy_geometry(img: nib.Nifti1Image, source: nib.Nifti1Header) -> None:
    """Give `img` the qform, sform, their codes, voxel sizes and units of `source` (a header of the same grid)."""
    if tuple(source.get_data_shape()[:3]) != tuple(img.shape[:3]):
        raise ValueError(f"header of shape {source.get_data_shape()} does not describe an array of {img.shape}")
    header = img.header
    for key in ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y",
                "qoffset_z", "srow_x", "srow_y", "srow_z", "xyzt_units"):
        header[key] = source[key]
    header["pixdim"][:4] = source["pixdim"][:4]


def save_volume(volume: Volume, path: str | os.PathLike, dtype=None,
                geometry_of: nib.Nifti1Header | None = None) -> Path:
    """Write a NIfTI atomically. Label maps (integer arrays) are stored as int16 with qform=sform, or with the
    header geometry of `geometry_of` (the input's header: the output then overlays the input in any viewer)."""
    arr = np.asarray(volume.array)
    if dtype is not None:
        arr = arr.astype(dtype)
    elif arr.dtype.kind in "biu":
        arr = arr.astype(np.int16)
    elif arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    img = nib.Nifti1Image(arr, volume.affine)
    img.set_qform(volume.affine, code=1)
    img.set_sform(volume.affine, code=1)
    img.header.set_xyzt_units("mm")
    if geometry_of is not None:
        _copy_geometry(img, geometry_of)
        img = nib.Nifti1Image(arr, None, header=img.header)  # no affine: nibabel would rewrite the copied forms
    return atomic_write(path, lambda tmp: nib.save(img, tmp))
