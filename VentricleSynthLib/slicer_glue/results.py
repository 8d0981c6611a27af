"""Worker results -> nodes: the files named by a `RESULT` line of `worker generate` or `worker segment`,
loaded into a synthetic volume + segmentation, or a segmentation on the input volume; a sample shown."""

from __future__ import annotations

import json
from pathlib import Path

from VentricleSynthLib.slicer_glue.mrml import RECORD_ATTRIBUTE, is_synthetic
from VentricleSynthLib.slicer_glue.segmentation_nodes import load_segmentation_file
from VentricleSynthLib.slicer_glue.volume_nodes import load_volume_file


def load_sample(result: dict, scene=None, labels="ventricles", closed_surface: bool = True, show: bool = False,
                name: str | None = None):
    """Load one `RESULT {"kind": "sample", ...}` of `worker generate` (the exact files it names):
    a synthetic volume node + a segmentation node on it. Returns (volume_node, segmentation_node)."""
    files = result["files"]
    record = {}
    record_path = files.get("record")
    if record_path and Path(record_path).is_file():
        record = json.loads(Path(record_path).read_text())
    index = int(result.get("index", 0))
    asked = result.get("asked_ml", record.get("asked_ml"))
    seed = result.get("seed", record.get("seed"))
    if name:
        base = name
    elif asked is not None:
        base = f"VentricleSynth {float(asked):g} mL seed {seed}"
    else:
        base = f"VentricleSynth sample {index}"
    volume_node = load_volume_file(files["image"], name=base, scene=scene, synthetic=True, show=show)
    summary = {k: result[k] for k in ("asked_ml", "got_ml", "tiv_ml", "seed", "guidance", "steps", "device",
                                      "models") if k in result}
    volume_node.SetAttribute(RECORD_ATTRIBUTE, json.dumps(summary or record))
    segmentation_node = load_segmentation_file(files["label"], name=f"{base} labels", scene=scene, labels=labels,
                                               reference_volume_node=volume_node, closed_surface=closed_surface,
                                               synthetic=True, show=show)
    segmentation_node.SetAttribute(RECORD_ATTRIBUTE, json.dumps(summary or record))
    return volume_node, segmentation_node


def load_segmentation_result(result: dict, reference_volume_node, scene=None, closed_surface: bool = True,
                             name: str | None = None, show: bool = False, table: bool = True):
    """Load a `RESULT {"kind": "segmentation", ...}` of `worker segment` onto the input volume node (same grid,
    same parent transform), named "<volume> ventricles"; with `table`, its volume table beside it
    (`volume_table.volume_table_for(node)`). Synthetic if the input is. Returns the segmentation node."""
    from VentricleSynthLib.slicer_glue.volume_table import volume_table_from_result

    files = result["files"]
    base = name or (f"{reference_volume_node.GetName()} ventricles" if reference_volume_node is not None
                    else "Ventricles")
    if scene is None and reference_volume_node is not None:
        scene = reference_volume_node.GetScene()
    node = load_segmentation_file(files["label"], name=base, scene=scene, labels="ventricles",
                                  reference_volume_node=reference_volume_node, closed_surface=closed_surface,
                                  synthetic=is_synthetic(reference_volume_node), show=show)
    report = {k: result[k] for k in ("ventricle_ml", "per_label_ml", "ventricle_soft_ml", "per_label_soft_ml",
                                     "boundary", "tiv_ml", "relative_volume", "warnings", "seconds", "device", "tta",
                                     "model", "ventriclesynth") if k in result}
    node.SetAttribute(RECORD_ATTRIBUTE, json.dumps(report))
    if table:
        volume_table_from_result(result, node, input_volume_node=reference_volume_node)
    return node


def show_sample(volume_node, segmentation_node=None) -> None:
    """A generated sample in the slice views (full Slicer only), its segmentation visible."""
    import slicer

    try:
        slicer.util.setSliceViewerLayers(background=volume_node, fit=True)
    except Exception:  # noqa: BLE001 - no layout (batch mode)
        pass
    if segmentation_node is not None and segmentation_node.GetDisplayNode() is not None:
        segmentation_node.GetDisplayNode().SetVisibility(True)
