"""The clinician's record of a segmentation: a table node of per-ventricle and total volume in mL beside the
segmentation node (found through a node reference), the model that made it in the table's attributes, and a
CSV export of both (atomic, works headless). Volumes are measured on the scan's own grid: a parent transform
(a registration) does not change them."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from VentricleSynthLib.labels import VENTRICLE_LABELS, label_name
from VentricleSynthLib.slicer_glue.mrml import RECORD_ATTRIBUTE, _slicer, is_synthetic, tag_synthetic

TABLE_REFERENCE_ROLE = "VentricleSynth.VolumeTable"  # segmentation node -> its volume table
COLUMNS = ("structure", "label", "volume_ml", "partial_volume_ml")
PROVENANCE = ("input_volume", "model", "model_version", "model_sha256", "ventriclesynth", "synthetic")
TOTAL = "Ventricular system (total)"
# CSV column -> (table node attribute, key in the RESULT's "model")
MODEL_ATTRIBUTES = {"model": ("VentricleSynth.Model", "name"),
                    "model_version": ("VentricleSynth.ModelVersion", "version"),
                    "model_sha256": ("VentricleSynth.ModelSha256", "sha256")}
INPUT_ATTRIBUTE = "VentricleSynth.InputVolume"
VERSION_ATTRIBUTE = "VentricleSynth.Version"


def table_name(input_name: str) -> str:
    return f"{input_name} ventricle volumes"


def _soft_ml(result: dict | None) -> tuple[dict[int, float], float]:
    """The worker's partial-volume mL per label and in total (NaN where it gave none: no estimate, or none
    any more because the segmentation was edited)."""
    per = (result or {}).get("per_label_soft_ml") or {}
    total = (result or {}).get("ventricle_soft_ml")
    return ({lab: float(per.get(label_name(lab), math.nan)) for lab in VENTRICLE_LABELS},
            math.nan if total is None else float(total))


def volume_rows(segmentation_node, result: dict | None = None) -> list[dict]:
    """One row per ventricle segment (schema order), the total last; mL to 3 decimals, measured on the node;
    the partial-volume mL from the worker's `result` (NaN without one)."""
    from VentricleSynthLib.slicer_glue.segmentation_nodes import segment_labels, segment_volumes_ml

    volumes, labels = segment_volumes_ml(segmentation_node), segment_labels(segmentation_node)
    soft, soft_total = _soft_ml(result)
    by_label = {lab: name for name, lab in labels.items() if lab in VENTRICLE_LABELS}
    rows = [{"structure": by_label[lab], "label": str(lab), "volume_ml": round(volumes[by_label[lab]], 3),
             "partial_volume_ml": round(soft[lab], 3)} for lab in VENTRICLE_LABELS if lab in by_label]
    total = sum(volumes[by_label[lab]] for lab in VENTRICLE_LABELS if lab in by_label)
    return rows + [{"structure": TOTAL, "label": "", "volume_ml": round(total, 3),
                    "partial_volume_ml": round(soft_total, 3)}]


def _input_volume(segmentation_node):
    role = _slicer().vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    return segmentation_node.GetNodeReference(role)


def volume_table_for(segmentation_node):
    """The volume table of a segmentation node (None if it has none)."""
    if segmentation_node is None:
        return None
    return segmentation_node.GetNodeReference(TABLE_REFERENCE_ROLE)


def volume_table_from_result(result: dict | None, segmentation_node, input_volume_node=None):
    """Create (or update in place) the volume table of `segmentation_node`, in its scene.

    Volumes are measured on the node (they match the worker's `per_label_ml`); the model (name, version, sha256)
    comes from the `RESULT` of `worker segment`. Named "<input volume> ventricle volumes"; synthetic if the
    segmentation or its input is."""
    import vtk

    volume = input_volume_node if input_volume_node is not None else _input_volume(segmentation_node)
    input_name = volume.GetName() if volume is not None else segmentation_node.GetName()
    table_node = volume_table_for(segmentation_node)
    if table_node is None:
        table_node = segmentation_node.GetScene().AddNewNodeByClass("vtkMRMLTableNode", table_name(input_name))
        segmentation_node.SetNodeReferenceID(TABLE_REFERENCE_ROLE, table_node.GetID())
    rows = volume_rows(segmentation_node, result)
    table = vtk.vtkTable()
    for column, array_class in zip(COLUMNS, (vtk.vtkStringArray, vtk.vtkStringArray, vtk.vtkDoubleArray,
                                             vtk.vtkDoubleArray)):
        array = array_class()
        array.SetName(column)
        for row in rows:
            array.InsertNextValue(row[column])
        table.AddColumn(array)
    was_modifying = table_node.StartModify()
    try:
        table_node.SetAndObserveTable(table)
        table_node.SetUseColumnTitleAsColumnHeader(True)
        for column, title in zip(COLUMNS, ("Structure", "Label", "Volume", "Partial volume")):
            table_node.SetColumnTitle(column, title)
        table_node.SetColumnUnitLabel("volume_ml", "mL")
        table_node.SetColumnUnitLabel("partial_volume_ml", "mL")
        table_node.SetColumnDescription("volume_ml", "Volume in millilitres: voxels at least half ventricle")
        table_node.SetColumnDescription("partial_volume_ml", "Partial-volume (soft) volume in millilitres: each "
                                        "boundary voxel's ventricle fraction, read from the image (empty after "
                                        "edits or without CSF/tissue contrast)")
        table_node.SetColumnDescription("label", "FreeSurfer label number")
        table_node.SetAttribute(INPUT_ATTRIBUTE, input_name)
        if result:  # without one (an update after edits) the provenance stays
            model = result.get("model") or {}
            for attribute, key in MODEL_ATTRIBUTES.values():
                table_node.SetAttribute(attribute, "" if model.get(key) is None else str(model[key]))
            table_node.SetAttribute(VERSION_ATTRIBUTE, str(result.get("ventriclesynth") or ""))
            record = {k: result[k] for k in ("model", "device", "tta", "warnings", "seconds", "ventriclesynth")
                      if k in result}
            table_node.SetAttribute(RECORD_ATTRIBUTE, json.dumps(record))
        if is_synthetic(segmentation_node) or is_synthetic(volume):
            tag_synthetic(table_node)
    finally:
        table_node.EndModify(was_modifying)
    return table_node


def update_volume_table(segmentation_node):
    """Re-measure a segmentation's volume table after edits (created if missing); the provenance stays, the
    partial volumes (the worker's, of the unedited segmentation) are dropped."""
    return volume_table_from_result(None, segmentation_node)


def table_rows(table_node) -> list[dict]:
    """The table's rows with its provenance in each (the CSV's rows)."""
    table = table_node.GetTable()
    names = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    provenance = {"input_volume": table_node.GetAttribute(INPUT_ATTRIBUTE) or "",
                  "ventriclesynth": table_node.GetAttribute(VERSION_ATTRIBUTE) or "",
                  "synthetic": "yes" if is_synthetic(table_node) else "no",
                  **{key: table_node.GetAttribute(attribute) or "" for key, (attribute, _) in MODEL_ATTRIBUTES.items()}}
    rows = []
    for r in range(table.GetNumberOfRows()):
        row = {}
        for c, name in enumerate(names):
            value = table.GetValue(r, c)
            number = value.ToDouble() if value.IsNumeric() else None
            row[name] = value.ToString() if number is None else "" if math.isnan(number) else round(number, 3)
        rows.append({**row, **provenance})
    return rows


def export_volume_table_csv(table_or_segmentation_node, path: str | os.PathLike) -> Path:
    """Write the volume table (or a segmentation node's) as CSV, atomically: structure, label, volume_ml,
    partial_volume_ml (empty where there is none), then the provenance columns (input volume, model, its version
    and sha256, VentricleSynth version, synthetic)."""
    from VentricleSynthLib.io.atomic import write_csv

    node = table_or_segmentation_node
    if node is not None and not node.IsA("vtkMRMLTableNode"):
        node = volume_table_for(node)
    if node is None or node.GetTable() is None:
        raise ValueError("no ventricle volume table: segment a volume first")
    return write_csv(path, table_rows(node), [*COLUMNS, *PROVENANCE])

