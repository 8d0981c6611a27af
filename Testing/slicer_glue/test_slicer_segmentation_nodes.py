"""Segmentation nodes, headless with the slicer-core wheel: label maps -> segmentation nodes (names, colours,
terminology, reference geometry, closed surfaces, volumes)."""

from __future__ import annotations

import numpy as np
import pytest

from VentricleSynthLib.labels import SCHEMA, VENTRICLE_LABELS
from VentricleSynthLib.slicer_glue.segmentation_nodes import (
    ensure_segmentation_converters,
    registered_rule_names,
    segment_labels,
    segment_volumes_ml,
    segmentation_from_label_map,
    ventricle_report,
)
from VentricleSynthLib.slicer_glue.volume_nodes import node_from_array
from VentricleSynthLib.volumes import label_volumes_ml, voxel_volume_ml

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")

SURFACE = "Closed surface"


def test_segments_are_named_coloured_and_measured(scene, ventricle_labels, grid_affines):
    label = ventricle_labels()
    affine = grid_affines(label.shape)["oblique"]
    node = segmentation_from_label_map(label, affine, name="vents", scene=scene)
    segmentation = node.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    names = [segmentation.GetSegment(s).GetName() for s in ids]
    assert names == [SCHEMA[v][0] for v in VENTRICLE_LABELS]
    for segment_id, lab in zip(ids, VENTRICLE_LABELS):
        segment = segmentation.GetSegment(segment_id)
        assert np.allclose(segment.GetColor(), np.asarray(SCHEMA[lab][1]) / 255.0)
        assert segment.GetLabelValue() == lab
    assert segment_labels(node) == {SCHEMA[v][0]: v for v in VENTRICLE_LABELS}
    expected = label_volumes_ml(label, affine)
    volumes = segment_volumes_ml(node)
    assert volumes == pytest.approx({SCHEMA[k][0]: v for k, v in expected.items()}, abs=1e-9)
    assert volumes["Left-Inf-Lat-Vent"] == 0.0  # absent label -> empty segment, 0 mL
    voxel = voxel_volume_ml(affine)
    assert volumes["Left-Lateral-Ventricle"] == pytest.approx(168 * voxel)
    report = ventricle_report(node)
    assert report["ventricle_ml"] == pytest.approx((168 + 168 + 24 + 18 + 12) * voxel)


def test_terminology_of_ventricle_segments(scene, ventricle_labels):
    node = segmentation_from_label_map(ventricle_labels(), np.eye(4), scene=scene, closed_surface=False)
    segmentation = node.GetSegmentation()
    terms = {segmentation.GetSegment(segmentation.GetNthSegmentID(i)).GetName():
             segmentation.GetSegment(segmentation.GetNthSegmentID(i)).GetTerminology()
             for i in range(segmentation.GetNumberOfSegments())}
    assert "SCT^66720007^Lateral ventricle~SCT^7771000^Left" in terms["Left-Lateral-Ventricle"]
    assert "SCT^66720007^Lateral ventricle~SCT^24028007^Right" in terms["Right-Inf-Lat-Vent"]
    assert "SCT^35918002^Fourth ventricle" in terms["4th-Ventricle"]
    for term in terms.values():
        fields = term.split("~")
        assert len(fields) == 7
        assert fields[0].endswith("General Anatomy list") and fields[1].endswith("Anatomical Structure")


def test_closed_surfaces_for_present_segments(scene, ventricle_labels):
    node = segmentation_from_label_map(ventricle_labels(), np.eye(4), scene=scene)
    assert node.GetSegmentation().ContainsRepresentation(SURFACE)
    surface = node.GetClosedSurfaceInternalRepresentation("Left-Lateral-Ventricle")
    assert surface is not None and surface.GetNumberOfPoints() > 0
    assert node.GetDisplayNode() is not None and node.GetDisplayNode().GetVisibility3D()


def test_label_selection_all_and_explicit(scene, ventricle_labels):
    label = ventricle_labels()
    every = segmentation_from_label_map(label, np.eye(4), scene=scene, labels="all", closed_surface=False)
    assert every.GetSegmentation().GetNumberOfSegments() == len(SCHEMA) - 1
    assert segment_volumes_ml(every)["Left-Cerebral-White-Matter"] == pytest.approx(
        float((label == 2).sum()) / 1000.0)
    # the ventricle report ignores non-ventricle segments
    assert ventricle_report(every)["ventricle_ml"] == pytest.approx((168 + 168 + 24 + 18 + 12) / 1000.0)
    some = segmentation_from_label_map(label, np.eye(4), scene=scene, labels=[14, 15], closed_surface=False)
    assert list(segment_volumes_ml(some)) == ["3rd-Ventricle", "4th-Ventricle"]
    with pytest.raises(ValueError, match="schema"):
        segmentation_from_label_map(label, np.eye(4), scene=scene, labels=[999])


def test_reference_geometry_from_a_volume_node_or_the_map_itself(scene, ventricle_labels, grid_affines):
    label = ventricle_labels()
    affine = grid_affines(label.shape)["lps-oblique"]
    volume = node_from_array(label.astype(np.float32), affine, scene=scene)
    with_reference = segmentation_from_label_map(label, affine, scene=scene, reference_volume_node=volume,
                                                      closed_surface=False)
    parameter = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    reference = with_reference.GetSegmentation().GetConversionParameter(parameter)
    own = segmentation_from_label_map(label, affine, scene=scene, closed_surface=False)
    assert own.GetSegmentation().GetConversionParameter(parameter) == reference
    values = [float(v) for v in reference.split(";") if v]
    assert np.allclose(np.asarray(values[:16]).reshape(4, 4), affine, atol=1e-6)
    assert values[16:] == [0, label.shape[0] - 1, 0, label.shape[1] - 1, 0, label.shape[2] - 1]


def test_relabelling_an_existing_node_replaces_segments(scene, ventricle_labels):
    label = ventricle_labels()
    node = segmentation_from_label_map(label, np.eye(4), scene=scene, closed_surface=False)
    label2 = np.where(label == 4, 0, label).astype(np.int16)
    segmentation_from_label_map(label2, np.eye(4), scene=scene, node=node, closed_surface=False)
    assert node.GetSegmentation().GetNumberOfSegments() == len(VENTRICLE_LABELS)
    assert segment_volumes_ml(node)["Left-Lateral-Ventricle"] == 0.0


# ------------------------------------------------------------------------------------ converter rules
def _rule_names():
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    return [rule.GetClassName() for rule in factory.GetConverterRules()]


def test_converter_rules_are_registered_once():
    ensure_segmentation_converters()
    ensure_segmentation_converters()
    names = _rule_names()
    for rule in ("vtkBinaryLabelmapToClosedSurfaceConversionRule", "vtkClosedSurfaceToBinaryLabelmapConversionRule"):
        assert names.count(rule) == 1
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    assert set(names) <= registered_rule_names(factory)
    assert registered_rule_names(object()) is None  # a wrapping without GetConverterRules: AttributeError caught


def test_inside_the_application_the_rules_are_left_alone(monkeypatch):
    """Slicer registers the rules at start-up (vtkSlicerSegmentationsModuleLogic::RegisterNodes): with `slicer.app`
    present nothing is added, even where a rule is missing."""
    ensure_segmentation_converters()
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    rule = next(r for r in factory.GetConverterRules()
                if r.GetClassName() == "vtkBinaryLabelmapToClosedSurfaceConversionRule")
    factory.UnregisterConverterRule(rule)
    try:
        monkeypatch.setattr(slicer, "app", object(), raising=False)
        ensure_segmentation_converters()
        assert "vtkBinaryLabelmapToClosedSurfaceConversionRule" not in _rule_names()
        monkeypatch.delattr(slicer, "app")
        ensure_segmentation_converters()
        assert _rule_names().count("vtkBinaryLabelmapToClosedSurfaceConversionRule") == 1
    finally:
        if "vtkBinaryLabelmapToClosedSurfaceConversionRule" not in _rule_names():
            factory.RegisterConverterRule(rule)
