"""The clinician's output of Segment, headless with the slicer-core wheel: the segmentation named after the input
volume, a table node of per-ventricle and total mL beside it (model, version and checksum kept), its CSV export,
and synthetic inputs tagged all the way."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from VentricleSynthLib.io.nifti import Volume, save_volume
from VentricleSynthLib.labels import SCHEMA, VENTRICLE_LABELS
from VentricleSynthLib.slicer_glue.mrml import RECORD_ATTRIBUTE, is_synthetic
from VentricleSynthLib.slicer_glue.results import load_segmentation_result
from VentricleSynthLib.slicer_glue.segmentation_nodes import segmentation_from_label_map
from VentricleSynthLib.slicer_glue.volume_nodes import node_from_array
from VentricleSynthLib.slicer_glue.volume_table import (
    COLUMNS,
    PROVENANCE,
    TABLE_REFERENCE_ROLE,
    TOTAL,
    export_volume_table_csv,
    update_volume_table,
    volume_table_for,
    volume_table_from_result,
)
from VentricleSynthLib.volumes import volume_report

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")

MODEL = {"name": "ventricle-segmenter", "version": "1.2.0", "sha256": "ab12" * 16}


def _segment(scene, tmp_path, label, affine, name="patient 042", synthetic=False):
    """What Segment does: a volume, the worker's label map and RESULT line (as worker/server.py emits it)."""
    volume = node_from_array(label.astype(np.float32), affine, name=name, scene=scene, synthetic=synthetic)
    path = save_volume(Volume(label, affine), tmp_path / "out" / "segmentation.nii.gz", dtype=np.int16)
    result = {"kind": "segmentation", "files": {"label": str(path), "report": str(tmp_path / "segmentation.json")},
              "input": str(tmp_path / "input.nii.gz"), **volume_report(label, affine), "warnings": [],
              "model": MODEL, "device": "cpu", "tta": False, "seconds": 1.5}
    return volume, result, load_segmentation_result(result, volume, scene=scene)


def _rows(table_node):
    table = table_node.GetTable()
    return [[table.GetValue(r, c).ToString() for c in range(table.GetNumberOfColumns())]
            for r in range(table.GetNumberOfRows())]


def test_segment_leaves_a_named_table_of_volumes_beside_the_segmentation(scene, ventricle_labels, grid_affines,
                                                                         tmp_path):
    label = ventricle_labels()
    affine = grid_affines(label.shape)["anisotropic"]
    volume, result, segmentation = _segment(scene, tmp_path, label, affine)
    assert segmentation.GetName() == "patient 042 ventricles"
    table_node = volume_table_for(segmentation)
    assert table_node is not None and table_node.IsA("vtkMRMLTableNode")
    assert segmentation.GetNodeReference(TABLE_REFERENCE_ROLE).GetID() == table_node.GetID()
    assert table_node.GetName() == "patient 042 ventricle volumes"
    table = table_node.GetTable()
    assert [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())] == list(COLUMNS)
    assert table_node.GetColumnUnitLabel("volume_ml") == "mL"
    assert table.GetColumnByName("volume_ml").IsA("vtkDoubleArray")
    rows = _rows(table_node)
    assert [r[0] for r in rows] == [SCHEMA[lab][0] for lab in VENTRICLE_LABELS] + [TOTAL]
    assert [r[1] for r in rows] == [str(lab) for lab in VENTRICLE_LABELS] + [""]
    measured = {r[0]: table.GetValue(i, 2).ToDouble() for i, r in enumerate(rows)}
    for name, ml in result["per_label_ml"].items():  # the worker's numbers, to its 3 decimals
        assert measured[name] == pytest.approx(ml, abs=1.5e-3)
    assert measured["Left-Inf-Lat-Vent"] == 0.0
    assert measured[TOTAL] == pytest.approx(result["ventricle_ml"], abs=1.5e-3)
    assert table_node.GetAttribute("VentricleSynth.Model") == MODEL["name"]
    assert table_node.GetAttribute("VentricleSynth.ModelVersion") == MODEL["version"]
    assert table_node.GetAttribute("VentricleSynth.ModelSha256") == MODEL["sha256"]
    assert table_node.GetAttribute("VentricleSynth.InputVolume") == volume.GetName()
    assert json.loads(segmentation.GetAttribute(RECORD_ATTRIBUTE))["model"] == MODEL
    assert not is_synthetic(table_node) and not is_synthetic(segmentation)


def test_csv_export_holds_volumes_and_provenance(scene, ventricle_labels, tmp_path):
    label = ventricle_labels()
    affine = np.diag([0.9, 1.1, 1.2, 1.0])
    volume, result, segmentation = _segment(scene, tmp_path, label, affine)
    path = tmp_path / "export" / "volumes.csv"
    path.parent.mkdir()
    path.write_text("old contents\n")
    assert export_volume_table_csv(segmentation, path) == path  # a segmentation node finds its table
    assert sorted(p.name for p in path.parent.iterdir()) == ["volumes.csv"]  # replaced atomically, no leftovers
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == [*COLUMNS, *PROVENANCE]
        rows = list(reader)
    assert [r["structure"] for r in rows] == [SCHEMA[lab][0] for lab in VENTRICLE_LABELS] + [TOTAL]
    by_name = {r["structure"]: r for r in rows}
    voxel = 0.9 * 1.1 * 1.2 / 1000
    assert float(by_name["Left-Lateral-Ventricle"]["volume_ml"]) == pytest.approx(round(168 * voxel, 3))
    assert float(by_name[TOTAL]["volume_ml"]) == pytest.approx(result["ventricle_ml"], abs=1e-3)
    assert by_name["Right-Lateral-Ventricle"]["label"] == "43" and by_name[TOTAL]["label"] == ""
    for row in rows:
        assert (row["model"], row["model_version"], row["model_sha256"]) == (MODEL["name"], MODEL["version"],
                                                                               MODEL["sha256"])
        assert row["input_volume"] == "patient 042" and row["synthetic"] == "no"
    # the table node itself exports the same file
    again = export_volume_table_csv(volume_table_for(segmentation), tmp_path / "again.csv")
    assert again.read_text() == path.read_text()


def test_slicer_reads_the_exported_csv_back(scene, ventricle_labels, tmp_path):
    """Independent reader: Slicer's table storage node loads the file into the same numbers."""
    _, result, segmentation = _segment(scene, tmp_path, ventricle_labels(), np.eye(4))
    path = export_volume_table_csv(segmentation, tmp_path / "volumes.csv")
    storage = scene.AddNewNodeByClass("vtkMRMLTableStorageNode")
    storage.SetFileName(str(path))
    read = scene.AddNewNodeByClass("vtkMRMLTableNode")
    assert storage.ReadData(read)
    table = read.GetTable()
    names = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    assert names == [*COLUMNS, *PROVENANCE]
    total = [r for r in range(table.GetNumberOfRows()) if table.GetValue(r, 0).ToString() == TOTAL]
    assert len(total) == 1
    assert table.GetValue(total[0], 2).ToDouble() == pytest.approx(result["ventricle_ml"], abs=1e-3)


def test_the_table_is_updated_in_place(scene, ventricle_labels, tmp_path):
    label = ventricle_labels()
    _, result, segmentation = _segment(scene, tmp_path, label, np.eye(4))
    table_node = volume_table_for(segmentation)
    tables = scene.GetNumberOfNodesByClass("vtkMRMLTableNode")
    segmentation_from_label_map(np.where(label == 4, 0, label), np.eye(4), scene=scene, node=segmentation,
                                closed_surface=False)
    assert update_volume_table(segmentation) is table_node  # re-measured, the model kept
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == tables
    rows = {r[0]: float(r[2]) for r in _rows(table_node)}
    assert rows["Left-Lateral-Ventricle"] == 0.0
    assert rows[TOTAL] == pytest.approx((168 + 24 + 18 + 12) / 1000.0)
    assert table_node.GetAttribute("VentricleSynth.ModelSha256") == MODEL["sha256"]
    assert volume_table_from_result({**result, "model": {**MODEL, "version": "2.0"}}, segmentation) is table_node
    assert table_node.GetAttribute("VentricleSynth.ModelVersion") == "2.0"


def test_a_synthetic_input_stays_tagged_on_segmentation_table_and_csv(scene, ventricle_labels, tmp_path):
    volume, _, segmentation = _segment(scene, tmp_path, ventricle_labels(), np.eye(4), name="sample",
                                       synthetic=True)
    table_node = volume_table_for(segmentation)
    assert volume.GetName() == "SYNTHETIC sample"
    assert is_synthetic(segmentation) and segmentation.GetName() == "SYNTHETIC sample ventricles"
    assert is_synthetic(table_node) and table_node.GetName() == "SYNTHETIC sample ventricle volumes"
    with open(export_volume_table_csv(table_node, tmp_path / "v.csv"), newline="") as fh:
        assert {row["synthetic"] for row in csv.DictReader(fh)} == {"yes"}


def test_export_without_a_table_is_refused(scene, ventricle_labels, tmp_path):
    node = segmentation_from_label_map(ventricle_labels(), np.eye(4), scene=scene, closed_surface=False)
    with pytest.raises(ValueError, match="segment a volume first"):
        export_volume_table_csv(node, tmp_path / "v.csv")
    assert not (tmp_path / "v.csv").exists()


def test_partial_volumes_come_from_the_result_and_go_with_edits(scene, ventricle_labels, tmp_path):
    """The worker's partial-volume (soft) mL sit beside the voxel count, per label and in total; a label the
    worker gave none for, and every row after an edit (the soft volume was the unedited segmentation's), is
    empty: NaN in the table, blank in the CSV."""
    label = ventricle_labels()
    volume = node_from_array(label.astype(np.float32), np.eye(4), name="p", scene=scene)
    path = save_volume(Volume(label, np.eye(4)), tmp_path / "out" / "segmentation.nii.gz", dtype=np.int16)
    soft = {SCHEMA[lab][0]: 0.01 * (i + 1) for i, lab in enumerate(VENTRICLE_LABELS[:-1])}  # the last one: none
    result = {"kind": "segmentation", "files": {"label": str(path)}, **volume_report(label, np.eye(4)),
              "ventricle_soft_ml": 0.321, "per_label_soft_ml": soft, "warnings": [], "model": MODEL}
    segmentation = load_segmentation_result(result, volume, scene=scene)
    table_node = volume_table_for(segmentation)
    table = table_node.GetTable()
    assert table.GetColumnByName("partial_volume_ml").IsA("vtkDoubleArray")
    assert table_node.GetColumnUnitLabel("partial_volume_ml") == "mL"
    values = {table.GetValue(r, 0).ToString(): table.GetValue(r, 3).ToDouble()
              for r in range(table.GetNumberOfRows())}
    for name, ml in soft.items():
        assert values[name] == pytest.approx(ml)
    assert np.isnan(values[SCHEMA[VENTRICLE_LABELS[-1]][0]]) and values[TOTAL] == pytest.approx(0.321)
    with open(export_volume_table_csv(table_node, tmp_path / "v.csv"), newline="") as fh:
        rows = {row["structure"]: row for row in csv.DictReader(fh)}
    assert rows[TOTAL]["partial_volume_ml"] == "0.321"
    assert rows[SCHEMA[VENTRICLE_LABELS[-1]][0]]["partial_volume_ml"] == ""
    assert json.loads(segmentation.GetAttribute(RECORD_ATTRIBUTE))["ventricle_soft_ml"] == 0.321
    segmentation_from_label_map(np.where(label == 4, 0, label), np.eye(4), scene=scene, node=segmentation,
                                closed_surface=False)
    update_volume_table(segmentation)
    with open(export_volume_table_csv(table_node, tmp_path / "edited.csv"), newline="") as fh:
        assert {row["partial_volume_ml"] for row in csv.DictReader(fh)} == {""}
