"""The nnU-Net ventricle segmenter at tiny scale: `VentricleSynthLib.segmentation` (any orientation in, label map
on the input grid out, JSON report, bad inputs refused); the `segmenter` stage's own tests (export, plan, train,
bundle, resume) are in Testing/training/segmenter/.

The session fixture `tiny_segmenter` (conftest) builds a reduced tiny cohort and trains a bundle for a handful
of iterations with a near-zero learning rate: the network stays close to its random initialisation, so its
output is an image-dependent but meaningless label map. These tests check the plumbing (axis
order against nnU-Net's own reader, geometry, label numbers, volumes, bundle integrity, resume),
not segmentation quality.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
from testing_helpers import TRAIN_ENV

from VentricleSynthLib.bundles import format as bundles
from VentricleSynthLib.errors import OutputError
from VentricleSynthLib.io.nifti import Volume, load_image, load_label_map, save_volume
from VentricleSynthLib.io.nnunet_raw import image_path
from VentricleSynthLib.labels import LABELS, VENTRICLE_LABELS
from VentricleSynthLib.segmentation.decision import (
    SEGMENTER_LABELS,
    from_segmenter_indices,
    labels_from_outputs,
    to_segmenter_indices,
)
from VentricleSynthLib.segmentation.files import segment_file
from VentricleSynthLib.segmentation.input_checks import UnsuitableImageError, check_input, output_checks
from VentricleSynthLib.segmentation.partial_volume import BOUNDARIES
from VentricleSynthLib.segmentation.predictor import Segmenter, get_segmenter
from VentricleSynthLib.volumes import voxel_volume_ml

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


# --- no model needed ----------------------------------------------------------------------------------

def test_label_tables_map_exactly_the_six_ventricles():
    every = np.asarray(LABELS, np.int16)
    idx = to_segmenter_indices(every)
    assert {int(l): int(i) for l, i in zip(every, idx) if i} == {4: 1, 43: 2, 5: 3, 44: 4, 14: 5, 15: 6}
    assert np.array_equal(from_segmenter_indices(np.arange(7)), np.asarray(SEGMENTER_LABELS))
    vent = np.asarray(VENTRICLE_LABELS * 3, np.int16).reshape(2, 3, 3)
    assert np.array_equal(from_segmenter_indices(to_segmenter_indices(vent)), vent)
    with pytest.raises(ValueError):
        from_segmenter_indices(np.array([7]))


def test_the_union_decides_ventricle_and_the_best_label_names_it():
    """Three voxels: a small-label voxel split between two labels, a background voxel, a clear lateral."""
    softmax = np.array([[0.40, 0.80, 0.05],  # background
                        [0.25, 0.10, 0.90],  # left lateral
                        [0.00, 0.05, 0.05],
                        [0.00, 0.00, 0.00],
                        [0.00, 0.00, 0.00],
                        [0.35, 0.05, 0.00],  # 3rd
                        [0.00, 0.00, 0.00]])
    # union 0.60: a ventricle voxel (argmax over all seven would call it background), named 3rd by its best label
    assert labels_from_outputs(softmax, union_head=False).tolist() == [14, 0, 4]
    regions = np.array([[0.20, 0.90, 0.95],  # the union head is a training target only...
                        [0.20, 0.20, 0.90],
                        [0.05, 0.05, 0.10],
                        [0.00, 0.00, 0.00],
                        [0.00, 0.00, 0.00],
                        [0.60, 0.45, 0.00],  # ...the most likely label region decides and names the voxel
                        [0.00, 0.00, 0.00]])
    assert labels_from_outputs(regions, union_head=True).tolist() == [14, 0, 4]


def _head(shape=(60, 72, 60), spacing=(3.0, 3.0, 3.0)) -> Volume:
    ijk = np.indices(shape).astype(np.float32)
    centre = (np.asarray(shape) - 1) / 2
    r = np.sqrt((((ijk - centre[:, None, None, None]) / (np.asarray(shape)[:, None, None, None] / 2.3)) ** 2).sum(0))
    img = np.where(r < 0.9, 100.0, 0.0) + np.random.default_rng(0).normal(0, 3, shape)
    return Volume(img.astype(np.float32), np.diag([*spacing, 1.0]))


def test_check_input_accepts_a_t1_like_head_and_warns_on_3mm():
    assert check_input(_head(spacing=(1.5, 1.5, 1.5))) == []
    warnings = check_input(_head((100, 120, 40), spacing=(1.0, 1.0, 3.5)))
    assert len(warnings) == 1 and "3.5 mm" in warnings[0]


def test_check_input_refuses_ct_label_maps_thick_slices_and_slabs():
    head = _head()
    ct = Volume(np.where(head.array > 50, 40.0, -1024.0).astype(np.float32) + head.array * 0.01, head.affine)
    with pytest.raises(UnsuitableImageError, match="CT"):
        check_input(ct)
    labels = Volume(np.where(head.array > 50, 2, 0).astype(np.int16), head.affine)
    with pytest.raises(UnsuitableImageError, match="label map"):
        check_input(labels)
    stack = Volume(_head((200, 240, 20)).array, np.diag([0.9, 0.9, 6.0, 1.0]))  # 2-D slices 6 mm apart
    with pytest.raises(UnsuitableImageError, match="6.0 mm"):
        check_input(stack)
    warnings = check_input(stack, allow_thick_slices=True)
    assert any("unreliable" in w for w in warnings)
    slab = Volume(_head((100, 100, 20)).array, np.diag([1.0, 1.0, 2.0, 1.0]))  # 40 mm thick slab
    with pytest.raises(UnsuitableImageError, match="40 mm"):
        check_input(slab)


def test_output_checks_warn_on_no_ventricles_the_field_of_view_edge_and_implausible_volumes():
    vent = np.zeros((20, 20, 20), np.int64)
    assert output_checks(vent, 0.0) == ["no ventricles found: is this a brain MRI?"]
    vent[8:12, 8:12, 8:12] = 1
    assert output_checks(vent, 30.0) == []
    vent[0, 8, 8] = 1
    assert any("edge of the analysed field of view" in w for w in output_checks(vent, 30.0))
    assert any("implausibly large" in w for w in output_checks(vent, 5000.0))


def test_bad_inputs_fail_before_any_model_is_needed(tmp_path):
    head = _head()
    ct = Volume(np.where(head.array > 50, 40.0, -1024.0).astype(np.float32), head.affine)
    save_volume(ct, tmp_path / "ct.nii.gz")
    with pytest.raises(UnsuitableImageError):
        segment_file(tmp_path / "ct.nii.gz", tmp_path / "seg.nii.gz", models=tmp_path / "no_models")
    with pytest.raises(OutputError):
        segment_file(tmp_path / "ct.nii.gz", tmp_path / "seg.txt", models=tmp_path / "no_models")
    save_volume(head, tmp_path / "head.nii.gz")
    with pytest.raises(bundles.BundleError, match="not found"):
        segment_file(tmp_path / "head.nii.gz", tmp_path / "seg.nii.gz", models=tmp_path / "no_models")
    assert not (tmp_path / "seg.nii.gz").exists()


# --- the trained tiny bundle ---------------------------------------------------------------------------

def test_tampered_bundle_is_refused(tiny_segmenter, tmp_path):
    copy = tmp_path / "segmenter"
    shutil.copytree(tiny_segmenter["bundle"], copy)
    checkpoint = next(copy.rglob("checkpoint_final.pth"))
    data = bytearray(checkpoint.read_bytes())
    data[-100] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(bundles.BundleError, match="checksum"):
        Segmenter(copy, device="cpu")


def test_axis_order_matches_nnunets_own_reader(tiny_segmenter):
    """Our (x, y, z) arrays must reach the network as nnU-Net's SimpleITK reader would give them."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    seg = Segmenter(tiny_segmenter["bundle"], device="cpu")
    raw = tiny_segmenter["work"] / "nnunet" / "raw" / "Dataset501_Ventricles"
    path = image_path(raw, "natural_0000")
    ours = seg.predict_probabilities(load_image(path).array)
    data, props = SimpleITKIO().read_images([str(path)])
    _, theirs = seg.predictor.predict_single_npy_array(data, props, None, None, True)
    theirs = np.asarray(theirs).transpose(0, 3, 2, 1)
    assert ours.shape == (7, 40, 48, 40)
    assert np.allclose(ours, theirs, atol=1e-5)
    swapped = seg.predict_probabilities(load_image(path).array[::-1].copy())  # the net is not symmetric
    assert not np.allclose(swapped[:, ::-1], ours, atol=1e-3)


def _reoriented(volume: Volume, spacing=2.0) -> Volume:
    """The same image content on an LPS, axis-permuted grid with `spacing` mm voxels (exact nearest copy)."""
    from VentricleSynthLib.imaging.geometry import Grid, resample

    arr = volume.array
    perm = arr.transpose(1, 2, 0)[::-1, ::-1, :]
    affine = np.zeros((4, 4))
    # new axis 0 = old y flipped, axis 1 = old z flipped, axis 2 = old x
    affine[:3, 0] = -volume.affine[:3, 1]
    affine[:3, 1] = -volume.affine[:3, 2]
    affine[:3, 2] = volume.affine[:3, 0]
    origin_old = np.array([0, arr.shape[1] - 1, arr.shape[2] - 1, 1.0])
    affine[:3, 3] = (volume.affine @ origin_old)[:3]
    affine[3, 3] = 1
    coarse = Volume(np.ascontiguousarray(perm), affine)
    if spacing is None:
        return coarse
    factor = float(volume.spacing[0] / spacing)
    shape = tuple(int(round(n * factor)) for n in coarse.shape)
    fine_affine = coarse.affine.copy()
    fine_affine[:3, :3] = coarse.affine[:3, :3] / factor
    fine_affine[:3, 3] = coarse.affine[:3, 3] - coarse.affine[:3, :3] @ np.full(3, 0.5 - 0.5 / factor)
    fine = resample(coarse.array, coarse.affine, Grid(shape, fine_affine), order=1)
    return Volume(fine.astype(np.float32), fine_affine)


def test_segment_file_any_orientation_lands_on_the_input_grid(tiny_segmenter, tmp_path):
    root = tiny_segmenter["work"] / "data" / "enlarged"
    case = image_path(root, "enlarged_0000")
    original = load_image(case)
    flipped = _reoriented(original, spacing=None)
    assert flipped.axcodes != original.axcodes
    save_volume(flipped, tmp_path / "lps.nii.gz")
    r1 = segment_file(case, tmp_path / "a.nii.gz", device="cpu", models=tiny_segmenter["bundle"].parent)
    r2 = segment_file(tmp_path / "lps.nii.gz", tmp_path / "b.nii.gz", device="cpu",
                      models=tiny_segmenter["bundle"].parent)
    a, b = (load_label_map(tmp_path / name, allow_empty=True) for name in ("a.nii.gz", "b.nii.gz"))
    assert a.shape == original.shape and np.allclose(a.affine, original.affine)
    assert set(np.unique(a.array)) <= set(SEGMENTER_LABELS) and r1["ventricle_ml"] > 0
    assert b.shape == flipped.shape and np.allclose(b.affine, flipped.affine)
    back = b.array.transpose(2, 0, 1)[:, ::-1, ::-1]  # undo the permutation: same world voxels
    assert np.mean(back == a.array) > 0.995
    assert r2["ventricle_ml"] == pytest.approx(r1["ventricle_ml"], rel=0.02)
    # the report describes the written file, not a constant
    for result, label in ((r1, a), (r2, b)):
        count = np.isin(label.array, VENTRICLE_LABELS).sum()
        assert result["ventricle_ml"] == pytest.approx(count * voxel_volume_ml(label.affine), abs=1e-3)
        assert sum(result["per_label_ml"].values()) == pytest.approx(result["ventricle_ml"], abs=1e-2)
        assert result["seconds"] > 0 and isinstance(result["warnings"], list)
        assert result["model"]["sha256"] == bundles.model_id(tiny_segmenter["bundle"])["sha256"]


def test_finer_input_grid_gets_a_finer_label_map(tiny_segmenter, tmp_path):
    root = tiny_segmenter["work"] / "data" / "enlarged"
    original = load_image(image_path(root, "enlarged_0001"))
    fine = _reoriented(original, spacing=2.0)
    save_volume(fine, tmp_path / "fine.nii.gz")
    result = segment_file(tmp_path / "fine.nii.gz", tmp_path / "fine_seg.nii.gz", device="cpu",
                          models=tiny_segmenter["bundle"].parent)
    seg = load_label_map(tmp_path / "fine_seg.nii.gz", allow_empty=True)
    assert seg.shape == fine.shape and np.allclose(seg.affine, fine.affine)
    count = np.isin(seg.array, VENTRICLE_LABELS).sum()
    assert result["ventricle_ml"] == pytest.approx(count * 0.008, abs=1e-3)


def test_thick_slices_refused_or_warned_in_json(tiny_segmenter, tmp_path):
    from VentricleSynthLib.imaging.geometry import Grid, resample

    root = tiny_segmenter["work"] / "data" / "enlarged"
    original = load_image(image_path(root, "enlarged_0000"))
    affine = original.affine.copy()
    affine[:3, 2] *= 1.5  # 6 mm slices
    shape = (40, 48, 27)
    thick = Volume(resample(original.array, original.affine, Grid(shape, affine)), affine)
    save_volume(thick, tmp_path / "thick.nii.gz")
    with pytest.raises(UnsuitableImageError, match="thick"):
        segment_file(tmp_path / "thick.nii.gz", tmp_path / "t.nii.gz", models=tiny_segmenter["bundle"].parent)
    result = segment_file(tmp_path / "thick.nii.gz", tmp_path / "t.nii.gz", models=tiny_segmenter["bundle"].parent,
                          allow_thick_slices=True)
    assert any("6.0 mm" in w for w in result["warnings"])


def test_predictor_is_built_once_per_process(tiny_segmenter):
    a = get_segmenter(tiny_segmenter["bundle"].parent, "cpu")
    b = get_segmenter(tiny_segmenter["bundle"].parent, "cpu", tta=True)
    assert a is b and b.tta is True
    get_segmenter(tiny_segmenter["bundle"].parent, "cpu", tta=False)


def test_mirroring_asked_of_a_model_trained_without_flips_is_not_applied_and_said(tiny_segmenter, tmp_path):
    case = image_path(tiny_segmenter["work"] / "data" / "enlarged", "enlarged_0000")
    plain = segment_file(case, tmp_path / "a.nii.gz", device="cpu", models=tiny_segmenter["bundle"].parent)
    asked = segment_file(case, tmp_path / "b.nii.gz", device="cpu", tta=True, models=tiny_segmenter["bundle"].parent)
    assert asked["tta"] is False and any("mirroring" in w for w in asked["warnings"])
    assert not any("mirroring" in w for w in plain["warnings"])
    assert np.array_equal(load_label_map(tmp_path / "a.nii.gz", allow_empty=True).array,
                          load_label_map(tmp_path / "b.nii.gz", allow_empty=True).array)


def test_segment_command_prints_exactly_one_json_line(tiny_segmenter, tmp_path):
    case = image_path(tiny_segmenter["work"] / "data" / "enlarged", "enlarged_0000")
    code = ("import sys, argparse; from VentricleSynthLib.segmentation.files import segment_command; "
            "sys.exit(segment_command(argparse.Namespace(image=sys.argv[1], out=sys.argv[2], device='cpu', "
            "tta=False, models=sys.argv[3])))")
    done = subprocess.run([sys.executable, "-c", code, str(case), str(tmp_path / "s.nii.gz"),
                           str(tiny_segmenter["bundle"].parent)], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=TRAIN_ENV)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    result = json.loads(lines[0])
    assert {"ventricle_ml", "per_label_ml", "seconds", "warnings"} <= set(result)
    assert set(result["per_label_ml"]) == {"Left-Lateral-Ventricle", "Right-Lateral-Ventricle", "Left-Inf-Lat-Vent",
                                           "Right-Inf-Lat-Vent", "3rd-Ventricle", "4th-Ventricle"}
    assert (tmp_path / "s.nii.gz").is_file()
    # the same call in-process with an argparse Namespace, as cli.py will make it
    from VentricleSynthLib.segmentation.files import segment_command

    assert segment_command(Namespace(image=str(case), out=str(tmp_path / "s2.nii.gz"), device="cpu", tta=False,
                                     models=str(tiny_segmenter["bundle"].parent))) == 0

# --- the bundled cpu segmenter (quality; skipped until its bundle is committed) ------------------------

BUNDLED = REPO / "VentricleSynth" / "Resources" / "Models"


@pytest.mark.skipif(not (BUNDLED / "segmenter" / "config.json").is_file(), reason="no bundled segmenter")
def test_bundled_segmenter_finds_the_templates_ventricles_on_a_1mm_grid_with_skull(tmp_path):
    """The committed ICBM template (skull on, never a training case as such) resampled to 1 mm RAS and
    to 1 mm LPS: the bundled model's ventricles overlap the template's own labels and match their volume,
    whatever the input orientation."""
    from training.data.templates import committed_on_grid
    from VentricleSynthLib.metrics import dice

    image, label = committed_on_grid((160, 192, 160), 1.0)
    truth = np.isin(label, VENTRICLE_LABELS)
    centre = image.affine @ np.array([*(np.array(image.shape) - 1) / 2.0, 1.0])
    save_volume(image, tmp_path / "ras.nii.gz")
    save_volume(_reoriented(image, spacing=None), tmp_path / "lps.nii.gz")
    results = {}
    for name in ("ras", "lps"):
        results[name] = segment_file(tmp_path / f"{name}.nii.gz", tmp_path / f"{name}_seg.nii.gz", device="cpu",
                                     models=BUNDLED)
    seg = load_label_map(tmp_path / "ras_seg.nii.gz", allow_empty=True)
    found = np.isin(seg.array, VENTRICLE_LABELS)
    assert seg.shape == image.shape and np.allclose(seg.affine, image.affine)
    assert dice(found, truth) >= 0.75, dice(found, truth)
    truth_ml = truth.sum() / 1000.0
    assert results["ras"]["ventricle_ml"] == pytest.approx(truth_ml, rel=0.25), (results["ras"], truth_ml)
    assert results["lps"]["ventricle_ml"] == pytest.approx(results["ras"]["ventricle_ml"], rel=0.03)
    # left is left: the left lateral ventricle label lies at negative RAS x (the template is centred)
    ijk = np.argwhere(seg.array == 4)
    assert ijk.size and (seg.affine @ np.c_[ijk, np.ones(len(ijk))].T)[0].mean() < centre[0]
    # the bundle's boundary rule is stated and the partial-volume (soft) volume reported beside the voxel count,
    # per label summing to the total, and the same whatever the storage order
    for result in results.values():
        assert result["boundary"] == BOUNDARIES["network"]  # the bundled model keeps its own boundary
        soft = result["per_label_soft_ml"]
        assert set(soft) == set(result["per_label_ml"])
        assert sum(soft.values()) == pytest.approx(result["ventricle_soft_ml"], abs=0.01)
        assert 0.5 * result["ventricle_ml"] < result["ventricle_soft_ml"] < 1.1 * result["ventricle_ml"]
    assert results["lps"]["ventricle_soft_ml"] == pytest.approx(results["ras"]["ventricle_soft_ml"], rel=0.01)
    # a bundle that declares the half-voxel convention gets its rim re-decided: the count moves towards the soft
    # volume, the soft volume stays
    half_bundle = tmp_path / "models" / "segmenter"
    shutil.copytree(BUNDLED / "segmenter", half_bundle)
    config = bundles.read_config(half_bundle)

    def rewrite(config):
        (half_bundle / "config.json").write_text(json.dumps(config))
        bundles.write_manifest(half_bundle)

    config["decision"] = {**(config.get("decision") or {}), "boundary": "half"}
    rewrite(config)
    half = segment_file(tmp_path / "ras.nii.gz", tmp_path / "half_seg.nii.gz", device="cpu", models=half_bundle.parent)
    assert half["boundary"] == BOUNDARIES["half"]
    assert half["ventricle_soft_ml"] == pytest.approx(results["ras"]["ventricle_soft_ml"], rel=1e-3)
    assert abs(half["ventricle_ml"] - half["ventricle_soft_ml"]) < abs(results["ras"]["ventricle_ml"]
                                                                       - results["ras"]["ventricle_soft_ml"])
    config["decision"]["boundary"] = "inside"
    rewrite(config)
    with pytest.raises(bundles.BundleError, match="boundary"):
        Segmenter(half_bundle, device="cpu")
    # a bundle trained on T1 alone reads a mirrored view too (segmentation/contrast.py); one trained with the random
    # appearance reads any contrast as given
    config["decision"]["boundary"] = "network"
    rewrite(config)
    assert Segmenter(half_bundle, device="cpu").t1_only  # the bundled model was trained on T1 images alone
    config["training"]["appearance"] = 0.6
    rewrite(config)
    assert not Segmenter(half_bundle, device="cpu").t1_only
