"""Segmentation nodes: label maps in FreeSurfer numbers -> named, coloured segments with Slicer
terminology, and segment volumes read back in mL (conventions in `slicer_glue.mrml`)."""

from __future__ import annotations

import os

import numpy as np

from VentricleSynthLib.labels import LABELS, SCHEMA, VENTRICLE_LABELS
from VentricleSynthLib.slicer_glue.mrml import (
    LABEL_ATTRIBUTE,
    _as_ras,
    _check_representable,
    _ensure_display,
    _scene,
    _slicer,
    _stem,
    numpy_matrix,
    tag_synthetic,
    vtk_matrix,
)

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


_CONVERTER_RULES = ("vtkBinaryLabelmapToClosedSurfaceConversionRule", "vtkClosedSurfaceToBinaryLabelmapConversionRule")
_registered_here = False  # rules this process registered when the factory cannot list its rules


def registered_rule_names(factory) -> set[str] | None:
    """Class names of the factory's converter rules; None where this wrapping cannot list them."""
    try:
        return {rule.GetClassName() for rule in factory.GetConverterRules()}
    except (TypeError, AttributeError):  # std::vector of smart pointers: not wrapped in every build
        return None


def ensure_segmentation_converters() -> None:
    """Register the labelmap <-> closed surface rules where nobody did (slicer-core); a no-op in the application,
    whose Segmentations module registers them at start-up."""
    global _registered_here
    slicer = _slicer()
    if getattr(slicer, "app", None) is not None:  # running Slicer: vtkSlicerSegmentationsModuleLogic::RegisterNodes
        return
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    have = registered_rule_names(factory)
    if have is None:
        if _registered_here:
            return
        have = set()
    for cls in _CONVERTER_RULES:
        if cls not in have and hasattr(slicer, cls):
            factory.RegisterConverterRule(getattr(slicer, cls)())
    _registered_here = True


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
    if given (must share the map's grid for exact voxels), else the label map's own grid. With a reference volume,
    the affine is in that volume's own frame: the node takes the volume's parent transform (set first, see
    `SetReferenceImageGeometryParameterFromVolumeNode`), so segment and volume voxels coincide in the world.
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
    if reference_volume_node is not None:  # first: Slicer bakes a differing parent transform into the geometry
        node.SetAndObserveTransformNodeID(reference_volume_node.GetTransformNodeID())
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
