"""Volume nodes, headless with the slicer-core wheel: numpy + affine <-> volume nodes (KJI/IJK, RAS/LPS,
oblique), dtypes, refused affines and volumes, synthetic tags."""

from __future__ import annotations

import numpy as np
import pytest

from VentricleSynthLib.slicer_glue.mrml import is_synthetic, tag_synthetic
from VentricleSynthLib.slicer_glue.volume_nodes import affine_from_node, array_from_node, node_from_array, write_node

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")


def _kji_value(node, i, j, k):
    return slicer.util.arrayFromVolume(node)[k, j, i]


# ---------------------------------------------------------------------------------- volume nodes
@pytest.mark.parametrize("case", ["identity", "anisotropic", "oblique", "lps-oblique"])
def test_array_and_affine_round_trip_through_a_volume_node(scene, grid_affines, case):
    shape = (11, 13, 7)
    affine = grid_affines(shape)[case]
    array = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    node = node_from_array(array, affine, name="v", scene=scene)
    assert node.GetImageData().GetDimensions() == shape  # VTK dims are (i, j, k)
    assert slicer.util.arrayFromVolume(node).shape == shape[::-1]  # Slicer's numpy view is (k, j, i)
    assert _kji_value(node, 3, 5, 6) == array[3, 5, 6]
    assert np.array_equal(array_from_node(node), array)
    assert np.allclose(affine_from_node(node), affine, atol=1e-9)
    # Slicer's own decomposition agrees: origin, spacing, unit axis directions
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    assert np.allclose(node.GetOrigin(), affine[:3, 3])
    assert np.allclose(node.GetSpacing(), spacing)
    directions = np.zeros((3, 3))
    node.GetIJKToRASDirections(directions)
    assert np.allclose(directions, affine[:3, :3] / spacing)


def test_voxel_to_world_matches_slicer_transform(scene, grid_affines):
    shape = (9, 8, 7)
    affine = grid_affines(shape)["lps-oblique"]
    node = node_from_array(np.zeros(shape, np.float32), affine, scene=scene)
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    for ijk in ([0, 0, 0], [8, 7, 6], [3, 1, 4]):
        assert np.allclose(matrix.MultiplyPoint([*ijk, 1.0])[:3], affine[:3, :3] @ ijk + affine[:3, 3])


def test_lps_affine_is_converted_to_ras(scene, make_affine):
    lps = make_affine((1.0, 2.0, 3.0), rotation_deg=10.0, axis="y", shape=(5, 5, 5))
    node = node_from_array(np.ones((5, 5, 5), np.float32), lps, scene=scene, space="LPS")
    assert np.allclose(affine_from_node(node), np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps)


def test_label_map_node_and_dtypes(scene):
    node = node_from_array(np.arange(27, dtype=np.int64).reshape(3, 3, 3), np.eye(4), scene=scene,
                                label_map=True)
    assert node.IsA("vtkMRMLLabelMapVolumeNode")
    assert array_from_node(node).dtype == np.int32  # 64-bit ints do not render in Slicer
    boolean = node_from_array(np.ones((3, 3, 3), bool), np.eye(4), scene=scene)
    assert array_from_node(boolean).dtype == np.uint8


@pytest.mark.parametrize("bad, message", [
    (np.array([[1, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), "shear"),
    (np.diag([1.0, 0.0, 1.0, 1.0]), "singular"),
    (np.full((4, 4), np.nan), "finite"),
    (np.eye(3), "4x4"),
])
def test_affines_slicer_cannot_hold_are_refused(scene, bad, message):
    with pytest.raises(ValueError, match=message):
        node_from_array(np.zeros((3, 3, 3), np.float32), bad, scene=scene)


def test_vector_volumes_are_refused_with_a_clear_error(scene, tmp_path):
    rgb = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "colour photo")
    slicer.util.updateVolumeFromArray(rgb, np.zeros((4, 5, 6, 3), np.uint8))
    with pytest.raises(ValueError, match="single-component 3-D"):
        write_node(rgb, tmp_path / "x.nii.gz")
    assert not (tmp_path / "x.nii.gz").exists()


def test_synthetic_tag_is_idempotent_and_visible(scene):
    node = node_from_array(np.zeros((3, 3, 3), np.float32), np.eye(4), name="sample", scene=scene,
                                synthetic=True)
    tag_synthetic(node)
    assert node.GetName() == "SYNTHETIC sample"
    assert node.GetAttribute("VentricleSynth.Synthetic") == "1" and is_synthetic(node)
    plain = node_from_array(np.zeros((3, 3, 3), np.float32), np.eye(4), name="patient", scene=scene)
    assert not is_synthetic(plain) and plain.GetName() == "patient"


def test_scene_is_required_headless():
    if getattr(slicer, "mrmlScene", None) is not None:
        pytest.skip("running inside Slicer")
    with pytest.raises(RuntimeError, match="scene"):
        node_from_array(np.zeros((3, 3, 3), np.float32), np.eye(4))
