"""MRML glue, headless with the slicer-core wheel: numpy + affine <-> volume nodes (KJI/IJK, RAS/LPS,
oblique), label maps -> segmentation nodes (names, colours, terminology, reference geometry, closed
surfaces, volumes), synthetic tags, and geometry through node -> worker files -> result nodes.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")

from VentricleSynthLib.slicer_glue import mrml as glue  # noqa: E402
from VentricleSynthLib.labels import SCHEMA, VENTRICLE_LABELS  # noqa: E402
from VentricleSynthLib.io.nifti import Volume, load_image, load_label_map, save_volume  # noqa: E402
from VentricleSynthLib.volumes import label_volumes_ml, voxel_volume_ml  # noqa: E402

BINARY = "Binary labelmap"
SURFACE = "Closed surface"


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def _affines(make_affine, shape):
    return {
        "identity": np.eye(4),
        "anisotropic": make_affine((0.9, 1.3, 2.5), shape=shape, centre=(4.0, -7.0, 11.0)),
        "oblique": make_affine((1.1, 0.95, 1.7), rotation_deg=23.0, axis="x", shape=shape, centre=(-3.0, 2.0, 5.0)),
        "lps-oblique": make_affine((1.2, 1.2, 3.0), rotation_deg=-17.0, axis="z", lps=True, shape=shape,
                                   centre=(30.0, -40.0, 12.0)),
    }


def _label_map(shape=(24, 26, 22)):
    """Known voxel counts per ventricle label plus some tissue; label 5 deliberately absent."""
    label = np.zeros(shape, np.int16)
    label[2:20, 2:22, 2:18] = 2  # white matter
    label[4:8, 5:12, 4:10] = 4  # 4*7*6 = 168 voxels
    label[12:16, 5:12, 4:10] = 43  # 168
    label[9:11, 8:12, 12:15] = 14  # 2*4*3 = 24
    label[9:11, 15:18, 5:8] = 15  # 2*3*3 = 18
    label[16:18, 14:16, 10:13] = 44  # 2*2*3 = 12
    return label


def _kji_value(node, i, j, k):
    return slicer.util.arrayFromVolume(node)[k, j, i]


# ---------------------------------------------------------------------------------- volume nodes
@pytest.mark.parametrize("case", ["identity", "anisotropic", "oblique", "lps-oblique"])
def test_array_and_affine_round_trip_through_a_volume_node(scene, make_affine, case):
    shape = (11, 13, 7)
    affine = _affines(make_affine, shape)[case]
    array = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    node = glue.node_from_array(array, affine, name="v", scene=scene)
    assert node.GetImageData().GetDimensions() == shape  # VTK dims are (i, j, k)
    assert slicer.util.arrayFromVolume(node).shape == shape[::-1]  # Slicer's numpy view is (k, j, i)
    assert _kji_value(node, 3, 5, 6) == array[3, 5, 6]
    assert np.array_equal(glue.array_from_node(node), array)
    assert np.allclose(glue.affine_from_node(node), affine, atol=1e-9)
    # Slicer's own decomposition agrees: origin, spacing, unit axis directions
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    assert np.allclose(node.GetOrigin(), affine[:3, 3])
    assert np.allclose(node.GetSpacing(), spacing)
    directions = np.zeros((3, 3))
    node.GetIJKToRASDirections(directions)
    assert np.allclose(directions, affine[:3, :3] / spacing)


def test_voxel_to_world_matches_slicer_transform(scene, make_affine):
    shape = (9, 8, 7)
    affine = _affines(make_affine, shape)["lps-oblique"]
    node = glue.node_from_array(np.zeros(shape, np.float32), affine, scene=scene)
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    for ijk in ([0, 0, 0], [8, 7, 6], [3, 1, 4]):
        assert np.allclose(matrix.MultiplyPoint([*ijk, 1.0])[:3], affine[:3, :3] @ ijk + affine[:3, 3])


def test_lps_affine_is_converted_to_ras(scene, make_affine):
    lps = make_affine((1.0, 2.0, 3.0), rotation_deg=10.0, axis="y", shape=(5, 5, 5))
    node = glue.node_from_array(np.ones((5, 5, 5), np.float32), lps, scene=scene, space="LPS")
    assert np.allclose(glue.affine_from_node(node), np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps)


def test_label_map_node_and_dtypes(scene):
    node = glue.node_from_array(np.arange(27, dtype=np.int64).reshape(3, 3, 3), np.eye(4), scene=scene,
                                label_map=True)
    assert node.IsA("vtkMRMLLabelMapVolumeNode")
    assert glue.array_from_node(node).dtype == np.int32  # 64-bit ints do not render in Slicer
    boolean = glue.node_from_array(np.ones((3, 3, 3), bool), np.eye(4), scene=scene)
    assert glue.array_from_node(boolean).dtype == np.uint8


@pytest.mark.parametrize("bad, message", [
    (np.array([[1, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), "shear"),
    (np.diag([1.0, 0.0, 1.0, 1.0]), "singular"),
    (np.full((4, 4), np.nan), "finite"),
    (np.eye(3), "4x4"),
])
def test_affines_slicer_cannot_hold_are_refused(scene, bad, message):
    with pytest.raises(ValueError, match=message):
        glue.node_from_array(np.zeros((3, 3, 3), np.float32), bad, scene=scene)


def test_vector_volumes_are_refused_with_a_clear_error(scene, tmp_path):
    rgb = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "colour photo")
    slicer.util.updateVolumeFromArray(rgb, np.zeros((4, 5, 6, 3), np.uint8))
    with pytest.raises(ValueError, match="single-component 3-D"):
        glue.write_node(rgb, tmp_path / "x.nii.gz")
    assert not (tmp_path / "x.nii.gz").exists()


def test_synthetic_tag_is_idempotent_and_visible(scene):
    node = glue.node_from_array(np.zeros((3, 3, 3), np.float32), np.eye(4), name="sample", scene=scene,
                                synthetic=True)
    glue.tag_synthetic(node)
    assert node.GetName() == "SYNTHETIC sample"
    assert node.GetAttribute("VentricleSynth.Synthetic") == "1" and glue.is_synthetic(node)
    plain = glue.node_from_array(np.zeros((3, 3, 3), np.float32), np.eye(4), name="patient", scene=scene)
    assert not glue.is_synthetic(plain) and plain.GetName() == "patient"


def test_scene_is_required_headless():
    if getattr(slicer, "mrmlScene", None) is not None:
        pytest.skip("running inside Slicer")
    with pytest.raises(RuntimeError, match="scene"):
        glue.node_from_array(np.zeros((3, 3, 3), np.float32), np.eye(4))


# ------------------------------------------------------------------------------- segmentations
def test_segments_are_named_coloured_and_measured(scene, make_affine):
    label = _label_map()
    affine = _affines(make_affine, label.shape)["oblique"]
    node = glue.segmentation_from_label_map(label, affine, name="vents", scene=scene)
    segmentation = node.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    names = [segmentation.GetSegment(s).GetName() for s in ids]
    assert names == [SCHEMA[v][0] for v in VENTRICLE_LABELS]
    for segment_id, lab in zip(ids, VENTRICLE_LABELS):
        segment = segmentation.GetSegment(segment_id)
        assert np.allclose(segment.GetColor(), np.asarray(SCHEMA[lab][1]) / 255.0)
        assert segment.GetLabelValue() == lab
    assert glue.segment_labels(node) == {SCHEMA[v][0]: v for v in VENTRICLE_LABELS}
    expected = label_volumes_ml(label, affine)
    volumes = glue.segment_volumes_ml(node)
    assert volumes == pytest.approx({SCHEMA[k][0]: v for k, v in expected.items()}, abs=1e-9)
    assert volumes["Left-Inf-Lat-Vent"] == 0.0  # absent label -> empty segment, 0 mL
    voxel = voxel_volume_ml(affine)
    assert volumes["Left-Lateral-Ventricle"] == pytest.approx(168 * voxel)
    report = glue.ventricle_report(node)
    assert report["ventricle_ml"] == pytest.approx((168 + 168 + 24 + 18 + 12) * voxel)


def test_terminology_of_ventricle_segments(scene):
    node = glue.segmentation_from_label_map(_label_map(), np.eye(4), scene=scene, closed_surface=False)
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


def test_closed_surfaces_for_present_segments(scene):
    node = glue.segmentation_from_label_map(_label_map(), np.eye(4), scene=scene)
    assert node.GetSegmentation().ContainsRepresentation(SURFACE)
    surface = node.GetClosedSurfaceInternalRepresentation("Left-Lateral-Ventricle")
    assert surface is not None and surface.GetNumberOfPoints() > 0
    assert node.GetDisplayNode() is not None and node.GetDisplayNode().GetVisibility3D()


def test_label_selection_all_and_explicit(scene):
    label = _label_map()
    every = glue.segmentation_from_label_map(label, np.eye(4), scene=scene, labels="all", closed_surface=False)
    assert every.GetSegmentation().GetNumberOfSegments() == len(SCHEMA) - 1
    assert glue.segment_volumes_ml(every)["Left-Cerebral-White-Matter"] == pytest.approx(
        float((label == 2).sum()) / 1000.0)
    # the ventricle report ignores non-ventricle segments
    assert glue.ventricle_report(every)["ventricle_ml"] == pytest.approx((168 + 168 + 24 + 18 + 12) / 1000.0)
    some = glue.segmentation_from_label_map(label, np.eye(4), scene=scene, labels=[14, 15], closed_surface=False)
    assert list(glue.segment_volumes_ml(some)) == ["3rd-Ventricle", "4th-Ventricle"]
    with pytest.raises(ValueError, match="schema"):
        glue.segmentation_from_label_map(label, np.eye(4), scene=scene, labels=[999])


def test_reference_geometry_from_a_volume_node_or_the_map_itself(scene, make_affine):
    label = _label_map()
    affine = _affines(make_affine, label.shape)["lps-oblique"]
    volume = glue.node_from_array(label.astype(np.float32), affine, scene=scene)
    with_reference = glue.segmentation_from_label_map(label, affine, scene=scene, reference_volume_node=volume,
                                                      closed_surface=False)
    parameter = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    reference = with_reference.GetSegmentation().GetConversionParameter(parameter)
    own = glue.segmentation_from_label_map(label, affine, scene=scene, closed_surface=False)
    assert own.GetSegmentation().GetConversionParameter(parameter) == reference
    values = [float(v) for v in reference.split(";") if v]
    assert np.allclose(np.asarray(values[:16]).reshape(4, 4), affine, atol=1e-6)
    assert values[16:] == [0, label.shape[0] - 1, 0, label.shape[1] - 1, 0, label.shape[2] - 1]


def test_relabelling_an_existing_node_replaces_segments(scene):
    label = _label_map()
    node = glue.segmentation_from_label_map(label, np.eye(4), scene=scene, closed_surface=False)
    label2 = np.where(label == 4, 0, label).astype(np.int16)
    glue.segmentation_from_label_map(label2, np.eye(4), scene=scene, node=node, closed_surface=False)
    assert node.GetSegmentation().GetNumberOfSegments() == len(VENTRICLE_LABELS)
    assert glue.segment_volumes_ml(node)["Left-Lateral-Ventricle"] == 0.0


# --------------------------------------------------------- node -> worker files -> result nodes
@pytest.mark.parametrize("case", ["anisotropic", "oblique", "lps-oblique"])
def test_geometry_survives_node_to_worker_files_to_result_nodes(scene, make_affine, tmp_path, case):
    """Acceptance 1: a volume written for the worker, read there with VentricleSynthLib.io.nifti, labelled on
    its own grid, and loaded back lands on the input's voxels (<= 0.5 voxel; here exactly)."""
    label = _label_map()
    affine = _affines(make_affine, label.shape)[case]
    image = (label > 0) * 80.0 + np.random.default_rng(2).normal(0, 1, label.shape)
    node = glue.node_from_array(image.astype(np.float32), affine, name="patient", scene=scene)

    path = glue.write_node(node, tmp_path / "input.nii.gz")  # the Logic, Slicer side
    worker_view = load_image(path)  # the worker side
    assert np.allclose(worker_view.affine, affine, atol=1e-5)
    assert np.array_equal(worker_view.array, glue.array_from_node(node))
    header = nib.load(str(path)).header
    assert int(header["sform_code"]) == 1 and int(header["qform_code"]) == 1
    # the worker writes a result label map on the input's own grid
    save_volume(Volume(label, worker_view.affine), tmp_path / "out" / "segmentation.nii.gz", dtype=np.int16)
    result = {"kind": "segmentation", "files": {"label": str(tmp_path / "out" / "segmentation.nii.gz")},
              "ventricle_ml": 1.0}
    segmentation = glue.load_segmentation_result(result, node, scene=scene)  # the Logic again

    internal = segmentation.GetBinaryLabelmapInternalRepresentation("Left-Lateral-Ventricle")
    import vtk

    matrix = vtk.vtkMatrix4x4()
    internal.GetImageToWorldMatrix(matrix)
    assert glue.geometry_error_voxels(glue.numpy_matrix(matrix), glue.affine_from_node(node), label.shape) <= 0.5
    assert glue.geometry_error_voxels(glue.numpy_matrix(matrix), affine, label.shape) < 1e-4
    # same voxels, not just the same frame
    layer = glue._segment_label_map(segmentation, "Left-Lateral-Ventricle")[0]  # (k, j, i)
    assert np.array_equal(layer.transpose(2, 1, 0) == 4, label == 4)
    assert glue.segment_volumes_ml(segmentation)["Left-Lateral-Ventricle"] == pytest.approx(
        168 * voxel_volume_ml(affine))
    assert json.loads(segmentation.GetAttribute(glue.RECORD_ATTRIBUTE))["ventricle_ml"] == 1.0
    # an image result read back is on the same grid as well
    again = glue.load_volume_file(path, scene=scene)
    assert glue.geometry_error_voxels(glue.affine_from_node(again), affine, label.shape) < 1e-4


def test_slicer_own_nifti_reader_agrees_with_the_glue(scene, make_affine, tmp_path):
    """Independent check of RAS/LPS handling: Slicer's ITK-based storage node reads the file the glue
    wrote into the same IJK->RAS matrix and the same voxels."""
    label = _label_map()
    affine = _affines(make_affine, label.shape)["lps-oblique"]
    node = glue.node_from_array(label.astype(np.float32), affine, scene=scene)
    path = glue.write_node(node, tmp_path / "x.nii.gz")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    read = slicer.vtkMRMLScalarVolumeNode()
    scene.AddNode(read)
    assert storage.ReadData(read)
    assert glue.geometry_error_voxels(glue.affine_from_node(read), affine, label.shape) < 1e-3
    assert np.array_equal(glue.array_from_node(read), label.astype(np.float32))


def test_result_segmentation_follows_the_input_parent_transform(scene, tmp_path):
    node = glue.node_from_array(np.ones((6, 6, 6), np.float32), np.eye(4), scene=scene)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    node.SetAndObserveTransformNodeID(transform.GetID())
    label = np.zeros((6, 6, 6), np.int16)
    label[2:4, 2:4, 2:4] = 43
    save_volume(Volume(label, np.eye(4)), tmp_path / "seg.nii.gz", dtype=np.int16)
    seg = glue.load_segmentation_result({"files": {"label": str(tmp_path / "seg.nii.gz")}}, node, scene=scene)
    assert seg.GetTransformNodeID() == transform.GetID()


def test_load_sample_from_a_worker_result(scene, make_affine, tmp_path):
    """A sample folder exactly as `worker generate` writes it (samples.write_sample) and its RESULT line."""
    from VentricleSynthLib.generation.sample_folder import write_sample
    from VentricleSynthLib.volumes import ventricle_volume_ml

    label = _label_map()
    affine = _affines(make_affine, label.shape)["anisotropic"]
    image = np.clip((label > 0) * 0.7 + 0.1, 0, 1).astype(np.float32)
    got = round(ventricle_volume_ml(label, affine), 3)
    record = {"asked_ml": 0.5, "got_ml": got, "seed": 9, "seconds": 1.0}
    folder = write_sample(tmp_path, 0, image, label, affine, record)
    result = {"kind": "sample", "index": 0, "folder": str(folder),
              "files": {"image": str(folder / "image.nii.gz"), "label": str(folder / "label.nii.gz"),
                        "preview": str(folder / "preview.png"), "record": str(folder / "sample.json")},
              **record}
    volume_node, segmentation_node = glue.load_sample(result, scene=scene)
    assert volume_node.GetName() == "SYNTHETIC VentricleSynth 0.5 mL seed 9"
    assert glue.is_synthetic(volume_node) and glue.is_synthetic(segmentation_node)
    assert segmentation_node.GetName().startswith("SYNTHETIC ")
    assert np.allclose(glue.affine_from_node(volume_node), affine, atol=1e-5)
    assert json.loads(volume_node.GetAttribute(glue.RECORD_ATTRIBUTE))["got_ml"] == got
    assert glue.ventricle_report(segmentation_node)["ventricle_ml"] == pytest.approx(got, abs=1e-3)
    assert np.array_equal(load_label_map(result["files"]["label"]).array, label)
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    reference = segmentation_node.GetNodeReference(role)
    assert reference is not None and reference.GetID() == volume_node.GetID()
