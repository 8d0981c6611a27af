"""What the module's panel shows: the display of a worker event, the buttons' state, the trained range and the
bundle's defaults in the Generate section, the results of a run, the Models section's texts.

Texts and rows are computed without Qt; the functions taking `ui` (the widgets of VentricleSynth.ui, as
`slicer.util.childWidgetVariables` gives them) set them on the panel (`fill_table` imports qt)."""

from __future__ import annotations

import json

from VentricleSynthLib.slicer_glue.i18n import tr as _
from VentricleSynthLib.slicer_glue.mrml import RECORD_ATTRIBUTE, is_synthetic
from VentricleSynthLib.slicer_glue.results import show_sample
from VentricleSynthLib.slicer_glue.segmentation_nodes import ventricle_report
from VentricleSynthLib.slicer_glue.volume_table import export_volume_table_csv, volume_table_for
from VentricleSynthLib.worker.protocol import Message, Progress, Result

VOLUME_RANGE_ML = (0.1, 500.0)  # what the parameter node accepts; the slider shows the bundle's trained range in it


def event_display(event) -> tuple[int | None, str | None, str | None]:
    """(progress bar percent, status line, log line) for one worker event; None: leave it as it is."""
    if isinstance(event, Progress):
        return event.percent, event.describe(), None
    if isinstance(event, Message):
        if event.level == "error":
            return None, None, "error: " + event.text
        if event.level == "warning":
            return None, _("Warning: ") + event.text, "warning: " + event.text
        return None, None, event.text
    if isinstance(event, Result):
        return None, None, "result: " + json.dumps({k: v for k, v in event.data.items() if k != "files"})[:500]
    return None, None, None


def trained_range(defaults: dict, models_dir: str) -> tuple[tuple[float, float] | None, str]:
    """(volume slider's (minimum, maximum) = the mask bundle's trained range, or None; the label under it)."""
    trained = defaults.get("trained_range_ml")
    if not trained:
        return None, _("No mask model found in {folder}").format(folder=models_dir)
    low, high = trained
    text = _("Trained range: {low:.1f} to {high:.1f} mL ({profile} profile)").format(
        low=low, high=high, profile=defaults.get("profile") or "?")
    minimum, maximum = VOLUME_RANGE_ML
    low = min(max(minimum, round(low, 1)), maximum)
    return (low, min(max(low, round(high, 1)), maximum)), text


def bundle_parameters(defaults: dict, applied_from: str) -> dict:
    """Parameter-node values from the bundles' defaults (guidance, each stage's steps, refinement, the middle of
    the trained range), once per models folder (`applied_from`: the folder whose defaults were applied last; a
    user's own choices are kept afterwards). {} when nothing changes."""
    if not defaults or applied_from == defaults.get("models_dir", ""):
        return {}
    values = {name: kind(defaults[key]) for name, key, kind in (
        ("guidanceScale", "guidance", float), ("maskSteps", "steps", int), ("imageSteps", "image_steps", int),
        ("refine", "refine", bool))
        if key in defaults}
    trained = defaults.get("trained_range_ml")
    if trained:
        values["ventricleVolumeMl"] = float(round((trained[0] + trained[1]) / 2, 1))
    values["defaultsFromModels"] = defaults.get("models_dir", "")
    return values


def default_input_volume(scene):
    """The volume Segment starts with: the first scalar volume of `scene` that is neither a label map (Slicer's
    label map nodes are scalar volume nodes too) nor a synthetic sample; None when there is none."""
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        if not node.IsA("vtkMRMLLabelMapVolumeNode") and not is_synthetic(node):
            return node
    return None


def _record(node) -> dict:
    return json.loads(node.GetAttribute(RECORD_ATTRIBUTE) or "{}")


def generated_summary(loaded) -> str:
    """One line per generated (volume node, segmentation node): asked and obtained volume."""
    lines = []
    for volumeNode, _segmentationNode in loaded:
        record = _record(volumeNode)
        lines.append(_("{name}: asked {asked:.1f} mL, got {got:.1f} mL").format(
            name=volumeNode.GetName(), asked=record.get("asked_ml", float("nan")),
            got=record.get("got_ml", float("nan"))))
    return "\n".join(lines)


def segmentation_rows(report: dict) -> list[tuple[str, str]]:
    """(structure, mL) rows of a `ventricle_report`, the total last."""
    rows = list(report["per_label_ml"].items()) + [(_("Ventricular system (total)"), report["ventricle_ml"])]
    return [(name, f"{ml:.2f}") for name, ml in rows]


def segmentation_warnings(segmentationNode) -> str:
    return "\n".join(_("Warning: ") + w for w in _record(segmentationNode).get("warnings") or [])


def models_rows(info: dict) -> tuple[list[list[str]], list[list[str]]]:
    """(rows, tooltips) of the models table from `worker info`'s RESULT: name, version, profile, verified,
    checksum; the tooltip of the name is the bundle's folder."""
    rows, tooltips = [], []
    for entry in info.get("models", []):
        verified = _("verified") if entry.get("verified") else _("FAILED: ") + entry.get("error", "")
        values = [entry.get("name", ""), str(entry.get("version") or ""), str(entry.get("profile") or ""),
                  verified, (entry.get("sha256") or "")[:12]]
        rows.append(values)
        tooltips.append([entry.get("path", "")] + values[1:])
    return rows, tooltips


def versions_text(info: dict) -> str:
    versions = info.get("versions", {})
    devices = info.get("devices", {})
    return (_("Models folder: {folder}").format(folder=info.get("models_dir", "")) + "\n"
            + ", ".join(f"{k} {v}" for k, v in versions.items() if v) + "\n"
            + _("CUDA: {cuda}; MPS: {mps}").format(cuda=devices.get("cuda_name") or devices.get("cuda"),
                                                 mps=devices.get("mps")))


def models_folder_text(defaults: dict, folder: str) -> str:
    if not defaults:
        return _("Models folder {folder} holds no generator bundle.").format(folder=folder)
    return _("Models folder: {folder}. Press 'Verify models' to check checksums.").format(folder=folder)


def fill_table(table, rows, tooltips=None, alignRight=()) -> None:
    """Replace the rows of a QTableWidget (Slicer only: imports qt)."""
    import qt

    table.setRowCount(len(rows))
    for row, values in enumerate(rows):
        for column, value in enumerate(values):
            item = qt.QTableWidgetItem(value)
            if tooltips is not None:
                item.setToolTip(tooltips[row][column])
            if column in alignRight:
                item.setTextAlignment(qt.Qt.AlignRight | qt.Qt.AlignVCenter)
            table.setItem(row, column, item)


# ------------------------------------------------------------------------------------ onto the panel
def prepare(ui) -> None:
    """Table headers and the progress bar, once when the panel is set up."""
    ui.volumesTable.setColumnCount(2)
    ui.volumesTable.setHorizontalHeaderLabels([_("Structure"), _("Volume (mL)")])
    ui.volumesTable.horizontalHeader().setStretchLastSection(True)
    ui.modelsTable.horizontalHeader().setStretchLastSection(True)
    ui.progressBar.setRange(0, 100)
    ui.progressBar.setValue(0)


def show_event(ui, event) -> None:
    percent, status, log = event_display(event)
    if percent is not None:
        ui.progressBar.setValue(percent)
    if log is not None:
        ui.logTextEdit.appendPlainText(log)
    if status is not None:
        ui.statusLabel.text = status


def update_buttons(ui, task, has_input: bool, segmentation=None) -> None:
    """Buttons while `task` (the panel's last `WorkerTask`, or None) runs: its own button reads Cancel, the
    others are disabled; Segment needs an input volume, Export a `segmentation` with its volume table."""
    running = task is not None and not task.finished
    running_kind = task.kind if running else None
    ui.generateButton.text = _("Cancel") if running_kind == "generate" else _("Generate")
    ui.segmentButton.text = _("Cancel") if running_kind == "segment" else _("Segment ventricles")
    ui.generateButton.enabled = (not running) or running_kind == "generate"
    ui.segmentButton.enabled = (not running and has_input) or running_kind == "segment"
    ui.segmentButton.toolTip = (_("Stop the segmentation") if running_kind == "segment" else
                                _("Segment the ventricles of the input volume") if has_input else
                                _("Select an input volume first"))
    ui.refreshModelsButton.enabled = not running
    ui.installDependenciesButton.enabled = not running
    ui.exportVolumesButton.enabled = segmentation is not None and volume_table_for(segmentation) is not None


def apply_model_defaults(ui, parameter_node, defaults: dict, models_dir: str) -> None:
    """Slider range = the mask bundle's trained range; guidance/steps defaults from the bundle, once per
    models folder (a user's own choices are kept afterwards)."""
    slider_range, ui.trainedRangeLabel.text = trained_range(defaults, models_dir)
    if slider_range:
        ui.ventricleVolumeSliderWidget.minimum, ui.ventricleVolumeSliderWidget.maximum = slider_range
    if parameter_node is None:
        return
    for name, value in bundle_parameters(defaults, parameter_node.defaultsFromModels).items():
        setattr(parameter_node, name, value)


def show_result(ui, task) -> None:
    """What a finished task brought: generated samples (the first one shown in the views), the ventricle
    volumes of a segmentation, or the models `worker info` listed."""
    if task.kind == "generate":
        ui.generateResultLabel.text = generated_summary(task.loaded)
        if task.loaded:
            show_sample(*task.loaded[0])
    elif task.kind == "segment":
        ui.volumesTable.setRowCount(0)
        if task.loaded:
            fill_table(ui.volumesTable, segmentation_rows(ventricle_report(task.loaded[0])), alignRight=(1,))
            ui.segmentResultLabel.text = segmentation_warnings(task.loaded[0])
    elif task.kind == "info":
        info = next((r for r in task.outcome.results if r.get("kind") == "models"), None)
        ui.modelsTable.setRowCount(0)
        if info:
            fill_table(ui.modelsTable, *models_rows(info))
            ui.versionsLabel.text = versions_text(info)


def export_volumes(segmentation, parent=None) -> str | None:
    """Ask where to save the volume table of `segmentation` and write it as CSV; the path, or None if cancelled."""
    import qt

    table = volume_table_for(segmentation)
    suggestion = (table.GetName() if table is not None else "ventricle volumes") + ".csv"
    path = qt.QFileDialog.getSaveFileName(parent, _("Export ventricle volumes"), suggestion, _("CSV files (*.csv)"))
    if not path:
        return None
    return str(export_volume_table_csv(segmentation, path))


def show_models_folder(ui, defaults: dict, folder: str) -> None:
    ui.modelsCollapsibleButton.toolTip = folder
    ui.versionsLabel.text = models_folder_text(defaults, folder)
