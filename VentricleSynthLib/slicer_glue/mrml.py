"""MRML glue: numpy + affine <-> volume nodes, label maps <-> segmentation nodes, worker results -> nodes.

The only VentricleSynthLib module that talks to Slicer, and it imports `slicer`/`vtk` inside functions
only, so the package stays importable without Slicer. It runs in full Slicer and headless with the
`slicer-core` wheel (pass `scene=`; there is no `slicer.mrmlScene` there).

Conventions
- Arrays are indexed (i, j, k) like nibabel; Slicer's `arrayFromVolume` is (k, j, i): we transpose.
- Affines are 4x4 voxel (i, j, k) -> RAS mm, exactly the NIfTI/nibabel affine and Slicer's IJKToRAS.
  An LPS affine (ITK/DICOM convention) is converted with `space="LPS"`.
- Synthetic volumes carry the node attribute `VentricleSynth.Synthetic=1` and a name starting with
  "SYNTHETIC ", so a generated scan can never be mistaken for a patient scan.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from VentricleSynthLib.labels import LABELS, SCHEMA, VENTRICLE_LABELS

SYNTHETIC_ATTRIBUTE = "VentricleSynth.Synthetic"
SYNTHETIC_PREFIX = "SYNTHETIC "
LABEL_ATTRIBUTE = "VentricleSynth.Label"  # segment tag: the FreeSurfer label number
RECORD_ATTRIBUTE = "VentricleSynth.Record"  # node attribute: sample.json / segmentation report (JSON)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

_SLICER_ANATOMY = "Segmentation category and type - 3D Slicer General Anatomy list"
_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
_STRUCTURE = "SCT^123037004^Anatomical Structure"
_LEFT, _RIGHT = "SCT^7771000^Left", "SCT^24028007^Right"
_LATERAL_VENTRICLE = "SCT^66720007^Lateral ventricle"
# Codes from Slicer's General Anatomy terminology. The inferior (temporal) horn is part of the lateral
# ventricle; the third ventricle has no entry there, so it is coded as a brain ventricle.
_TERMINOLOGY_TYPES = {
    4: (_LATERAL_VENTRICLE, _LEFT), 43: (_LATERAL_VENTRICLE, _RIGHT),
    5: (_LATERAL_VENTRICLE, _LEFT), 44: (_LATERAL_VENTRICLE, _RIGHT),
    14: ("SCT^35764002^Brain ventricle", "^^"), 15: ("SCT^35918002^Fourth ventricle", "^^"),
}


def terminology_entry(label: int) -> str | None:
    """Slicer terminology string for a ventricle label (None for other labels)."""
    if int(label) not in _TERMINOLOGY_TYPES:
        return None
    type_code, modifier = _TERMINOLOGY_TYPES[int(label)]
    return f"{_SLICER_ANATOMY}~{_STRUCTURE}~{type_code}~{modifier}~{_ANATOMIC_CONTEXT}~^^~^^"


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


# ------------------------------------------------------------------------------------ volume nodes
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


def _ensure_display(node) -> None:
    try:
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
    except Exception:  # noqa: BLE001 - headless scenes may lack the default colour tables
        pass


def show_volume(node) -> None:
    """Show as the background of the slice views (full Slicer only; a no-op headless)."""
    util = getattr(_slicer(), "util", None)
    try:
        if getattr(_slicer(), "app", None) is not None and util is not None:
            util.setSliceViewerLayers(background=node, fit=True)
    except Exception:  # noqa: BLE001 - no layout manager (headless, tests)
        pass


def tag_synthetic(node, prefix: str = SYNTHETIC_PREFIX) -> None:
    """Mark a node as synthetic: attribute + name prefix (idempotent)."""
    node.SetAttribute(SYNTHETIC_ATTRIBUTE, "1")
    name = node.GetName() or ""
    if not name.startswith(prefix):
        node.SetName(prefix + name)


def is_synthetic(node) -> bool:
    return node is not None and node.GetAttribute(SYNTHETIC_ATTRIBUTE) == "1"


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


def _stem(path) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".seg.nrrd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# ------------------------------------------------------------------------------- segmentations
def ensure_segmentation_converters() -> None:
    """Register the labelmap <-> closed surface rules (Slicer does this at startup; slicer-core does not)."""
    slicer = _slicer()
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    try:
        have = {rule.GetClassName() for rule in factory.GetConverterRules()}
    except TypeError:  # not enumerable in this wrapping: inside the application the rules are registered
        if getattr(slicer, "app", None) is not None:
            return
        have = set()
    for cls in ("vtkBinaryLabelmapToClosedSurfaceConversionRule", "vtkClosedSurfaceToBinaryLabelmapConversionRule"):
        if cls not in have and hasattr(slicer, cls):
            factory.RegisterConverterRule(getattr(slicer, cls)())


def _label_selection(labels) -> tuple[int, ...]:
    if labels is None or labels == "ventricles":
        return VENTRICLE_LABELS
    if labels == "all":
        return tuple(v for v in LABELS if v != 0)
    chosen = tuple(int(v) for v in labels)
    unknown = [v for v in chosen if v not in SCHEMA or v == 0]
    if unknown:
        raise ValueError(f"labels outside the schema (or background): {unknown}")
    return chosen


def _oriented_image(array: np.ndarray, affine: np.ndarray):
    """vtkOrientedImageData holding `array` (i, j, k) with the given voxel -> RAS affine."""
    import vtk
    from vtk.util import numpy_support

    slicer = _slicer()
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(*array.shape)
    image.SetSpacing(1.0, 1.0, 1.0)
    image.SetOrigin(0.0, 0.0, 0.0)
    flat = np.ascontiguousarray(array.transpose(2, 1, 0)).ravel()  # x fastest, as VTK stores voxels
    scalars = numpy_support.numpy_to_vtk(flat, deep=True, array_type=vtk.VTK_SHORT)
    image.GetPointData().SetScalars(scalars)
    image.SetImageToWorldMatrix(vtk_matrix(affine))
    return image


def segmentation_from_label_map(label_map, affine=None, name: str = "Ventricles", scene=None, labels="ventricles",
                                reference_volume_node=None, closed_surface: bool = True, node=None,
                                synthetic: bool = False, space: str = "RAS", show: bool = True):
    """A segmentation node from a label map in FreeSurfer numbers (array (i, j, k) + affine, or a `Volume`).

    One segment per selected label ("ventricles" (default), "all", or an iterable of label numbers),
    named and coloured from `labels.SCHEMA`, with Slicer terminology for ventricles, the FreeSurfer
    number in the segment tag `VentricleSynth.Label`, sharing one labelmap layer. Labels absent from the
    map give empty segments (a volume of 0 mL is a result too). Reference geometry: `reference_volume_node`
    if given (must share the map's grid for exact voxels), else the label map's own grid.
    """
    slicer = _slicer()
    if affine is None:
        label_map, affine = label_map.array, label_map.affine
    affine = _check_representable(_as_ras(affine, space))
    array = np.asarray(label_map)
    if array.ndim != 3:
        raise ValueError(f"expected a 3-D label map, got shape {array.shape}")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise ValueError("label map has non-integer values")
    chosen = _label_selection(labels)
    keep = np.where(np.isin(array, chosen), array, 0).astype(np.int16)
    ensure_segmentation_converters()
    if node is None:
        node = _scene(scene).AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    segmentation = node.GetSegmentation()
    binary_name = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    if segmentation.GetSourceRepresentationName() != binary_name:
        segmentation.SetSourceRepresentationName(binary_name)
    image = _oriented_image(keep, affine)
    was_modifying = node.StartModify()
    try:
        for lab in chosen:
            segment_name, colour = SCHEMA[lab]
            segment_id = segment_name
            if segmentation.GetSegment(segment_id) is not None:
                segmentation.RemoveSegment(segment_id)
            segment = slicer.vtkSegment()
            segment.SetName(segment_name)
            segment.SetColor(*(c / 255.0 for c in colour))
            segment.SetLabelValue(int(lab))
            segment.SetTag(LABEL_ATTRIBUTE, str(int(lab)))
            entry = terminology_entry(lab)
            if entry:
                segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), entry)
            segment.AddRepresentation(binary_name, image)  # one shared layer for all segments
            segmentation.AddSegment(segment, segment_id)
        if reference_volume_node is not None:
            node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
        else:
            geometry = slicer.vtkSegmentationConverter.SerializeImageGeometry(image)
            segmentation.SetConversionParameter(
                slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(), geometry)
    finally:
        node.EndModify(was_modifying)
    if synthetic:
        tag_synthetic(node)
    _ensure_display(node)
    if closed_surface:
        node.CreateClosedSurfaceRepresentation()
    if show:
        display = node.GetDisplayNode()
        if display is not None:
            display.SetVisibility(True)
            display.SetVisibility3D(True)
    return node


def load_segmentation_file(path: str | os.PathLike, name: str | None = None, scene=None, labels="ventricles",
                           reference_volume_node=None, **kwargs):
    """A label-map NIfTI (`nifti.load_label_map`: schema-checked) into a segmentation node."""
    from VentricleSynthLib.io.nifti import load_label_map

    volume = load_label_map(path)
    return segmentation_from_label_map(volume.array, volume.affine, name=name or _stem(path), scene=scene,
                                       labels=labels, reference_volume_node=reference_volume_node, **kwargs)


def _segment_label_map(node, segment_id: str):
    """(array (k, j, i) of the segment's layer, label value, image-to-world 4x4) for one segment."""
    slicer = _slicer()
    from vtk.util import numpy_support

    segment = node.GetSegmentation().GetSegment(segment_id)
    binary_name = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    if not node.GetSegmentation().ContainsRepresentation(binary_name):
        node.GetSegmentation().CreateRepresentation(binary_name)
    image = segment.GetRepresentation(binary_name)
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        return np.zeros((0, 0, 0), np.int16), segment.GetLabelValue(), np.eye(4)
    dims = image.GetDimensions()
    extent = image.GetExtent()
    if extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4]:
        return np.zeros((0, 0, 0), np.int16), segment.GetLabelValue(), np.eye(4)
    array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(tuple(reversed(dims)))
    import vtk

    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    return array, segment.GetLabelValue(), numpy_matrix(matrix)


def segment_volumes_ml(node) -> dict[str, float]:
    """Volume of every segment in mL (segment name -> mL), read back from the binary labelmaps."""
    out = {}
    segmentation = node.GetSegmentation()
    for i in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(i)
        array, value, image_to_world = _segment_label_map(node, segment_id)
        voxel_ml = abs(float(np.linalg.det(image_to_world[:3, :3]))) / 1000.0
        out[segmentation.GetSegment(segment_id).GetName()] = float(np.count_nonzero(array == value)) * voxel_ml
    return out


def segment_labels(node) -> dict[str, int | None]:
    """Segment name -> FreeSurfer label number (from our tag; None for segments made elsewhere)."""
    out = {}
    segmentation = node.GetSegmentation()
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetSegment(segmentation.GetNthSegmentID(i))
        tag = _segment_tag(segment, LABEL_ATTRIBUTE)
        out[segment.GetName()] = int(tag) if tag not in (None, "") else None
    return out


def _segment_tag(segment, tag_name: str) -> str | None:
    import vtk

    value = vtk.reference("")
    if not segment.GetTag(tag_name, value):  # C++: bool GetTag(std::string tag, std::string& value)
        return None
    return str(value) or None


def ventricle_report(node) -> dict:
    """Per-ventricle and total ventricular volume in mL from a segmentation node (ventricle segments only)."""
    volumes = segment_volumes_ml(node)
    labels = segment_labels(node)
    per = {name: ml for name, ml in volumes.items()
           if labels.get(name) in VENTRICLE_LABELS or (labels.get(name) is None and name in
                                                        {SCHEMA[v][0] for v in VENTRICLE_LABELS})}
    return {"per_label_ml": per, "ventricle_ml": float(sum(per.values()))}


# -------------------------------------------------------------------------------- worker results
def load_sample(result: dict, scene=None, labels="ventricles", closed_surface: bool = True, show: bool = False,
                name: str | None = None):
    """Load one `RESULT {"kind": "sample", ...}` of `worker generate` (the exact files it names):
    a synthetic volume node + a segmentation node on it. Returns (volume_node, segmentation_node)."""
    files = result["files"]
    record = {}
    record_path = files.get("record")
    if record_path and Path(record_path).is_file():
        record = json.loads(Path(record_path).read_text())
    index = int(result.get("index", 0))
    asked = result.get("asked_ml", record.get("asked_ml"))
    seed = result.get("seed", record.get("seed"))
    if name:
        base = name
    elif asked is not None:
        base = f"VentricleSynth {float(asked):g} mL seed {seed}"
    else:
        base = f"VentricleSynth sample {index}"
    volume_node = load_volume_file(files["image"], name=base, scene=scene, synthetic=True, show=show)
    summary = {k: result[k] for k in ("asked_ml", "got_ml", "tiv_ml", "seed", "guidance", "steps", "device",
                                      "models") if k in result}
    volume_node.SetAttribute(RECORD_ATTRIBUTE, json.dumps(summary or record))
    segmentation_node = load_segmentation_file(files["label"], name=f"{base} labels", scene=scene, labels=labels,
                                               reference_volume_node=volume_node, closed_surface=closed_surface,
                                               synthetic=True, show=show)
    segmentation_node.SetAttribute(RECORD_ATTRIBUTE, json.dumps(summary or record))
    return volume_node, segmentation_node


def load_segmentation_result(result: dict, reference_volume_node, scene=None, closed_surface: bool = True,
                             name: str | None = None, show: bool = False):
    """Load a `RESULT {"kind": "segmentation", ...}` of `worker segment` onto the input volume node
    (same grid, same parent transform). Returns the segmentation node."""
    files = result["files"]
    base = name or (f"{reference_volume_node.GetName()} ventricles" if reference_volume_node is not None
                    else "Ventricles")
    node = load_segmentation_file(files["label"], name=base, scene=scene, labels="ventricles",
                                  reference_volume_node=reference_volume_node, closed_surface=closed_surface,
                                  show=show)
    if reference_volume_node is not None and reference_volume_node.GetTransformNodeID():
        node.SetAndObserveTransformNodeID(reference_volume_node.GetTransformNodeID())
    report = {k: result[k] for k in ("ventricle_ml", "per_label_ml", "tiv_ml", "warnings", "seconds", "device")
              if k in result}
    node.SetAttribute(RECORD_ATTRIBUTE, json.dumps(report))
    if is_synthetic(reference_volume_node):
        tag_synthetic(node)
    return node


def geometry_error_voxels(affine_a, affine_b, shape) -> float:
    """Largest distance, in voxels of grid a, between the corners of two grids of `shape`."""
    a = np.asarray(affine_a, float)
    b = np.asarray(affine_b, float)
    hi = np.asarray(shape, float) - 1
    corners = np.array([[x, y, z, 1.0] for x in (0, hi[0]) for y in (0, hi[1]) for z in (0, hi[2])])
    distance_mm = np.linalg.norm((corners @ a.T - corners @ b.T)[:, :3], axis=1).max()
    return float(distance_mm / np.linalg.norm(a[:3, :3], axis=0).min())


def sample_records(nodes: Iterable) -> list[dict]:
    """The records attached to nodes by `load_sample`/`load_segmentation_result`."""
    out = []
    for node in nodes:
        text = node.GetAttribute(RECORD_ATTRIBUTE) if node is not None else None
        if text:
            out.append(json.loads(text))
    return out
