"""Worker results -> nodes, headless with the slicer-core wheel: geometry through node -> worker files ->
result nodes, Slicer's own NIfTI reader, parent transforms, a sample folder as `worker generate` writes it."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from VentricleSynthLib.io.nifti import Volume, load_image, load_label_map, save_volume
from VentricleSynthLib.slicer_glue.mrml import RECORD_ATTRIBUTE, geometry_error_voxels, is_synthetic, numpy_matrix
from VentricleSynthLib.slicer_glue.results import load_sample, load_segmentation_result
from VentricleSynthLib.slicer_glue.segmentation_nodes import _segment_label_map, segment_volumes_ml, ventricle_report
from VentricleSynthLib.slicer_glue.volume_nodes import (
    affine_from_node,
    array_from_node,
    load_volume_file,
    node_from_array,
    write_node,
)
from VentricleSynthLib.volumes import voxel_volume_ml

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")


@pytest.mark.parametrize("case", ["anisotropic", "oblique", "lps-oblique"])
def test_geometry_survives_node_to_worker_files_to_result_nodes(scene, ventricle_labels, grid_affines, tmp_path, case):
    """Acceptance 1: a volume written for the worker, read there with VentricleSynthLib.io.nifti, labelled on
    its own grid, and loaded back lands on the input's voxels (<= 0.5 voxel; here exactly)."""
    label = ventricle_labels()
    affine = grid_affines(label.shape)[case]
    image = (label > 0) * 80.0 + np.random.default_rng(2).normal(0, 1, label.shape)
    node = node_from_array(image.astype(np.float32), affine, name="patient", scene=scene)

    path = write_node(node, tmp_path / "input.nii.gz")  # the Logic, Slicer side
    worker_view = load_image(path)  # the worker side
    assert np.allclose(worker_view.affine, affine, atol=1e-5)
    assert np.array_equal(worker_view.array, array_from_node(node))
    header = nib.load(str(path)).header
    assert int(header["sform_code"]) == 1 and int(header["qform_code"]) == 1
    # the worker writes a result label map on the input's own grid
    save_volume(Volume(label, worker_view.affine), tmp_path / "out" / "segmentation.nii.gz", dtype=np.int16)
    result = {"kind": "segmentation", "files": {"label": str(tmp_path / "out" / "segmentation.nii.gz")},
              "ventricle_ml": 1.0}
    segmentation = load_segmentation_result(result, node, scene=scene)  # the Logic again

    internal = segmentation.GetBinaryLabelmapInternalRepresentation("Left-Lateral-Ventricle")
    import vtk

    matrix = vtk.vtkMatrix4x4()
    internal.GetImageToWorldMatrix(matrix)
    assert geometry_error_voxels(numpy_matrix(matrix), affine_from_node(node), label.shape) <= 0.5
    assert geometry_error_voxels(numpy_matrix(matrix), affine, label.shape) < 1e-4
    # same voxels, not just the same frame
    layer = _segment_label_map(segmentation, "Left-Lateral-Ventricle")[0]  # (k, j, i)
    assert np.array_equal(layer.transpose(2, 1, 0) == 4, label == 4)
    assert segment_volumes_ml(segmentation)["Left-Lateral-Ventricle"] == pytest.approx(
        168 * voxel_volume_ml(affine))
    assert json.loads(segmentation.GetAttribute(RECORD_ATTRIBUTE))["ventricle_ml"] == 1.0
    # an image result read back is on the same grid as well
    again = load_volume_file(path, scene=scene)
    assert geometry_error_voxels(affine_from_node(again), affine, label.shape) < 1e-4


def test_slicer_own_nifti_reader_agrees_with_the_glue(scene, ventricle_labels, grid_affines, tmp_path):
    """Independent check of RAS/LPS handling: Slicer's ITK-based storage node reads the file the glue
    wrote into the same IJK->RAS matrix and the same voxels."""
    label = ventricle_labels()
    affine = grid_affines(label.shape)["lps-oblique"]
    node = node_from_array(label.astype(np.float32), affine, scene=scene)
    path = write_node(node, tmp_path / "x.nii.gz")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    read = slicer.vtkMRMLScalarVolumeNode()
    scene.AddNode(read)
    assert storage.ReadData(read)
    assert geometry_error_voxels(affine_from_node(read), affine, label.shape) < 1e-3
    assert np.array_equal(array_from_node(read), label.astype(np.float32))


def test_result_segmentation_follows_the_input_parent_transform(scene, tmp_path):
    node = node_from_array(np.ones((6, 6, 6), np.float32), np.eye(4), scene=scene)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    node.SetAndObserveTransformNodeID(transform.GetID())
    label = np.zeros((6, 6, 6), np.int16)
    label[2:4, 2:4, 2:4] = 43
    save_volume(Volume(label, np.eye(4)), tmp_path / "seg.nii.gz", dtype=np.int16)
    seg = load_segmentation_result({"files": {"label": str(tmp_path / "seg.nii.gz")}}, node, scene=scene)
    assert seg.GetTransformNodeID() == transform.GetID()


def test_load_sample_from_a_worker_result(scene, ventricle_labels, grid_affines, tmp_path):
    """A sample folder exactly as `worker generate` writes it (samples.write_sample) and its RESULT line."""
    from VentricleSynthLib.generation.sample_folder import write_sample
    from VentricleSynthLib.volumes import ventricle_volume_ml

    label = ventricle_labels()
    affine = grid_affines(label.shape)["anisotropic"]
    image = np.clip((label > 0) * 0.7 + 0.1, 0, 1).astype(np.float32)
    got = round(ventricle_volume_ml(label, affine), 3)
    record = {"asked_ml": 0.5, "got_ml": got, "seed": 9, "seconds": 1.0}
    folder = write_sample(tmp_path, 0, image, label, affine, record)
    result = {"kind": "sample", "index": 0, "folder": str(folder),
              "files": {"image": str(folder / "image.nii.gz"), "label": str(folder / "label.nii.gz"),
                        "preview": str(folder / "preview.png"), "record": str(folder / "sample.json")},
              **record}
    volume_node, segmentation_node = load_sample(result, scene=scene)
    assert volume_node.GetName() == "SYNTHETIC VentricleSynth 0.5 mL seed 9"
    assert is_synthetic(volume_node) and is_synthetic(segmentation_node)
    assert segmentation_node.GetName().startswith("SYNTHETIC ")
    assert np.allclose(affine_from_node(volume_node), affine, atol=1e-5)
    assert json.loads(volume_node.GetAttribute(RECORD_ATTRIBUTE))["got_ml"] == got
    assert ventricle_report(segmentation_node)["ventricle_ml"] == pytest.approx(got, abs=1e-3)
    assert np.array_equal(load_label_map(result["files"]["label"]).array, label)
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    reference = segmentation_node.GetNodeReference(role)
    assert reference is not None and reference.GetID() == volume_node.GetID()
