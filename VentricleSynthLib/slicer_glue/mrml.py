"""MRML glue, the common ground: conventions, node tags, and the scene and matrix helpers shared by
`volume_nodes` (numpy + affine <-> volume nodes), `segmentation_nodes` (label maps <-> segmentation nodes)
and `results` (worker results -> nodes).

The `slicer_glue` modules are the only VentricleSynthLib modules that talk to Slicer, and they import
`slicer`/`vtk`/`qt` inside functions only, so the package stays importable without Slicer. The MRML ones run
in full Slicer and headless with the `slicer-core` wheel (pass `scene=`; there is no `slicer.mrmlScene` there).

Conventions
- Arrays are indexed (i, j, k) like nibabel; Slicer's `arrayFromVolume` is (k, j, i): we transpose.
- Affines are 4x4 voxel (i, j, k) -> RAS mm, exactly the NIfTI/nibabel affine and Slicer's IJKToRAS.
  An LPS affine (ITK/DICOM convention) is converted with `space="LPS"`.
- Synthetic volumes carry the node attribute `VentricleSynth.Synthetic=1` and a name starting with
  "SYNTHETIC ", so a generated scan can never be mistaken for a patient scan.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SYNTHETIC_ATTRIBUTE = "VentricleSynth.Synthetic"
SYNTHETIC_PREFIX = "SYNTHETIC "
LABEL_ATTRIBUTE = "VentricleSynth.Label"  # segment tag: the FreeSurfer label number
RECORD_ATTRIBUTE = "VentricleSynth.Record"  # node attribute: sample.json / segmentation report (JSON)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


# ------------------------------------------------------------------------------------ vtk helpers
def _slicer():
    import slicer

    return slicer


def _scene(scene=None):
    if scene is not None:
        return scene
    scene = getattr(_slicer(), "mrmlScene", None)
    if scene is None:
        raise RuntimeError("no MRML scene: pass scene= (headless slicer-core has no slicer.mrmlScene)")
    return scene


def vtk_matrix(array: np.ndarray):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def numpy_matrix(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def _as_ras(affine, space: str = "RAS") -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError("affine is singular")
    space = space.upper()
    if space == "LPS":
        return LPS_TO_RAS @ affine
    if space != "RAS":
        raise ValueError(f"space must be 'RAS' or 'LPS', got {space!r}")
    return affine


def _check_representable(ras: np.ndarray) -> np.ndarray:
    columns = ras[:3, :3]
    directions = columns / np.linalg.norm(columns, axis=0)
    if not np.allclose(directions.T @ directions, np.eye(3), atol=1e-4):
        raise ValueError("affine has sheared axes, which a Slicer volume cannot represent; resample it first")
    return ras


# ------------------------------------------------------------------------------ nodes of any kind
def _ensure_display(node) -> None:
    try:
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
    except Exception:  # noqa: BLE001 - headless scenes may lack the default colour tables
        pass


def tag_synthetic(node, prefix: str = SYNTHETIC_PREFIX) -> None:
    """Mark a node as synthetic: attribute + name prefix (idempotent)."""
    node.SetAttribute(SYNTHETIC_ATTRIBUTE, "1")
    name = node.GetName() or ""
    if not name.startswith(prefix):
        node.SetName(prefix + name)


def is_synthetic(node) -> bool:
    return node is not None and node.GetAttribute(SYNTHETIC_ATTRIBUTE) == "1"


def _stem(path) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".seg.nrrd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def geometry_error_voxels(affine_a, affine_b, shape) -> float:
    """Largest distance, in voxels of grid a, between the corners of two grids of `shape`."""
    a = np.asarray(affine_a, float)
    b = np.asarray(affine_b, float)
    hi = np.asarray(shape, float) - 1
    corners = np.array([[x, y, z, 1.0] for x in (0, hi[0]) for y in (0, hi[1]) for z in (0, hi[2])])
    distance_mm = np.linalg.norm((corners @ a.T - corners @ b.T)[:, :3], axis=1).max()
    return float(distance_mm / np.linalg.norm(a[:3, :3], axis=0).min())
