"""Volume nodes: numpy array (i, j, k) + 4x4 voxel -> RAS affine <-> scalar or label-map volume nodes,
and NIfTI files written for the worker or read back from it (conventions in `slicer_glue.mrml`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from VentricleSynthLib.slicer_glue.mrml import (_as_ras, _check_representable, _ensure_display, _scene, _slicer,
                                                _stem, numpy_matrix, tag_synthetic, vtk_matrix)


def affine_from_node(volume_node) -> np.ndarray:
    """The node's IJK -> RAS matrix (its own frame; a parent transform is not applied)."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return numpy_matrix(matrix)


def set_node_affine(volume_node, affine, space: str = "RAS") -> None:
    """Set origin, spacing and (oblique, flipped) axis directions from a 4x4 voxel -> RAS affine.

    Slicer stores spacing and unit direction vectors; a sheared affine cannot be represented and is
    refused rather than silently changed."""
    ras = _check_representable(_as_ras(affine, space))
    volume_node.SetIJKToRASMatrix(vtk_matrix(ras))


def array_from_node(volume_node) -> np.ndarray:
    """Voxels as an (i, j, k) array (a copy)."""
    kji = np.asarray(_slicer().util.arrayFromVolume(volume_node))
    if kji.ndim != 3:
        raise ValueError(f"{volume_node.GetName()}: expected a single-component 3-D volume, got array shape "
                         f"{kji.shape} (vector/RGB/4-D volumes are not supported)")
    return np.ascontiguousarray(kji.transpose(2, 1, 0))


def volume_from_node(volume_node):
    """The node as a `nifti.Volume` (array (i, j, k), affine voxel -> RAS)."""
    from VentricleSynthLib.io.nifti import Volume

    if volume_node is None or volume_node.GetImageData() is None:
        raise ValueError("volume node has no image data")
    return Volume(array_from_node(volume_node), affine_from_node(volume_node))


def node_from_array(array: np.ndarray, affine, name: str = "Volume", scene=None, node=None, label_map: bool = False,
                    synthetic: bool = False, space: str = "RAS", show: bool = False):
    """A scalar (or label map) volume node holding `array` (i, j, k) with `affine` (voxel -> RAS).

    `node` is updated in place if given, else a new node is added to `scene`."""
    slicer = _slicer()
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"expected a 3-D array, got shape {array.shape}")
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    elif array.dtype.kind == "b":
        array = array.astype(np.uint8)
    elif array.dtype.kind in "iu" and array.dtype.itemsize > 4:
        array = array.astype(np.int32)  # vtk "long long" volumes do not render
    if node is None:
        class_name = "vtkMRMLLabelMapVolumeNode" if label_map else "vtkMRMLScalarVolumeNode"
        node = _scene(scene).AddNewNodeByClass(class_name, name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array.transpose(2, 1, 0)))
    set_node_affine(node, affine, space)
    if synthetic:
        tag_synthetic(node)
    _ensure_display(node)
    if show:
        show_volume(node)
    return node


def node_from_volume(volume, name: str = "Volume", scene=None, **kwargs):
    """`node_from_array` for a `nifti.Volume` (or anything with `.array` and `.affine`)."""
    return node_from_array(volume.array, volume.affine, name=name, scene=scene, **kwargs)


def show_volume(node) -> None:
    """Show as the background of the slice views (full Slicer only; a no-op headless)."""
    util = getattr(_slicer(), "util", None)
    try:
        if getattr(_slicer(), "app", None) is not None and util is not None:
            util.setSliceViewerLayers(background=node, fit=True)
    except Exception:  # noqa: BLE001 - no layout manager (headless, tests)
        pass


def write_node(volume_node, path: str | os.PathLike, label_map: bool | None = None) -> Path:
    """Write a volume node as NIfTI (atomically, via `nifti.save_volume`) for the worker.

    A parent transform is not applied: the file holds the node's own grid, and results come back on
    that grid (give result nodes the same parent transform). Label maps are written as int16."""
    from VentricleSynthLib.io.nifti import Volume, save_volume

    volume = volume_from_node(volume_node)
    if label_map is None:
        label_map = volume_node.IsA("vtkMRMLLabelMapVolumeNode")
    dtype = np.int16 if label_map else np.float32
    return save_volume(Volume(volume.array, volume.affine), path, dtype=dtype)


def load_volume_file(path: str | os.PathLike, name: str | None = None, scene=None, synthetic: bool = False,
                     show: bool = False):
    """Read a NIfTI image (`nifti.load_image`: validated, float32) into a new scalar volume node."""
    from VentricleSynthLib.io.nifti import load_image

    volume = load_image(path)
    name = name or _stem(path)
    return node_from_volume(volume, name=name, scene=scene, synthetic=synthetic, show=show)
