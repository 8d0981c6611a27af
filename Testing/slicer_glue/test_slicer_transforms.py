"""Segmentations of volumes under a parent transform, headless with the slicer-core wheel: the transform applies
once (linear shift, rotation, nested, displacement grid, thin-plate spline), so the reference geometry, the
labelmap and Slicer's own labelmap export agree with the volume, voxel for voxel, in world coordinates."""

from __future__ import annotations

import numpy as np
import pytest

from VentricleSynthLib.io.nifti import Volume, load_image, save_volume
from VentricleSynthLib.labels import SCHEMA, VENTRICLE_LABELS
from VentricleSynthLib.slicer_glue.mrml import vtk_matrix
from VentricleSynthLib.slicer_glue.results import load_segmentation_result
from VentricleSynthLib.slicer_glue.segmentation_nodes import _segment_label_map, segment_volumes_ml
from VentricleSynthLib.slicer_glue.volume_nodes import affine_from_node, array_from_node, node_from_array, write_node
from VentricleSynthLib.volumes import label_volumes_ml

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")
vtk = pytest.importorskip("vtk")

PRESENT = [lab for lab in VENTRICLE_LABELS if lab != 5]  # label 5 is absent from the fixture's map


def _linear(scene, matrix, parent=None):
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    node.SetMatrixTransformToParent(vtk_matrix(matrix))
    if parent is not None:
        node.SetAndObserveTransformNodeID(parent.GetID())
    return node


def _rigid(degrees_z, degrees_x, shift):
    tz, tx = np.deg2rad(degrees_z), np.deg2rad(degrees_x)
    rz = np.array([[np.cos(tz), -np.sin(tz), 0], [np.sin(tz), np.cos(tz), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(tx), -np.sin(tx)], [0, np.sin(tx), np.cos(tx)]])
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = rz @ rx, shift
    return matrix


def _grid(scene):
    """A smooth displacement field (up to ~8 mm) as a vtkMRMLGridTransformNode."""
    from vtk.util import numpy_support

    grid = vtk.vtkImageData()
    grid.SetDimensions(7, 7, 7)
    grid.SetOrigin(-60.0, -60.0, -60.0)
    grid.SetSpacing(20.0, 20.0, 20.0)
    points = np.array([grid.GetPoint(i) for i in range(grid.GetNumberOfPoints())])
    displacement = np.stack([5 * np.sin(points[:, 1] / 30), 3 * np.cos(points[:, 0] / 25), 2 + points[:, 2] / 20], 1)
    grid.GetPointData().SetScalars(numpy_support.numpy_to_vtk(displacement, deep=True, array_type=vtk.VTK_DOUBLE))
    transform = slicer.vtkOrientedGridTransform()
    transform.SetDisplacementGridData(grid)
    node = scene.AddNewNodeByClass("vtkMRMLGridTransformNode")
    node.SetAndObserveTransformToParent(transform)
    return node


def _thin_plate(scene):
    """A thin-plate spline (landmarks moved by up to 6 mm) on a plain vtkMRMLTransformNode."""
    source, target = vtk.vtkPoints(), vtk.vtkPoints()
    for x in (-40.0, 40.0):
        for y in (-40.0, 40.0):
            for z in (-40.0, 40.0):
                source.InsertNextPoint(x, y, z)
                target.InsertNextPoint(x + 0.05 * y, y + 3.0, z - 0.05 * x)
    source.InsertNextPoint(0.0, 0.0, 0.0)
    target.InsertNextPoint(2.0, 6.0, -3.0)
    transform = vtk.vtkThinPlateSplineTransform()
    transform.SetSourceLandmarks(source)
    transform.SetTargetLandmarks(target)
    transform.SetBasisToR()
    node = scene.AddNewNodeByClass("vtkMRMLTransformNode")
    node.SetAndObserveTransformToParent(transform)
    return node


TRANSFORMS = {
    "shift +50 mm": lambda scene: _linear(scene, _rigid(0, 0, (50.0, 0.0, 0.0))),
    "rotated": lambda scene: _linear(scene, _rigid(30.0, -12.0, (12.0, -7.0, 30.0))),
    "nested": lambda scene: _linear(scene, _rigid(-20.0, 0, (0, 5.0, 0)), _linear(scene, _rigid(0, 0, (50, 0, 0)))),
    "grid": _grid,
    "thin-plate": _thin_plate,
}


def _to_world(transform_node, local_points):
    transform = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(transform_node, None, transform)
    return np.array([transform.TransformPoint(*p) for p in local_points])


def _voxels(mask, ijk_to_local):
    ijk = np.argwhere(mask).astype(float)
    return ijk @ ijk_to_local[:3, :3].T + ijk_to_local[:3, 3]


def _sorted(points):
    return points[np.lexsort(np.round(points, 4).T[::-1])]


def _segment_after_worker(scene, ventricle_labels, grid_affines, tmp_path, make_transform):
    """A volume under a parent transform, through the worker's files, segmented: (label, affine, volume, seg)."""
    label = ventricle_labels()
    affine = grid_affines(label.shape)["oblique"]
    volume = node_from_array(label.astype(np.float32), affine, name="patient", scene=scene)
    transform = make_transform(scene)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    worker_view = load_image(write_node(volume, tmp_path / "input.nii.gz"))
    assert np.allclose(worker_view.affine, affine, atol=1e-5)  # the worker gets the untransformed grid
    save_volume(Volume(label, worker_view.affine), tmp_path / "segmentation.nii.gz", dtype=np.int16)
    result = {"kind": "segmentation", "files": {"label": str(tmp_path / "segmentation.nii.gz")}}
    return label, affine, volume, load_segmentation_result(result, volume, scene=scene)


@pytest.mark.parametrize("case", list(TRANSFORMS))
def test_the_transform_applies_once(scene, ventricle_labels, grid_affines, tmp_path, case):
    label, affine, volume, segmentation = _segment_after_worker(scene, ventricle_labels, grid_affines, tmp_path,
                                                                TRANSFORMS[case])
    assert segmentation.GetTransformNodeID() == volume.GetTransformNodeID()
    # reference geometry = the volume's own grid = the labelmap's grid (all in the segmentation's frame)
    parameter = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    values = [float(v) for v in segmentation.GetSegmentation().GetConversionParameter(parameter).split(";") if v]
    reference = np.asarray(values[:16]).reshape(4, 4)
    assert np.allclose(reference, affine_from_node(volume), atol=1e-6)
    assert values[16:] == [0, label.shape[0] - 1, 0, label.shape[1] - 1, 0, label.shape[2] - 1]
    for lab in PRESENT:
        layer, value, image_to_local = _segment_label_map(segmentation, SCHEMA[lab][0])
        assert np.allclose(image_to_local, reference, atol=1e-6)
        segment_world = _to_world(segmentation.GetParentTransformNode(),
                                  _voxels(layer.transpose(2, 1, 0) == value, image_to_local))
        volume_world = _to_world(volume.GetParentTransformNode(), _voxels(label == lab, affine_from_node(volume)))
        assert len(segment_world) == len(volume_world) == np.count_nonzero(label == lab)
        assert np.allclose(_sorted(segment_world), _sorted(volume_world), atol=1e-6)
        assert not np.allclose(volume_world, _voxels(label == lab, affine), atol=1.0)  # the transform did move it
    volumes = segment_volumes_ml(segmentation)
    assert {lab: volumes[SCHEMA[lab][0]] for lab in VENTRICLE_LABELS} == pytest.approx(
        label_volumes_ml(label, affine), rel=1e-6)


@pytest.mark.parametrize("case", list(TRANSFORMS))
def test_slicer_own_labelmap_export_lands_on_the_volume(scene, ventricle_labels, grid_affines, tmp_path, case):
    """What the Segment Editor and Export do: labelmaps on the reference geometry, and on the volume itself.
    With the transform applied twice the reference geometry export held no voxel at all."""
    label, affine, volume, segmentation = _segment_after_worker(scene, ventricle_labels, grid_affines, tmp_path,
                                                                TRANSFORMS[case])
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    expected = np.where(np.isin(label, VENTRICLE_LABELS), label, 0)
    on_reference = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    assert logic.ExportAllSegmentsToLabelmapNode(segmentation, on_reference,
                                                 slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
    on_volume = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    for lab in VENTRICLE_LABELS:
        ids.InsertNextValue(SCHEMA[lab][0])
    assert logic.ExportSegmentsToLabelmapNode(segmentation, ids, on_volume, volume)
    for exported in (on_reference, on_volume):
        assert exported.GetTransformNodeID() == volume.GetTransformNodeID()
        assert np.allclose(affine_from_node(exported), affine, atol=1e-6)
        values = array_from_node(exported)
        # Slicer numbers exported segments 1..n in segment order: map back to the schema's labels
        numbers = {i + 1: lab for i, lab in enumerate(VENTRICLE_LABELS)}
        relabelled = np.vectorize(lambda v: numbers.get(int(v), 0))(values)
        assert np.array_equal(relabelled, expected)


def test_a_segmentation_node_moved_elsewhere_follows_the_volume(scene, ventricle_labels, tmp_path):
    """An existing segmentation node under another transform is relabelled in the volume's frame."""
    from VentricleSynthLib.slicer_glue.segmentation_nodes import segmentation_from_label_map

    label = ventricle_labels()
    volume = node_from_array(label.astype(np.float32), np.eye(4), scene=scene)
    volume.SetAndObserveTransformNodeID(_linear(scene, _rigid(0, 0, (50.0, 0, 0))).GetID())
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "elsewhere")
    node.SetAndObserveTransformNodeID(_linear(scene, _rigid(45.0, 0, (-9.0, 3.0, 0))).GetID())
    segmentation_from_label_map(label, np.eye(4), scene=scene, node=node, reference_volume_node=volume,
                                closed_surface=False)
    assert node.GetTransformNodeID() == volume.GetTransformNodeID()
    parameter = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    values = [float(v) for v in node.GetSegmentation().GetConversionParameter(parameter).split(";") if v]
    assert np.allclose(np.asarray(values[:16]).reshape(4, 4), np.eye(4))
