# Over 400 lines: every test here builds on the same synthetic subjects (the helpers at the top).
"""User data import (training/data/user_import.py, case_patterns.py, import_report.py): discovery, validation,
resampling, nnU-Net raw output."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pytest

from training.data.case_patterns import discover_pairs
from training.data.import_report import ImportReport
from training.data.user_import import import_dataset, sanitise_case_id
from VentricleSynthLib.errors import ConfigError, DatasetError
from VentricleSynthLib.imaging.profile import Profile
from VentricleSynthLib.io import atomic, nnunet_raw
from VentricleSynthLib.io.nifti import Volume
from VentricleSynthLib.labels import CEREBRA, LABELS, VENTRICLE_LABELS, LabelMapping
from VentricleSynthLib.labels import mapping_from_spec as resolve_mapping
from VentricleSynthLib.volumes import tiv_ml, ventricle_volume_ml, voxel_volume_ml

SHAPE = (30, 36, 30)
SPACING = 2.0
SAME = Profile("same", (2.0, 2.0, 2.0), (32, 40, 32))  # the input's spacing: resampling is (nearly) exact
COARSE = Profile("coarse", (4.0, 4.0, 4.0), (16, 20, 16))
INTENSITY = {0: 0.0, 24: 30.0, 3: 80.0, 42: 80.0, 2: 110.0, 41: 110.0, 4: 20.0, 43: 20.0, 14: 25.0}


def _affine(shift=(0.0, 0.0, 0.0)) -> np.ndarray:
    a = np.diag([SPACING, SPACING, SPACING, 1.0])
    a[:3, 3] = -SPACING * (np.asarray(SHAPE) - 1) / 2 + np.asarray(shift)
    return a


def make_label(k: int = 0) -> np.ndarray:
    """Nested blobs: CSF shell > cortex > white matter (L/R) > lateral ventricles (size grows with k) + 3rd."""
    ijk = np.indices(SHAPE).astype(float)
    c = (np.asarray(SHAPE) - 1) / 2
    r = np.sqrt(sum(((ijk[i] - c[i]) / rad) ** 2 for i, rad in enumerate((12, 15, 12))))
    right = ijk[0] > c[0]  # RAS: higher i is right
    lab = np.zeros(SHAPE, np.int16)
    lab[r < 1.0] = 24
    lab[r < 0.92] = np.where(right, 42, 3)[r < 0.92]
    lab[r < 0.78] = np.where(right, 41, 2)[r < 0.78]
    lab[10:13, 13:21 + k, 13:17] = 4
    lab[17:20, 13:21 + k, 13:17] = 43
    lab[14:16, 15:19, 10:13] = 14
    return lab


def make_image(label: np.ndarray, seed: int = 0) -> np.ndarray:
    img = np.zeros(label.shape, np.float32)
    for lab, value in INTENSITY.items():
        img[label == lab] = value
    return (img + np.random.default_rng(seed).normal(0, 2.0, label.shape)).astype(np.float32)


def save(path, array, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), _affine() if affine is None else affine), str(path))
    return path


def write_pair(root, case, image_pattern, label_pattern, k=0, label=None):
    label = make_label(k) if label is None else label
    save(root / image_pattern.replace("{case}", case), make_image(label, seed=k))
    save(root / label_pattern.replace("{case}", case), label)
    return label


def hash_tree(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def original_ventricle_ml(k: int = 0) -> float:
    return ventricle_volume_ml(make_label(k), _affine())


NESTED = ("{case}/mri/T1.nii.gz", "{case}/mri/aseg.nii.gz")
FLAT = ("images/{case}_0000.nii.gz", "labels/{case}.nii.gz")


# ---------------------------------------------------------------------------------------------- discovery


def test_discover_nested_pattern_and_missing_partners(tmp_path):
    for i, case in enumerate(["sub-01", "sub-02", "sub-03"]):
        write_pair(tmp_path, case, *NESTED, k=i)
    save(tmp_path / "sub-04/mri/T1.nii.gz", make_image(make_label()))  # no label map
    save(tmp_path / "sub-05/mri/aseg.nii.gz", make_label())  # no image
    save(tmp_path / "sub-06/mri/brain.nii.gz", make_label())  # matches neither pattern

    pairs, report = discover_pairs(tmp_path, *NESTED)

    assert list(pairs) == ["sub-01", "sub-02", "sub-03"]
    assert pairs["sub-02"] == (tmp_path / "sub-02/mri/T1.nii.gz", tmp_path / "sub-02/mri/aseg.nii.gz")
    assert report.missing_label == ["sub-04"]
    assert report.missing_image == ["sub-05"]
    assert set(report.found) == set(pairs) and not report.skipped
    d = report.to_dict()
    assert d["counts"] == {"found": 3, "imported": 0, "skipped": 0, "missing_image": 1, "missing_label": 1}
    json.dumps(d)  # JSON-ready
    md = report.to_markdown()
    assert "sub-04" in md and "sub-05" in md and "Image without label map" in md


def test_discover_flat_pattern(tmp_path):
    for i, case in enumerate(["a1", "b_2", "c-3"]):
        write_pair(tmp_path, case, *FLAT, k=i)
    save(tmp_path / "labels/d4.nii.gz", make_label())
    save(tmp_path / "images/.e5_0000.nii.gz", make_label())  # hidden: ignored
    pairs, report = discover_pairs(tmp_path, *FLAT)
    assert list(pairs) == ["a1", "b_2", "c-3"]
    assert pairs["b_2"][0].name == "b_2_0000.nii.gz" and pairs["b_2"][1].name == "b_2.nii.gz"
    assert report.missing_image == ["d4"] and report.missing_label == []


def test_discover_with_wildcards_and_ambiguity(tmp_path):
    pattern = ("site*/{case}_T1w.nii.gz", "site*/{case}_aseg.nii.gz")
    write_pair(tmp_path, "x01", *[p.replace("site*", "siteA") for p in pattern])
    write_pair(tmp_path, "x02", *[p.replace("site*", "siteB") for p in pattern])
    write_pair(tmp_path, "x03", *[p.replace("site*", "siteA") for p in pattern])
    save(tmp_path / "siteB/x03_T1w.nii.gz", make_image(make_label()))  # x03 has an image at two sites
    pairs, report = discover_pairs(tmp_path, *pattern)
    assert list(pairs) == ["x01", "x02"]
    assert pairs["x02"][0] == tmp_path / "siteB/x02_T1w.nii.gz"
    assert "ambiguous" in report.skipped["x03"] and "2 images" in report.skipped["x03"]


@pytest.mark.parametrize("image, label", [
    ("images/case.nii.gz", "labels/{case}.nii.gz"),  # no placeholder
    ("{case}/{case}.nii.gz", "labels/{case}.nii.gz"),  # two placeholders
    ("/abs/{case}.nii.gz", "labels/{case}.nii.gz"),  # absolute
    ("../{case}.nii.gz", "labels/{case}.nii.gz"),  # leaves the folder
])
def test_bad_patterns_are_config_errors(tmp_path, image, label):
    with pytest.raises(ConfigError):
        discover_pairs(tmp_path, image, label)


# ---------------------------------------------------------------------------------------------- import


def test_import_skips_bad_cases_and_imports_good_ones(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    write_pair(src, "good1", *FLAT, k=0)
    write_pair(src, "good2", *FLAT, k=2)
    bad_labels = make_label()
    bad_labels[2:4, 2:4, 2:4] = 99
    write_pair(src, "unknown", *FLAT, label=bad_labels)
    write_pair(src, "shifted", *FLAT)
    save(src / "labels/shifted.nii.gz", make_label(), _affine(shift=(4.0, 0.0, 0.0)))
    write_pair(src, "truncated", *FLAT)
    data = (src / "images/truncated_0000.nii.gz").read_bytes()
    (src / "images/truncated_0000.nii.gz").write_bytes(data[: len(data) // 2])
    save(src / "images/lonely_0000.nii.gz", make_image(make_label()))
    before = hash_tree(src)
    calls = []

    report = import_dataset(src, out, SAME, *FLAT, progress=lambda i, n, case: calls.append((i, n, case)))

    assert report.imported == ["good1", "good2"]
    assert set(report.skipped) == {"unknown", "shifted", "truncated"}
    assert "99" in report.skipped["unknown"] and "schema" in report.skipped["unknown"]
    assert "geometry" in report.skipped["shifted"]
    assert "truncated" in report.skipped["truncated"] or "corrupt" in report.skipped["truncated"]
    assert report.missing_label == ["lonely"]
    assert [c[0] for c in calls] == [1, 2, 3, 4, 5] and {c[1] for c in calls} == {5}
    assert {c[2] for c in calls} == {"good1", "good2", "unknown", "shifted", "truncated"}

    # the written dataset
    assert nnunet_raw.list_cases(out) == ["good1", "good2"]
    ds = nnunet_raw.read_dataset_json(out)
    assert ds["numTraining"] == 2 and ds["profile"] == "same" and ds["source"] == str(src)
    rows = nnunet_raw.read_csv(out / "cases.csv")
    assert list(rows[0]) == ["case", "target_ml", "ventricle_ml", "tiv_ml", "split"]
    assert [r["case"] for r in rows] == ["good1", "good2"]
    assert all(r["target_ml"] == "" for r in rows)
    assert float(rows[1]["ventricle_ml"]) == pytest.approx(original_ventricle_ml(2), abs=1e-3)
    assert float(rows[0]["tiv_ml"]) == pytest.approx(tiv_ml(make_label(0), _affine()), abs=1e-3)
    assert sorted(r["split"] for r in rows) == ["train", "val"]

    saved = json.loads((out / "import_report.json").read_text())
    assert saved["imported"] == ["good1", "good2"] and set(saved["skipped"]) == set(report.skipped)
    md = (out / "import_report.md").read_text()
    assert "truncated" in md and "geometry" in md and "good2" in md
    assert not list(out.rglob(".*"))  # no temp files left behind
    assert hash_tree(src) == before  # inputs untouched


@pytest.mark.parametrize("profile", [SAME, COARSE], ids=["same-spacing", "coarser"])
def test_written_cases_read_back_with_preserved_volumes(tmp_path, profile):
    src, out = tmp_path / "src", tmp_path / "out"
    for k in (0, 3):
        write_pair(src, f"c{k}", *NESTED, k=k)
    import_dataset(src, out, profile, *NESTED)
    s = profile.spacing[0]
    for k in (0, 3):
        image, label = nnunet_raw.load_case(out, f"c{k}")
        assert image.shape == label.shape == profile.shape
        np.testing.assert_allclose(label.spacing, profile.spacing)
        assert set(np.unique(label.array)) <= set(LABELS)
        assert 0.0 <= image.array.min() and image.array.max() <= 1.0
        # anatomy went along with the geometry: left ventricle (4) left of the right one (43) in world x
        x4 = (label.affine @ [*np.argwhere(label.array == 4).mean(0), 1])[0]
        x43 = (label.affine @ [*np.argwhere(label.array == 43).mean(0), 1])[0]
        assert x4 < 0 < x43
        # and the image stayed consistent with the label map: ventricles dark, white matter bright
        dark = image.array[np.isin(label.array, (4, 43))].mean()
        assert dark < image.array[np.isin(label.array, (2, 41))].mean() - 0.3

        orig = original_ventricle_ml(k)
        got = ventricle_volume_ml(label.array, label.affine)
        if profile is SAME:
            assert got == pytest.approx(orig, abs=voxel_volume_ml(label.affine))
        else:
            # nearest-neighbour error bound: each ventricle box may grow/shrink by half a profile
            # voxel on each side. Boxes: 4 and 43 are 6 x (16+2k) x 8 mm, the third ventricle 4 x 8 x 6 mm.
            def slack(a, b, c):
                return ((a + s) * (b + s) * (c + s) - a * b * c) / 1000.0
            bound = 2 * slack(6, 16 + 2 * k, 8) + slack(4, 8, 6)
            assert abs(got - orig) <= bound
            assert abs(got - orig) < 0.5 * orig
    rows = {r["case"]: r for r in nnunet_raw.read_csv(out / "cases.csv")}
    # cases.csv reports the original-resolution volumes, not the resampled ones
    assert float(rows["c3"]["ventricle_ml"]) == pytest.approx(original_ventricle_ml(3), abs=1e-3)
    assert float(rows["c3"]["ventricle_ml"]) > float(rows["c0"]["ventricle_ml"])


def test_nnunet_raw_round_trip(tmp_path):
    src, first, second = tmp_path / "src", tmp_path / "first", tmp_path / "second"
    for k, case in enumerate(["p1", "p2", "p3"]):
        write_pair(src, case, *NESTED, k=k)
    import_dataset(src, first, SAME, *NESTED)
    before = hash_tree(first)

    report = import_dataset(first, second, SAME)  # no patterns: dataset.json says it is nnU-Net raw

    assert report.kind == "nnunet" and report.imported == ["p1", "p2", "p3"]
    assert hash_tree(first) == before
    for case in report.imported:
        _, lab1 = nnunet_raw.load_case(first, case)
        _, lab2 = nnunet_raw.load_case(second, case)
        assert ventricle_volume_ml(lab2.array, lab2.affine) == pytest.approx(
            ventricle_volume_ml(lab1.array, lab1.affine), abs=voxel_volume_ml(lab2.affine))
        assert set(np.unique(lab2.array)) == set(np.unique(lab1.array))
    rows1 = nnunet_raw.read_csv(first / "cases.csv")
    rows2 = nnunet_raw.read_csv(second / "cases.csv")
    for r1, r2 in zip(rows1, rows2):
        assert r1["case"] == r2["case"]
        assert float(r2["ventricle_ml"]) == pytest.approx(float(r1["ventricle_ml"]), abs=0.01)


def test_nnunet_raw_with_label_names_only(tmp_path):
    """A third-party nnU-Net dataset whose dataset.json names FreeSurfer labels (no freesurfer_labels table)."""
    src, out = tmp_path / "Dataset001_x", tmp_path / "out"
    label = make_label()
    nnunet_raw.write_case(src, "ext_001", Volume(make_image(label), _affine()),
                          Volume(label, _affine()))
    ds = nnunet_raw.schema_dataset_json(1)
    del ds["freesurfer_labels"]
    atomic.write_json(src / "dataset.json", ds)
    report = import_dataset(src, out, SAME)
    assert report.imported == ["ext_001"]
    rows = nnunet_raw.read_csv(out / "cases.csv")
    assert float(rows[0]["ventricle_ml"]) == pytest.approx(original_ventricle_ml(), abs=1e-3)


def test_cerebra_mapping(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    schema = make_label()
    cerebra = np.zeros_like(schema)
    cerebra[schema == 43] = 41  # RH lateral ventricle
    cerebra[schema == 4] = 92  # LH lateral ventricle (41 + 51)
    cerebra[np.isin(schema, (42, 41))] = 30  # RH cortical parcel
    cerebra[np.isin(schema, (3, 2))] = 81  # LH cortical parcel
    cerebra[schema == 14] = 29  # third ventricle
    save(src / "img/atlas_T1.nii.gz", make_image(schema))
    save(src / "lab/atlas_labels.nii.gz", cerebra)
    patterns = ("img/{case}_T1.nii.gz", "lab/{case}_labels.nii.gz")

    with pytest.raises(DatasetError, match="no valid case"):  # 92 and 30 are not FreeSurfer numbers
        import_dataset(src, out, SAME, *patterns)
    assert not (out / "dataset.json").exists()

    report = import_dataset(src, out, SAME, *patterns, mapping=CEREBRA)
    assert report.imported == ["atlas"]
    _, label = nnunet_raw.load_case(out, "atlas")
    present = set(np.unique(label.array).tolist())
    assert {4, 43, 14, 3, 42} <= present and not present & {41, 92, 30, 81, 29}
    rows = nnunet_raw.read_csv(out / "cases.csv")
    assert float(rows[0]["ventricle_ml"]) == pytest.approx(original_ventricle_ml(), abs=1e-3)
    # the same by name, as train.py's --mapping passes it
    assert resolve_mapping("cerebra") is CEREBRA and resolve_mapping("freesurfer") is None


def test_csv_mapping(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    schema = make_label()
    custom = np.where(schema > 0, schema + 1000, 0).astype(np.int16)
    save(src / "s1/t1.nii.gz", make_image(schema))
    save(src / "s1/seg.nii.gz", custom)
    table = tmp_path / "map.csv"
    table.write_text("source,target\n0,0\n" + "".join(f"{v + 1000},{v}\n" for v in LABELS if v))
    report = import_dataset(src, out, SAME, "{case}/t1.nii.gz", "{case}/seg.nii.gz", mapping=str(table))
    assert report.imported == ["s1"]
    rows = nnunet_raw.read_csv(out / "cases.csv")
    assert float(rows[0]["ventricle_ml"]) == pytest.approx(original_ventricle_ml(), abs=1e-3)
    assert isinstance(resolve_mapping(table), LabelMapping)


def test_all_invalid_raises_dataset_error(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    write_pair(src, "a", *FLAT)
    save(src / "labels/a.nii.gz", make_label()[:, :, :20])  # wrong shape
    write_pair(src, "b", *FLAT)
    (src / "images/b_0000.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(DatasetError) as info:
        import_dataset(src, out, SAME, *FLAT)
    msg = str(info.value)
    assert "no valid case" in msg and "a:" in msg and "b:" in msg
    assert isinstance(info.value.report, ImportReport) and set(info.value.report.skipped) == {"a", "b"}
    assert not (out / "dataset.json").exists() and not (out / "imagesTr").exists()


def test_no_pairs_and_missing_patterns(tmp_path):
    src = tmp_path / "src"
    save(src / "images/a_0000.nii.gz", make_image(make_label()))
    with pytest.raises(DatasetError, match="no image/label pairs"):
        import_dataset(src, tmp_path / "out", SAME, *FLAT)
    with pytest.raises(ConfigError, match="pattern"):
        import_dataset(src, tmp_path / "out", SAME)  # plain folder needs patterns
    with pytest.raises(DatasetError, match="no such folder"):
        import_dataset(tmp_path / "nope", tmp_path / "out", SAME, *FLAT)


def test_out_dir_inside_or_equal_to_source_is_refused(tmp_path):
    src = tmp_path / "src"
    write_pair(src, "a", *FLAT)
    before = hash_tree(src)
    for out in (src, src / "derived", src / "images" / "x"):
        with pytest.raises(DatasetError, match="inside the source"):
            import_dataset(src, out, SAME, *FLAT)
    assert hash_tree(src) == before


def test_case_ids_sanitised_and_splits_seeded(tmp_path):
    src = tmp_path / "src"
    names = ["sub 01", "sub.02", "sub_03", "sub-04", "sub#05"]
    for k, case in enumerate(names):
        write_pair(src, case, *NESTED, k=k % 3)
    r1 = import_dataset(src, tmp_path / "o1", COARSE, *NESTED, split_seed=1, val_fraction=0.4)
    assert r1.imported == ["sub-04", "sub_01", "sub_02", "sub_03", "sub_05"]
    assert r1.renamed == {"sub 01": "sub_01", "sub.02": "sub_02", "sub#05": "sub_05"}
    assert sanitise_case_id("a/b c.d") == "a_b_c_d"
    splits1 = {r["case"]: r["split"] for r in nnunet_raw.read_csv(tmp_path / "o1/cases.csv")}
    assert sorted(splits1.values()).count("val") == 2

    r2 = import_dataset(src, tmp_path / "o2", COARSE, *NESTED, split_seed=1, val_fraction=0.4)
    splits2 = {r["case"]: r["split"] for r in nnunet_raw.read_csv(tmp_path / "o2/cases.csv")}
    assert splits1 == splits2 and r2.imported == r1.imported
    seen = set()
    for seed in range(8):
        rows = import_dataset(src, tmp_path / f"s{seed}", COARSE, *NESTED, split_seed=seed, val_fraction=0.4).cases
        seen.add(tuple(r["split"] for r in rows))
    assert len(seen) > 1  # the seed matters


def test_sanitised_collisions_get_unique_ids(tmp_path):
    src = tmp_path / "src"
    write_pair(src, "a.b", *NESTED)
    write_pair(src, "a_b", *NESTED, k=1)
    report = import_dataset(src, tmp_path / "out", COARSE, *NESTED)
    assert sorted(report.imported) == ["a_b", "a_b_2"]
    assert nnunet_raw.list_cases(tmp_path / "out") == ["a_b", "a_b_2"]


def test_reimport_replaces_previous_import_and_refuses_foreign_dataset(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    for case in ("a", "b", "c"):
        write_pair(src, case, *FLAT)
    import_dataset(src, out, COARSE, *FLAT)
    assert nnunet_raw.list_cases(out) == ["a", "b", "c"]
    (src / "images/c_0000.nii.gz").unlink()
    report = import_dataset(src, out, COARSE, *FLAT)
    assert report.imported == ["a", "b"]
    assert nnunet_raw.list_cases(out) == ["a", "b"]  # stale case c removed
    assert not nnunet_raw.label_path(out, "c").exists()
    assert nnunet_raw.read_dataset_json(out)["numTraining"] == 2

    foreign = tmp_path / "foreign"
    (foreign / "imagesTr").mkdir(parents=True)
    (foreign / "imagesTr" / "z_0000.nii.gz").write_bytes(b"x")
    with pytest.raises(DatasetError, match="not written by a data import"):
        import_dataset(src, foreign, COARSE, *FLAT)
    assert (foreign / "imagesTr" / "z_0000.nii.gz").read_bytes() == b"x"


def test_field_of_view_crop_is_warned(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    write_pair(src, "big", *NESTED)
    small = Profile("small", (2.0, 2.0, 2.0), (16, 16, 16))
    report = import_dataset(src, out, small, *NESTED)
    assert report.imported == ["big"] and "field of view" in report.warnings["big"]
    assert "field of view" in (out / "import_report.md").read_text()
    assert set(VENTRICLE_LABELS) & set(np.unique(nnunet_raw.load_case(out, "big")[1].array).tolist())
