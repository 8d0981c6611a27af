"""Label schema, index maps, one-hot, and explicit mappings (CerebrA, user CSV)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from VentricleSynthLib import labels
from VentricleSynthLib.errors import LabelSchemaError, VentricleSynthError
from VentricleSynthLib.labels import (
    CEREBRA,
    LABELS,
    NUM_CLASSES,
    SCHEMA,
    VENTRICLE_LABELS,
    LabelMapping,
    from_indices,
    label_name,
    one_hot,
    to_indices,
    ventricle_mask,
)

# FreeSurfer convention: 2..28 are left hemisphere, 41..60 right; these are midline / unlateralised.
MIDLINE = {0, 14, 15, 16, 24}
LEFT = {v for v in LABELS if 2 <= v <= 28} - MIDLINE
RIGHT = {v for v in LABELS if 41 <= v <= 60}

label_maps = hnp.arrays(np.int16, hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6),
                        elements=st.sampled_from(LABELS))
index_maps = hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6),
                        elements=st.integers(0, NUM_CLASSES - 1))


# --- schema -----------------------------------------------------------------------------------------

def test_schema_has_33_classes_with_background_first():
    assert NUM_CLASSES == 33 == len(LABELS) == len(SCHEMA)
    assert LABELS[0] == 0
    assert len(set(LABELS)) == NUM_CLASSES
    assert list(LABELS) == sorted(LABELS)


def test_ventricle_labels():
    assert set(VENTRICLE_LABELS) == {4, 43, 5, 44, 14, 15}
    assert set(VENTRICLE_LABELS) <= set(LABELS)
    assert label_name(4) == "Left-Lateral-Ventricle"
    assert label_name(43) == "Right-Lateral-Ventricle"
    assert label_name(5) == "Left-Inf-Lat-Vent"
    assert label_name(44) == "Right-Inf-Lat-Vent"
    assert label_name(14) == "3rd-Ventricle"
    assert label_name(15) == "4th-Ventricle"


def test_left_right_names_match_freesurfer_ranges():
    for v in LEFT:
        assert label_name(v).startswith("Left-"), v
    for v in RIGHT:
        assert label_name(v).startswith("Right-"), v
    for v in LABELS:
        assert len(labels.label_colour(v)) == 3


def test_ventricle_mask_is_union_of_six_labels():
    lab = np.array([0, 2, 4, 5, 14, 15, 24, 43, 44, 41, 3])
    np.testing.assert_array_equal(ventricle_mask(lab), [0, 0, 1, 1, 1, 1, 0, 1, 1, 0, 0])


# --- index maps ---------------------------------------------------------------------------------------

def test_to_indices_consecutive_and_ordered():
    idx = to_indices(np.asarray(LABELS, dtype=np.int16))
    np.testing.assert_array_equal(idx, np.arange(NUM_CLASSES))
    assert idx.dtype == np.uint8
    assert to_indices(np.array([43]))[0] == LABELS.index(43)


@settings(max_examples=60, deadline=None)
@given(label_maps)
def test_label_index_round_trip(label_map):
    idx = to_indices(label_map)
    assert idx.shape == label_map.shape
    assert idx.min() >= 0 and idx.max() < NUM_CLASSES
    np.testing.assert_array_equal(from_indices(idx), label_map)
    # equal labels <-> equal indices (the map is injective)
    flat_l, flat_i = label_map.ravel(), idx.ravel()
    assert len(np.unique(flat_l)) == len(np.unique(flat_i))


@settings(max_examples=60, deadline=None)
@given(index_maps)
def test_index_label_round_trip(idx):
    lab = from_indices(idx)
    assert set(np.unique(lab).tolist()) <= set(LABELS)
    np.testing.assert_array_equal(to_indices(lab), idx)


def test_to_indices_accepts_integer_valued_floats():
    np.testing.assert_array_equal(to_indices(np.array([0.0, 4.0, 43.0])), to_indices(np.array([0, 4, 43])))


@pytest.mark.parametrize("bad", [
    np.array([0, 4, 1]),  # 1 is not a schema label
    np.array([0, 999]),
    np.array([-4, 4]),
    np.array([61, 0]),
    np.array([4.5, 4.0]),
    np.array([np.nan, 4.0]),
    np.array([np.inf, 0.0]),
])
def test_to_indices_rejects_unknown_labels(bad):
    with pytest.raises(LabelSchemaError):
        to_indices(bad)


def test_unknown_label_error_names_the_values():
    with pytest.raises(LabelSchemaError, match="999"):
        labels.validate_label_map(np.array([[0, 4], [999, 1000]]))
    assert labels.unknown_labels(np.array([0, 4, 1, 999, 1])) == [1, 999]
    assert issubclass(LabelSchemaError, VentricleSynthError)


@pytest.mark.parametrize("bad", [np.array([-1]), np.array([NUM_CLASSES]), np.array([0, 200])])
def test_from_indices_rejects_out_of_range(bad):
    with pytest.raises(LabelSchemaError):
        from_indices(bad)


@settings(max_examples=30, deadline=None)
@given(index_maps)
def test_one_hot_shape_sum_and_argmax(idx):
    oh = one_hot(idx)
    assert oh.shape == (NUM_CLASSES,) + idx.shape
    assert oh.dtype == np.float32
    np.testing.assert_array_equal(oh.sum(axis=0), np.ones(idx.shape))
    np.testing.assert_array_equal(oh.argmax(axis=0), idx)


def test_one_hot_custom_class_count():
    oh = one_hot(np.array([[0, 2], [1, 2]]), num_classes=3)
    assert oh.shape == (3, 2, 2)
    np.testing.assert_array_equal(oh[2], [[0, 1], [0, 1]])


# --- CerebrA ------------------------------------------------------------------------------------------

def test_cerebra_covers_0_to_102_into_schema():
    assert set(CEREBRA.table) == set(range(103))
    assert set(CEREBRA.table.values()) <= set(LABELS)
    assert CEREBRA.table[0] == 0


@pytest.mark.parametrize("source, target", [
    (41, 43), (92, 4),  # lateral ventricles
    (5, 44), (56, 5),  # inferior lateral ventricles
    (29, 14), (80, 14),  # third ventricle halves
    (37, 15), (88, 15),  # fourth ventricle halves
    (11, 16), (62, 16),  # brainstem
    (48, 53), (99, 17),  # hippocampus
    (40, 49), (91, 10),  # thalamus
    (46, 47), (97, 8),  # cerebellum cortex
    (39, 46), (90, 7),  # cerebellum white matter
])
def test_cerebra_known_pairs(source, target):
    assert CEREBRA.table[source] == target


def test_cerebra_hemispheres_map_to_matching_sides():
    for rh in range(1, 52):
        right, left = CEREBRA.table[rh], CEREBRA.table[rh + 51]
        if right in MIDLINE:
            assert left == right, rh
        else:
            assert right in RIGHT, (rh, right)
            assert left in LEFT, (rh + 51, left)
            # the left target is the FreeSurfer counterpart of the right one (same structure name)
            assert label_name(right).replace("Right-", "") == label_name(left).replace("Left-", ""), rh
    # every ventricle label is reachable from CerebrA
    assert set(VENTRICLE_LABELS) <= set(CEREBRA.table.values())


def test_cerebra_apply_and_unknown_source():
    src = np.array([[0, 41, 92], [29, 80, 37]])
    np.testing.assert_array_equal(CEREBRA.apply(src), [[0, 43, 4], [14, 14, 15]])
    np.testing.assert_array_equal(CEREBRA.apply(src.astype(np.float32)), CEREBRA.apply(src))
    with pytest.raises(LabelSchemaError):
        CEREBRA.apply(np.array([0, 103]))
    with pytest.raises(LabelSchemaError):
        CEREBRA.apply(np.array([0.0, 41.5]))


def test_mapping_default_drops_unknown_sources():
    m = LabelMapping("m", {7: 4, 8: 43}, default=0)
    np.testing.assert_array_equal(m.apply(np.array([7, 8, 9, 123])), [4, 43, 0, 0])
    with pytest.raises(LabelSchemaError):
        LabelMapping("m", {7: 4}).apply(np.array([7, 9]))


def test_mapping_rejects_target_outside_schema():
    with pytest.raises(LabelSchemaError, match="outside the schema"):
        LabelMapping("bad", {1: 4, 2: 1})


# --- user CSV -----------------------------------------------------------------------------------------

def test_from_csv_good_file(tmp_path):
    p = tmp_path / "mine.csv"
    p.write_text("source,target,comment\n1,4,left lat\n2,43,right lat\n0,0,bg\n")
    m = LabelMapping.from_csv(p)
    assert m.name == "mine"
    assert m.table == {1: 4, 2: 43, 0: 0}
    np.testing.assert_array_equal(m.apply(np.array([0, 1, 2, 2])), [0, 4, 43, 43])
    with pytest.raises(LabelSchemaError):
        m.apply(np.array([3]))
    m0 = LabelMapping.from_csv(p, default=0)
    np.testing.assert_array_equal(m0.apply(np.array([3, 1])), [0, 4])


@pytest.mark.parametrize("text, match", [
    ("1,4\n2,43\n", "header"),  # missing header
    ("src,dst\n1,4\n", "header"),  # wrong header
    ("", "header"),  # empty file
    ("source,target\n1,4\n2,left\n", "line 3"),  # non-integer cell
    ("source,target\n1.5,4\n", "integers"),
    ("source,target\n1\n", "integers"),  # missing cell
    ("source,target\n1,4\n2,999\n", "outside the schema"),  # target outside schema
    ("source,target\n1,1\n", "outside the schema"),
])
def test_from_csv_bad_files(tmp_path, text, match):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(LabelSchemaError, match=match):
        LabelMapping.from_csv(p)


def test_from_csv_missing_file(tmp_path):
    with pytest.raises(LabelSchemaError):
        LabelMapping.from_csv(tmp_path / "nope.csv")
