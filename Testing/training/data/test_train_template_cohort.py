"""The template cohort: warps, ventricle resizing to a requested volume, and the `data` stage end to end."""

import csv
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.data.template_cohort import TemplateCohort, TemplateCohortSettings, sample_targets
from training.data.templates import build_label_map, load_committed
from training.data.warps import random_velocity
from VentricleSynthLib.imaging.flows import integrate_velocity
from VentricleSynthLib.imaging.geometry import ras_grid
from VentricleSynthLib.io import atomic
from VentricleSynthLib.io.nnunet_raw import list_cases, load_case, read_dataset_json
from VentricleSynthLib.labels import LABELS, VENTRICLE_LABELS

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def template():
    return load_committed()


@pytest.fixture(scope="module")
def tiny_cohort(template):
    return TemplateCohort(template, TemplateCohortSettings((4.0, 4.0, 4.0), (40, 48, 40)))


def test_committed_template_has_every_schema_label_and_t1_contrast(template):
    assert set(np.unique(template.label).tolist()) == set(LABELS)
    mean = {name: template.t1[np.isin(template.label, labs)].mean()
            for name, labs in {"wm": (2, 41), "gm": (3, 42), "vent": (4, 43)}.items()}
    assert mean["wm"] > mean["gm"] > mean["vent"]
    # left structures sit at negative x (RAS)
    ijk = np.argwhere(template.label == 4).mean(axis=0)
    assert (template.affine[:3, :3] @ ijk + template.affine[:3, 3])[0] < 0


def test_build_label_map_fills_unlabelled_brain_by_intensity():
    t1 = np.zeros((20, 10, 10), np.float32)
    affine = np.eye(4)
    affine[0, 3] = -10.0  # x = -10 .. 9: left half at negative x
    atlas = np.zeros(t1.shape, np.int16)
    mask = np.zeros(t1.shape, bool)
    mask[2:18, 2:8, 2:8] = True
    atlas[2:4, 2:8, 2:8], t1[2:4] = 3, 60   # cortex
    atlas[16:18, 2:8, 2:8], t1[16:18] = 42, 60
    atlas[9:11, 4:6, 4:6] = 4               # lateral ventricles, dark
    atlas[11:12, 4:6, 4:6] = 43
    t1[4:16] = 90                            # unlabelled bright -> white matter
    t1[9:12, 4:6, 4:6] = 20
    t1[5, 2:8, 2:8] = 25                     # unlabelled dark -> CSF
    label = build_label_map(t1, mask, atlas, affine)
    assert np.all(label[~mask] == 0) and np.all(label[mask] > 0)
    assert np.all(label[5, 2:8, 2:8] == 24)
    assert np.all(label[6:9, 2:8, 2:8] == 2)    # left (x < 0)
    assert np.all(label[12:16, 2:8, 2:8] == 41)  # right


def test_integrated_random_warp_is_smooth_and_folding_free():
    grid = ras_grid(4.0, (24, 24, 24), (0, 0, 0))
    rng = np.random.default_rng(0)
    disp = integrate_velocity(random_velocity(grid, rng, 4.0), grid)
    assert np.abs(disp).max() > 1.0  # it moves things
    grads = [np.gradient(disp[c], 4.0) for c in range(3)]
    jac = np.empty((3, 3) + disp.shape[1:])
    for i in range(3):
        for j in range(3):
            jac[i, j] = grads[i][j] + (i == j)
    det = np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))
    assert det.min() > 0
    assert np.allclose(integrate_velocity(np.zeros_like(disp), grid), 0)


@pytest.mark.parametrize("target_ml", [9.0, 25.0, 70.0, 140.0])
def test_cases_reach_the_requested_ventricle_volume(tiny_cohort, target_ml):
    case = tiny_cohort.make_case(target_ml, np.random.default_rng(int(target_ml)))
    assert abs(case["ventricle_ml"] - target_ml) <= max(0.05 * target_ml, 1.0)
    assert case["label"].shape == (40, 48, 40) and case["image"].min() >= 0 and case["image"].max() <= 1
    assert set(VENTRICLE_LABELS[:2]) <= set(np.unique(case["label"]).tolist())


def test_same_seed_same_case_other_seed_other_case(tiny_cohort):
    a = tiny_cohort.make_case(30.0, np.random.default_rng([1, 2]))
    b = tiny_cohort.make_case(30.0, np.random.default_rng([1, 2]))
    c = tiny_cohort.make_case(30.0, np.random.default_rng([1, 3]))
    assert np.array_equal(a["label"], b["label"]) and np.array_equal(a["image"], b["image"])
    assert not np.array_equal(a["label"], c["label"])


def test_target_distributions():
    rng = np.random.default_rng(0)
    natural = sample_targets("natural", 2000, rng)
    enlarged = sample_targets("enlarged", 2000, rng)
    assert 0.6 < np.mean((natural >= 10) & (natural <= 40)) and natural.max() > 100
    assert enlarged.min() >= 60 and enlarged.max() <= 150 and abs(np.median(enlarged) - 105) < 5
    with pytest.raises(ValueError):
        sample_targets("bogus", 3, rng)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    done = subprocess.run([sys.executable, str(REPO / "training" / "train.py"), "data", "--config", "tiny",
                           "--work", str(work)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return work / "data"


def test_data_stage_writes_nnunet_datasets_that_meet_the_acceptance(tiny_data):
    for dist, count in (("natural", 24), ("enlarged", 8)):
        root = tiny_data / dist
        dataset = read_dataset_json(root)
        assert dataset["numTraining"] == count and dataset["file_ending"] == ".nii.gz"
        assert sorted(dataset["labels"].values()) == list(range(len(LABELS)))
        assert len(list_cases(root)) == count and (root / "montage.png").stat().st_size > 10_000
        assert "McGill" in (root / "COPYING").read_text()
        rows = list(csv.DictReader((root / "cases.csv").open()))
        assert len(rows) == count
        for row in rows:
            target, got = float(row["target_ml"]), float(row["ventricle_ml"])
            assert abs(got - target) <= max(0.05 * target, 1.0), row
            image, label = load_case(root, row["case"], dataset)
            assert abs(float(np.isin(label.array, VENTRICLE_LABELS).sum()) * 0.064 - got) < 1e-3
            mean = lambda labs: image.array[np.isin(label.array, labs)].mean()  # noqa: E731
            assert mean((2, 41)) > mean((3, 42)) > mean(VENTRICLE_LABELS), row["case"]
        if dist == "enlarged":
            assert all(60 <= float(r["target_ml"]) <= 150 and r["split"] == "holdout" for r in rows)
        else:
            assert {r["split"] for r in rows} == {"train", "val"}


def test_data_stage_resumes_and_reproduces(tiny_data, tmp_path):
    root = tiny_data / "enlarged"
    case = "enlarged_0003"
    image = root / "imagesTr" / f"{case}_0000.nii.gz"
    before = _digest(image)
    image.unlink()
    (root / "records" / f"{case}.json").unlink()
    untouched = root / "imagesTr" / "enlarged_0004_0000.nii.gz"
    mtime = untouched.stat().st_mtime_ns
    dead = subprocess.Popen(["true"])
    dead.wait()
    tag = f"tmp-{atomic._host()}-{dead.pid}-k1ll3d_x"  # io.atomic's temporary of a writer no longer running
    partials = [root / "imagesTr" / f".{case}_0000.nii.gz.{tag}.nii.gz", root / "records" / f".{case}.json.{tag}.json"]
    for partial in partials:  # what a kill during an atomic write leaves
        partial.write_bytes(b"half")
    done = subprocess.run([sys.executable, str(REPO / "training" / "train.py"), "data", "--config", "tiny",
                           "--work", str(tiny_data.parent), "--distributions", "enlarged"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert _digest(image) == before  # rebuilt identically from its seed
    assert untouched.stat().st_mtime_ns == mtime  # complete cases are skipped
    assert not any(p.exists() for p in partials)  # the killed run's partial files are gone


def test_train_py_bad_config_is_one_error_line(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "training" / "train.py"), "data", "--config", "nope",
                           "--work", str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode != 0
    assert done.stderr.startswith("error:") and len(done.stderr.strip().splitlines()) == 1
