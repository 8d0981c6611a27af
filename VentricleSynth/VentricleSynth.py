"""VentricleSynth: generate labelled synthetic brain MRI with a requested ventricle volume, and segment
the ventricles of a scan, from a Slicer panel (Ruschke et al. 2024).

Thin by design: no machine learning runs in Slicer's process. The Logic writes inputs to a temporary
folder, runs `python -m VentricleSynthLib worker ...` with Slicer's Python through QProcess, follows
its PROGRESS lines on an exact progress bar, and loads the files named in its RESULT lines through
`VentricleSynthLib.slicer_glue.mrml`. Heavy packages (torch, monai, nnU-Net) are imported by the worker only,
and installed on the user's request.
"""

import importlib
import json
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from typing import Annotated

import qt
import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

try:
    from slicer.i18n import tr as _
except ImportError:  # Slicer < 5.4
    def _(text):
        return text


def _addLibraryToPath():
    """Make `VentricleSynthLib` importable: next to this file in an installed extension, one folder up
    when the module is used from a source checkout (Application settings > Modules > add path)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (here, os.path.dirname(here)):
        if os.path.isfile(os.path.join(candidate, "VentricleSynthLib", "__init__.py")):
            if candidate not in sys.path:
                sys.path.insert(0, candidate)
            return candidate
    return None


LIBRARY_PARENT_DIR = _addLibraryToPath()

# Lib submodules this module uses in Slicer's process (pure Python + numpy/nibabel; no torch), in
# dependency order for importlib.reload.
LIBRARY_MODULES = (
    "VentricleSynthLib",
    "VentricleSynthLib.errors",
    "VentricleSynthLib.labels",
    "VentricleSynthLib.worker.protocol",
    "VentricleSynthLib.io.nifti",
    "VentricleSynthLib.volumes",
    "VentricleSynthLib.slicer_glue.mrml",
)

# Import name -> pip requirement of what the worker needs (torch comes from the PyTorch extension).
WORKER_PACKAGES = {
    "torch": "torch",
    "monai": "monai",
    "nibabel": "nibabel",
    "scipy": "scipy",
    "safetensors": "safetensors",
    "matplotlib": "matplotlib",
    "nnunetv2": "nnunetv2",
}

SETTINGS_MODELS_DIR = "VentricleSynth/ModelsDirectory"
DEVICES = ["auto", "cpu", "cuda", "mps"]

PAPER = ('Ruschke et al. 2024, "Guided Synthesis of Labeled Brain MRI Data Using Latent Diffusion Models for '
         'Segmentation of Enlarged Ventricles", arXiv:2411.01351')


def reloadLibrary():
    """Reload the Lib submodules already imported (Python 3.12 has no `imp`; use importlib)."""
    for name in LIBRARY_MODULES:
        module = sys.modules.get(name)
        if module is not None:
            importlib.reload(module)


def _lib():
    from VentricleSynthLib.slicer_glue import mrml as slicer_glue
    from VentricleSynthLib.worker import protocol as worker_protocol

    return slicer_glue, worker_protocol


#
# VentricleSynth
#


class VentricleSynth(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("VentricleSynth")
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["VentricleSynth contributors"]
        self.parent.helpText = _("""
Synthesise labelled T1-weighted brain MRI with a requested ventricle volume, and measure the ventricles of a scan.
<ul>
<li><b>Generate</b>: a volume-conditioned latent diffusion model draws a label map whose ventricular system
(lateral, inferior lateral, third and fourth ventricles) has the requested volume in mL; a SPADE latent diffusion
model turns it into an MRI. Each sample becomes a volume named <i>SYNTHETIC ...</i> (tagged as synthetic) and a
segmentation with named, coloured ventricles and a 3-D surface.</li>
<li><b>Segment</b>: the bundled nnU-Net model segments the ventricles of the selected volume; volumes in mL are
listed per ventricle and in total.</li>
<li><b>Models</b>: the bundled models, their checksums, and where to put other bundles (e.g. trained on a GPU
with <tt>training/train.py</tt>).</li>
</ul>
The networks run in a separate process (Slicer stays responsive; Cancel stops it). Python packages (PyTorch,
MONAI, nnU-Net) are installed on first use after asking. Synthetic images are for research and
education, not for diagnosis.
""")
        self.parent.acknowledgementText = _("Implements the method of") + " " + PAPER + _(""":
a mask latent diffusion model conditioned on ventricular volume with classifier-free guidance, a SPADE image
latent diffusion model, and an nnU-Net v2 ventricle segmenter. Built on MONAI (generative networks), nnU-Net v2
and PyTorch. Label numbers follow FreeSurfer/SynthSeg.""")


#
# Parameter node
#


@parameterNodeWrapper
class VentricleSynthParameterNode:
    """
    ventricleVolumeMl - requested volume of the ventricular system (mL).
    guidanceScale - classifier-free guidance scale of the mask model.
    steps - DDIM steps per stage.
    seed - seed of the first sample (sample k uses seed + k).
    sampleCount - number of samples to generate.
    device - where the worker runs the networks.
    inputVolume - volume to segment.
    testTimeAugmentation - mirrored test-time augmentation in the segmenter.
    defaultsFromModels - models folder whose bundle defaults were last applied (not shown).
    """

    ventricleVolumeMl: Annotated[float, WithinRange(1.0, 500.0)] = 40.0
    guidanceScale: Annotated[float, WithinRange(0.0, 20.0)] = 4.0
    steps: Annotated[int, WithinRange(1, 1000)] = 50
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    sampleCount: Annotated[int, WithinRange(1, 20)] = 1
    device: Annotated[str, Choice(DEVICES)] = "auto"
    inputVolume: vtkMRMLScalarVolumeNode
    testTimeAugmentation: bool = False
    defaultsFromModels: str = ""


#
# Widget
#


class VentricleSynthWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._task = None

    # -- lifecycle
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/VentricleSynth.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = VentricleSynthLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.generateButton.connect("clicked(bool)", self.onGenerateButton)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.randomSeedButton.connect("clicked(bool)", self.onRandomSeedButton)
        self.ui.refreshModelsButton.connect("clicked(bool)", self.onRefreshModelsButton)
        self.ui.openModelsFolderButton.connect("clicked(bool)", self.onOpenModelsFolderButton)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependenciesButton)

        self.ui.modelsPathLineEdit.currentPath = self.logic.userModelsDir()
        self.ui.modelsPathLineEdit.connect("currentPathChanged(QString)", self.onModelsPathChanged)

        self.ui.volumesTable.setColumnCount(2)
        self.ui.volumesTable.setHorizontalHeaderLabels([_("Structure"), _("Volume (mL)")])
        self.ui.volumesTable.horizontalHeader().setStretchLastSection(True)
        self.ui.modelsTable.horizontalHeader().setStretchLastSection(True)
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.setValue(0)

        self.initializeParameterNode()
        self.updateModelSummary()
        self.updateDependencyStatus()
        self.updateButtons()

    def cleanup(self) -> None:
        if self.logic:
            self.logic.cancelAll(discardResults=True)
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def onReload(self) -> None:
        if self.logic:
            self.logic.cancelAll(discardResults=True)
        reloadLibrary()
        ScriptedLoadableModuleWidget.onReload(self)

    def onSceneStartClose(self, caller, event) -> None:
        # A worker writing into a scene that is going away: stop it and drop what it would load.
        if self.logic:
            self.logic.cancelAll(discardResults=True)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # -- parameter node
    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.GetAttribute("VentricleSynth.Synthetic"):
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self.applyModelDefaults()
            self.updateButtons()

    def applyModelDefaults(self) -> None:
        """Slider range = the mask bundle's trained range; guidance/steps defaults from the bundle, once per
        models folder (a user's own choices are kept afterwards)."""
        defaults = self.logic.generatorDefaults()
        trained = defaults.get("trained_range_ml")
        if trained:
            low, high = trained
            self.ui.ventricleVolumeSliderWidget.minimum = max(0.1, round(low, 1))
            self.ui.ventricleVolumeSliderWidget.maximum = round(high, 1)
            self.ui.trainedRangeLabel.text = _("Trained range: {low:.1f} to {high:.1f} mL ({profile} profile)").format(
                low=low, high=high, profile=defaults.get("profile") or "?")
        else:
            self.ui.trainedRangeLabel.text = _("No mask model found in {folder}").format(folder=self.logic.modelsDir())
        parameterNode = self._parameterNode
        if parameterNode is None or not defaults:
            return
        if parameterNode.defaultsFromModels != defaults.get("models_dir", ""):
            parameterNode.guidanceScale = float(defaults.get("guidance", parameterNode.guidanceScale))
            parameterNode.steps = int(defaults.get("steps", parameterNode.steps))
            if trained:
                parameterNode.ventricleVolumeMl = float(round((trained[0] + trained[1]) / 2, 1))
            parameterNode.defaultsFromModels = defaults.get("models_dir", "")

    # -- state of the panel
    def updateButtons(self, caller=None, event=None) -> None:
        running = self._task is not None and not self._task.finished
        kind = self._task.kind if running else None
        self.ui.generateButton.text = _("Cancel") if kind == "generate" else _("Generate")
        self.ui.segmentButton.text = _("Cancel") if kind == "segment" else _("Segment ventricles")
        self.ui.generateButton.enabled = (not running) or kind == "generate"
        hasInput = bool(self._parameterNode and self._parameterNode.inputVolume)
        self.ui.segmentButton.enabled = (not running and hasInput) or kind == "segment"
        self.ui.segmentButton.toolTip = (_("Stop the segmentation") if kind == "segment" else
                                         _("Segment the ventricles of the input volume") if hasInput else
                                         _("Select an input volume first"))
        self.ui.refreshModelsButton.enabled = not running
        self.ui.installDependenciesButton.enabled = not running

    def setStatus(self, text: str, error: bool = False) -> None:
        self.ui.statusLabel.text = text
        self.ui.statusLabel.setStyleSheet("color: #c0392b;" if error else "")
        if text:
            self.appendLog(("ERROR: " if error else "") + text)

    def appendLog(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)

    # -- worker events
    def onWorkerEvent(self, event) -> None:
        _glue, protocol = _lib()
        if isinstance(event, protocol.Progress):
            self.ui.progressBar.setValue(event.percent)
            self.ui.statusLabel.text = event.describe()
        elif isinstance(event, protocol.Message):
            if event.level == "error":
                self.appendLog("error: " + event.text)
            elif event.level == "warning":
                self.appendLog("warning: " + event.text)
                self.ui.statusLabel.text = _("Warning: ") + event.text
            else:
                self.appendLog(event.text)
        elif isinstance(event, protocol.Result):
            self.appendLog("result: " + json.dumps({k: v for k, v in event.data.items() if k != "files"})[:500])

    def startTask(self, task) -> None:
        if task.finished:  # failed to start: onFinished has already reported it
            return
        self._task = task
        self.ui.progressBar.setValue(0)
        self.setStatus(_("Starting the worker ..."))
        self.appendLog("$ " + " ".join(task.command))
        self.updateButtons()

    def onTaskFinished(self, task) -> None:
        outcome = task.outcome
        if task is self._task:
            self._task = None
        self.updateButtons()
        if outcome.ok:
            self.ui.progressBar.setValue(100)
        self.setStatus(outcome.message, error=outcome.status not in ("ok", "cancelled"))
        if outcome.status not in ("ok", "cancelled"):
            slicer.util.errorDisplay(outcome.message, windowTitle=_("VentricleSynth"))

    # -- Generate
    def onGenerateButton(self) -> None:
        if self._task is not None and not self._task.finished:
            self._task.cancel()
            self.setStatus(_("Cancelling ..."))
            return
        if not self.ensureDependencies():
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to start the generator."), waitCursor=True):
            task = self.logic.generate(p.ventricleVolumeMl, guidance=p.guidanceScale, steps=p.steps, seed=p.seed,
                                       count=p.sampleCount, device=p.device, waitForCompletion=False,
                                       onEvent=self.onWorkerEvent, onFinished=self.onGenerateFinished)
            self.startTask(task)

    def onGenerateFinished(self, task) -> None:
        self.onTaskFinished(task)
        lines = []
        for volumeNode, segmentationNode in task.loaded:
            record = json.loads(volumeNode.GetAttribute("VentricleSynth.Record") or "{}")
            lines.append(_("{name}: asked {asked:.1f} mL, got {got:.1f} mL").format(
                name=volumeNode.GetName(), asked=record.get("asked_ml", float("nan")),
                got=record.get("got_ml", float("nan"))))
        self.ui.generateResultLabel.text = "\n".join(lines)
        if task.loaded:
            self.logic.showSample(*task.loaded[0])

    def onRandomSeedButton(self) -> None:
        if self._parameterNode:
            self._parameterNode.seed = random.randint(0, 2**31 - 1)

    # -- Segment
    def onSegmentButton(self) -> None:
        if self._task is not None and not self._task.finished:
            self._task.cancel()
            self.setStatus(_("Cancelling ..."))
            return
        if not self.ensureDependencies():
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to start the segmenter."), waitCursor=True):
            task = self.logic.segment(p.inputVolume, device=p.device, tta=p.testTimeAugmentation,
                                      waitForCompletion=False, onEvent=self.onWorkerEvent,
                                      onFinished=self.onSegmentFinished)
            self.startTask(task)

    def onSegmentFinished(self, task) -> None:
        self.onTaskFinished(task)
        table = self.ui.volumesTable
        table.setRowCount(0)
        if not task.loaded:
            return
        glue, _protocol = _lib()
        segmentationNode = task.loaded[0]
        report = glue.ventricle_report(segmentationNode)
        rows = list(report["per_label_ml"].items()) + [(_("Ventricular system (total)"), report["ventricle_ml"])]
        table.setRowCount(len(rows))
        for row, (name, ml) in enumerate(rows):
            table.setItem(row, 0, qt.QTableWidgetItem(name))
            item = qt.QTableWidgetItem(f"{ml:.2f}")
            item.setTextAlignment(qt.Qt.AlignRight | qt.Qt.AlignVCenter)
            table.setItem(row, 1, item)
        record = json.loads(segmentationNode.GetAttribute("VentricleSynth.Record") or "{}")
        warnings = record.get("warnings") or []
        self.ui.segmentResultLabel.text = "\n".join(_("Warning: ") + w for w in warnings)

    # -- Models and dependencies
    def onModelsPathChanged(self, path) -> None:
        self.logic.setUserModelsDir(path)
        self.applyModelDefaults()
        self.updateModelSummary()

    def updateModelSummary(self) -> None:
        defaults = self.logic.generatorDefaults()
        folder = self.logic.modelsDir()
        self.ui.modelsCollapsibleButton.toolTip = folder
        if not defaults:
            self.ui.versionsLabel.text = _("Models folder {folder} holds no generator bundle.").format(folder=folder)
        else:
            self.ui.versionsLabel.text = _("Models folder: {folder}. Press 'Verify models' to check checksums.").format(
                folder=folder)

    def onRefreshModelsButton(self) -> None:
        if not self.ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to verify the models."), waitCursor=True):
            task = self.logic.modelsInfo(waitForCompletion=False, onEvent=self.onWorkerEvent,
                                         onFinished=self.onModelsInfoFinished)
            self.startTask(task)

    def onModelsInfoFinished(self, task) -> None:
        self.onTaskFinished(task)
        info = next((r for r in task.outcome.results if r.get("kind") == "models"), None)
        table = self.ui.modelsTable
        table.setRowCount(0)
        if not info:
            return
        models = info.get("models", [])
        table.setRowCount(len(models))
        for row, entry in enumerate(models):
            verified = _("verified") if entry.get("verified") else _("FAILED: ") + entry.get("error", "")
            values = [entry.get("name", ""), str(entry.get("version") or ""), str(entry.get("profile") or ""),
                      verified, (entry.get("sha256") or "")[:12]]
            for column, value in enumerate(values):
                item = qt.QTableWidgetItem(value)
                item.setToolTip(entry.get("path", "") if column == 0 else value)
                table.setItem(row, column, item)
        versions = info.get("versions", {})
        devices = info.get("devices", {})
        self.ui.versionsLabel.text = (
            _("Models folder: {folder}").format(folder=info.get("models_dir", "")) + "\n"
            + ", ".join(f"{k} {v}" for k, v in versions.items() if v) + "\n"
            + _("CUDA: {cuda}; MPS: {mps}").format(cuda=devices.get("cuda_name") or devices.get("cuda"),
                                                 mps=devices.get("mps")))

    def onOpenModelsFolderButton(self) -> None:
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(self.logic.modelsDir()))

    def updateDependencyStatus(self) -> None:
        missing = self.logic.missingDependencies()
        if missing:
            self.ui.dependenciesLabel.text = _("Missing Python packages: {names}").format(names=", ".join(missing))
        else:
            self.ui.dependenciesLabel.text = _("All Python packages the worker needs are installed.")

    def ensureDependencies(self) -> bool:
        if not self.logic.missingDependencies():
            return True
        with slicer.util.tryWithErrorDisplay(_("Failed to install the Python packages."), waitCursor=True):
            self.logic.installDependencies(askConfirmation=True)
        self.updateDependencyStatus()
        missing = self.logic.missingDependencies()
        if missing:
            self.setStatus(_("Cannot run: missing Python packages {names}.").format(names=", ".join(missing)),
                           error=True)
            return False
        return True

    def onInstallDependenciesButton(self) -> None:
        self.ensureDependencies()


#
# Worker task (one run of the worker process)
#


class VentricleSynthTask:
    """One worker run: command, temporary folder, parser, loaded nodes and outcome.

    Non-blocking runs use qt.QProcess (stdout and stderr merged) and call `onEvent(event)` for every
    parsed line and `onFinished(task)` at the end; `runBlocking()` is the scripting/testing mode.
    Results are loaded as soon as their RESULT line arrives (their files are complete by then); the
    temporary folder is removed when the run ends, whatever the outcome.
    """

    def __init__(self, kind, command, cwd, environment, tempDir, protocol, loader=None, onEvent=None,
                 onFinished=None):
        self.kind = kind
        self.command = list(command)
        self.cwd = cwd
        self.environment = dict(environment)
        self.tempDir = tempDir
        self.protocol = protocol
        self.loader = loader
        self.onEvent = onEvent
        self.onFinished = onFinished
        self.loaded = []
        self.loadErrors = []
        self.outcome = None
        self.cancelRequested = False
        self.discardResults = False
        self.process = None
        self._pids = []

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    # -- events
    def handleEvent(self, event) -> None:
        _glue, protocol = _lib()
        if isinstance(event, protocol.Result) and self.loader is not None and not self.discardResults:
            try:
                value = self.loader(event.data)
                if value is not None:
                    self.loaded.append(value)
            except Exception as exc:  # noqa: BLE001 - report and keep reading the worker
                logging.exception("VentricleSynth: could not load a result")
                self.loadErrors.append(f"{exc.__class__.__name__}: {exc}")
        if self.onEvent is not None:
            try:
                self.onEvent(event)
            except Exception:  # noqa: BLE001 - a GUI callback must not stop the run
                logging.exception("VentricleSynth: event callback failed")

    # -- blocking mode
    def runBlocking(self, timeout=None):
        _glue, protocol = _lib()
        outcome = protocol.run_worker(self.command, env=self.environment, cwd=self.cwd, on_event=self.handleEvent,
                                      protocol=self.protocol, timeout=timeout,
                                      should_cancel=lambda: self.cancelRequested)
        self._finish(outcome)
        return self.outcome

    # -- QProcess mode
    def start(self) -> None:
        process = qt.QProcess()
        process.setProcessChannelMode(qt.QProcess.MergedChannels)
        process.setWorkingDirectory(self.cwd)
        environment = qt.QProcessEnvironment()
        for key, value in self.environment.items():
            environment.insert(key, value)
        process.setProcessEnvironment(environment)
        process.connect("readyReadStandardOutput()", self._onReadyRead)
        process.connect("finished(int,QProcess::ExitStatus)", self._onProcessFinished)
        process.connect("errorOccurred(QProcess::ProcessError)", self._onProcessError)
        self.process = process
        process.start(self.command[0], self.command[1:])

    def _read(self) -> None:
        if self.process is None:
            return
        data = self.process.readAllStandardOutput()
        raw = data.data() if hasattr(data, "data") else data
        if isinstance(raw, str):
            raw = raw.encode("utf-8", errors="replace")
        for event in self.protocol.feed(bytes(raw)):
            self.handleEvent(event)

    def _onReadyRead(self) -> None:
        self._read()

    def _onProcessFinished(self, exitCode, exitStatus) -> None:
        if self.finished:
            return
        self._read()
        for event in self.protocol.flush():
            self.handleEvent(event)
        _glue, protocol = _lib()
        crashed = exitStatus == qt.QProcess.CrashExit
        if self._pids:  # whatever the cancelled worker had started must not outlive it
            protocol.signal_pids(self._pids, getattr(signal, "SIGKILL", signal.SIGTERM))
        self._finish(self.protocol.finish(None if crashed else int(exitCode), cancel_requested=self.cancelRequested,
                                          crashed=crashed))

    def _onProcessError(self, error) -> None:
        if error == qt.QProcess.FailedToStart and not self.finished:
            _glue, protocol = _lib()
            message = _("Could not start the worker ({program}): is Slicer's Python launcher present?")
            self._finish(protocol.Outcome("failed", None, message.format(program=self.command[0])))

    def cancel(self, discardResults=False) -> None:
        """Stop the worker: 'cancel' on its stdin and SIGTERM to its whole process tree (it cleans up and
        exits 130), SIGKILL/taskkill for whatever is left after 3 s."""
        if discardResults:
            self.discardResults = True
        if self.finished or self.cancelRequested:
            return
        self.cancelRequested = True
        if self.process is None:
            return  # blocking mode: run_worker polls cancelRequested
        _glue, protocol = _lib()
        pid = int(self.process.processId() or 0) or None
        self._pids = protocol.process_tree(pid, [self.protocol.pid] if self.protocol.pid else [])
        try:
            self.process.write(qt.QByteArray(b"cancel\n"))
            self.process.closeWriteChannel()
        except Exception:  # noqa: BLE001 - best effort; signals follow
            pass
        protocol.signal_pids(self._pids)
        qt.QTimer.singleShot(3000, self._forceKill)

    def _forceKill(self) -> None:
        if self.finished or self.process is None:
            return
        _glue, protocol = _lib()
        if os.name == "nt":
            protocol.kill_process_tree(int(self.process.processId() or 0) or None, timeout=0,
                                       extra_pids=[self.protocol.pid] if self.protocol.pid else [])
        else:
            protocol.signal_pids(self._pids, getattr(signal, "SIGKILL", signal.SIGTERM))
        self.process.kill()

    def _finish(self, outcome) -> None:
        if self.finished:
            return
        if self.tempDir:
            shutil.rmtree(self.tempDir, ignore_errors=True)
        _glue, protocol = _lib()
        if outcome.ok and self.loadErrors:
            outcome = protocol.Outcome("failed", outcome.exit_code,
                                       _("The worker finished but its results could not be loaded: ")
                                       + "; ".join(self.loadErrors), outcome.results)
        elif outcome.status == "cancelled" and self.loaded:
            outcome = protocol.Outcome("cancelled", outcome.exit_code,
                                       _("Cancelled; {n} finished result(s) kept.").format(n=len(self.loaded)),
                                       outcome.results)
        self.outcome = outcome
        if self.process is not None:
            self.process.deleteLater()
        if self.onFinished is not None:
            try:
                self.onFinished(self)
            except Exception:  # noqa: BLE001
                logging.exception("VentricleSynth: finished callback failed")


#
# Logic
#


class VentricleSynthLogic(ScriptedLoadableModuleLogic):
    """Facade for scripts and the widget. Example (blocking, from Slicer's Python console):

        from VentricleSynth import VentricleSynthLogic
        from VentricleSynthLib import slicer_glue
        logic = VentricleSynthLogic()
        task = logic.generate(45.0, count=2, device="cpu", waitForCompletion=True)
        print(task.outcome.message)
        volumeNode, segmentationNode = task.loaded[0]
        task = logic.segment(volumeNode, waitForCompletion=True)
        print(slicer_glue.ventricle_report(task.loaded[0]))
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.tasks = []

    def getParameterNode(self):
        return VentricleSynthParameterNode(super().getParameterNode())

    # -- locations
    @staticmethod
    def moduleDir() -> str:
        return os.path.dirname(os.path.abspath(__file__))

    def bundledModelsDir(self) -> str:
        return os.path.join(self.moduleDir(), "Resources", "Models")

    def userModelsDir(self) -> str:
        value = qt.QSettings().value(SETTINGS_MODELS_DIR, "")
        return str(value or "")

    def setUserModelsDir(self, path) -> None:
        qt.QSettings().setValue(SETTINGS_MODELS_DIR, str(path or ""))

    def modelsDir(self) -> str:
        """The user's folder (Models section) if set, else $VENTRICLESYNTH_MODELS, else the bundled models."""
        user = self.userModelsDir()
        if user and os.path.isdir(user):
            return user
        env = os.environ.get("VENTRICLESYNTH_MODELS")
        if env and os.path.isdir(env):
            return env
        return self.bundledModelsDir()

    def requirementsPath(self) -> str:
        return os.path.join(self.moduleDir(), "Resources", "requirements.txt")

    def pythonExecutable(self) -> str:
        """Slicer's `PythonSlicer` launcher (sets up Slicer's Python environment), else this interpreter."""
        names = ["PythonSlicer.exe", "PythonSlicer"] if os.name == "nt" else ["PythonSlicer"]
        app = getattr(slicer, "app", None)
        home = getattr(app, "slicerHome", None) if app is not None else None
        for name in names:
            if home:
                candidate = os.path.join(home, "bin", name)
                if os.path.isfile(candidate):
                    return candidate
            found = shutil.which(name)
            if found:
                return found
        return sys.executable

    def workerEnvironment(self, python=None) -> dict:
        """Environment of the worker: Slicer's startup environment when the PythonSlicer launcher runs it
        (the launcher sets up Slicer's paths), else this process's environment."""
        python = python or self.pythonExecutable()
        environment = None
        if os.path.basename(python).lower().startswith("pythonslicer"):
            try:
                environment = dict(slicer.util.startupEnvironment())
            except Exception:  # noqa: BLE001 - older Slicer, or outside the application
                environment = None
        if not environment:
            environment = dict(os.environ)
        environment.update({"PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8", "PYTHONNOUSERSITE": "1"})
        environment.setdefault("nnUNet_n_proc_DA", "0")
        return environment

    def workerCwd(self) -> str:
        """`python -m VentricleSynthLib` finds the package in the working directory."""
        return LIBRARY_PARENT_DIR or self.moduleDir()

    def temporaryDirectory(self) -> str:
        app = getattr(slicer, "app", None)
        base = getattr(app, "temporaryPath", None) if app is not None else None
        if base:
            os.makedirs(base, exist_ok=True)
        return tempfile.mkdtemp(prefix="VentricleSynth-", dir=base or None)

    def generatorDefaults(self) -> dict:
        _glue, protocol = _lib()
        return protocol.read_generator_defaults(self.modelsDir())

    # -- dependencies
    def missingDependencies(self) -> list:
        """pip names of the worker's packages that Slicer's Python cannot find (nothing is imported)."""
        import importlib.util

        missing = []
        for module, requirement in WORKER_PACKAGES.items():
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                missing.append(requirement)
        return missing

    def installDependencies(self, askConfirmation=True) -> None:
        """PyTorch through the PyTorch extension (PyTorchUtils) when present, then Resources/requirements.txt
        through `slicer.packaging.pip_ensure` (Slicer >= 5.12) or `slicer.util.pip_install`."""
        missing = self.missingDependencies()
        if not missing:
            return
        if "torch" in missing:
            try:
                import PyTorchUtils
            except ImportError:
                PyTorchUtils = None
            if PyTorchUtils is not None:
                torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=askConfirmation)
                if torch is None:
                    raise RuntimeError(_("PyTorch was not installed (cancelled)."))
            else:
                if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                        _("VentricleSynth needs PyTorch. Install it now with pip (CPU/GPU build chosen by pip)? "
                          "The PyTorch extension picks the right GPU build; install it from the Extensions Manager "
                          "for GPU support.")):
                    raise RuntimeError(_("PyTorch was not installed (cancelled)."))
                slicer.util.pip_install("torch")
        requirements = self.requirementsPath()
        packaging = getattr(slicer, "packaging", None)
        if packaging is not None and hasattr(packaging, "pip_ensure"):
            packaging.pip_ensure(packaging.load_requirements(requirements), requester="VentricleSynth",
                                 prompt_install=askConfirmation, skip_packages=["torch", "SimpleITK", "requests"])
        else:
            if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                    _("VentricleSynth needs these Python packages: {names}. Install them now?").format(
                        names=", ".join(m for m in self.missingDependencies() if m != "torch"))):
                raise RuntimeError(_("The Python packages were not installed (cancelled)."))
            slicer.util.pip_install(["-r", requirements])

    # -- running the worker
    def _run(self, kind, command, tempDir, plan=None, count=1, loader=None, waitForCompletion=False, onEvent=None,
             onFinished=None, timeout=None):
        _glue, protocol = _lib()
        parser = protocol.WorkerProtocol(plan=plan, count=count)
        task = VentricleSynthTask(kind, command, self.workerCwd(), self.workerEnvironment(command[0]), tempDir, parser,
                                  loader=loader, onEvent=onEvent, onFinished=onFinished)
        self.tasks.append(task)
        previous = task.onFinished

        def finished(t):
            if t in self.tasks:
                self.tasks.remove(t)
            if previous is not None:
                previous(t)

        task.onFinished = finished
        if waitForCompletion:
            task.runBlocking(timeout=timeout)
        else:
            task.start()
        return task

    def generate(self, ventricleMl, guidance=None, steps=None, seed=0, count=1, device="auto",
                 waitForCompletion=False, onEvent=None, onFinished=None, labels="ventricles", timeout=None):
        """Generate `count` samples with `ventricleMl` of ventricles. Each RESULT becomes
        (synthetic volume node, segmentation node) in `task.loaded`. Returns the task."""
        glue, protocol = _lib()
        tempDir = self.temporaryDirectory()
        command = protocol.generate_command(self.pythonExecutable(), os.path.join(tempDir, "out"), ventricleMl,
                                            guidance=guidance, steps=steps, seed=seed, count=count, device=device,
                                            models=self.modelsDir())
        plan = [("mask", int(steps)), ("image", int(steps))] if steps else None

        def load(result):
            if result.get("kind") != "sample":
                return None
            return glue.load_sample(result, labels=labels)

        return self._run("generate", command, tempDir, plan=plan, count=count, loader=load,
                         waitForCompletion=waitForCompletion, onEvent=onEvent, onFinished=onFinished, timeout=timeout)

    def segment(self, inputVolumeNode, device="auto", tta=False, waitForCompletion=False, onEvent=None,
                onFinished=None, timeout=None):
        """Segment the ventricles of `inputVolumeNode`; the segmentation node (on that volume's grid and
        parent transform) is `task.loaded[0]`. Returns the task."""
        if inputVolumeNode is None:
            raise ValueError(_("Select an input volume."))
        glue, protocol = _lib()
        tempDir = self.temporaryDirectory()
        try:
            inputPath = os.path.join(tempDir, "input.nii.gz")
            glue.write_node(inputVolumeNode, inputPath)
        except Exception:
            shutil.rmtree(tempDir, ignore_errors=True)
            raise
        command = protocol.segment_command(self.pythonExecutable(), inputPath, os.path.join(tempDir, "out"),
                                           device=device, models=self.modelsDir(), tta=tta)

        def load(result):
            if result.get("kind") != "segmentation":
                return None
            return glue.load_segmentation_result(result, inputVolumeNode)

        return self._run("segment", command, tempDir, plan=[("segment", 1)], count=1, loader=load,
                         waitForCompletion=waitForCompletion, onEvent=onEvent, onFinished=onFinished,
                         timeout=timeout)

    def modelsInfo(self, waitForCompletion=True, onEvent=None, onFinished=None, timeout=None):
        """`worker info`: bundles with verified checksums, versions, devices (in `task.outcome.results`)."""
        _glue, protocol = _lib()
        command = protocol.info_command(self.pythonExecutable(), models=self.modelsDir())
        return self._run("info", command, None, waitForCompletion=waitForCompletion, onEvent=onEvent,
                         onFinished=onFinished, timeout=timeout)

    def isRunning(self) -> bool:
        return any(not task.finished for task in self.tasks)

    def cancelAll(self, discardResults=False) -> None:
        for task in list(self.tasks):
            task.cancel(discardResults=discardResults)

    # -- display
    def showSample(self, volumeNode, segmentationNode=None) -> None:
        try:
            slicer.util.setSliceViewerLayers(background=volumeNode, fit=True)
        except Exception:  # noqa: BLE001 - no layout (batch mode)
            pass
        if segmentationNode is not None and segmentationNode.GetDisplayNode() is not None:
            segmentationNode.GetDisplayNode().SetVisibility(True)


#
# Test
#


class VentricleSynthTest(ScriptedLoadableModuleTest):
    """Inside Slicer: protocol sanity, then generate with the bundled models on CPU, segment the sample,
    and check nodes, tags, geometry and volumes; also a non-blocking run cancelled midway."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ProtocolAndCommands()
        self.setUp()
        self.test_GenerateAndSegment()
        self.setUp()
        self.test_CancelNonBlocking()

    def _logicOrSkip(self):
        logic = VentricleSynthLogic()
        missing = logic.missingDependencies()
        if missing:
            self.skipTest(f"Python packages missing in Slicer: {', '.join(missing)} "
                          "(install them from the Models section)")
        if not logic.generatorDefaults():
            self.skipTest(f"no bundled generator models in {logic.modelsDir()}")
        return logic

    def test_ProtocolAndCommands(self):
        self.delayDisplay("Worker protocol")
        _glue, protocol = _lib()
        parser = protocol.WorkerProtocol()
        events = parser.feed("PLAN count=2 stages=mask:2,image:2\nPROGRESS stage=mask step=1/2 sample=1/2\nPROG")
        events += parser.feed("RESS stage=image step=2/2 sample=2/2\nRESULT {\"kind\": \"sample\"}\n")
        fractions = [e.fraction for e in events if isinstance(e, protocol.Progress)]
        self.assertEqual(fractions, [0.125, 1.0])
        self.assertEqual(parser.results, [{"kind": "sample"}])
        self.assertEqual(parser.finish(130, cancel_requested=True).status, "cancelled")
        logic = VentricleSynthLogic()
        command = protocol.generate_command(logic.pythonExecutable(), "/tmp/out", 40.0, steps=5, count=2)
        self.assertEqual(command[1:5], ["-m", "VentricleSynthLib", "worker", "generate"])
        self.assertIn("--watch-stdin", command)
        self.delayDisplay("Protocol test passed")

    def test_GenerateAndSegment(self):
        logic = self._logicOrSkip()
        glue, _protocol = _lib()
        defaults = logic.generatorDefaults()
        low, high = defaults["trained_range_ml"]
        asked = round((low + high) / 2, 1)
        self.delayDisplay(f"Generating one sample with {asked} mL of ventricles on the CPU")
        task = logic.generate(asked, seed=7, count=1, device="cpu", waitForCompletion=True, timeout=1800)
        self.assertTrue(task.outcome.ok, task.outcome.message)
        self.assertEqual(len(task.loaded), 1)
        volumeNode, segmentationNode = task.loaded[0]
        self.assertTrue(glue.is_synthetic(volumeNode))
        self.assertTrue(volumeNode.GetName().startswith(glue.SYNTHETIC_PREFIX))
        self.assertEqual(volumeNode.GetAttribute(glue.SYNTHETIC_ATTRIBUTE), "1")
        self.assertTrue(glue.is_synthetic(segmentationNode))
        record = json.loads(volumeNode.GetAttribute(glue.RECORD_ATTRIBUTE))
        self.assertAlmostEqual(record["asked_ml"], asked, places=3)
        names = [segmentationNode.GetSegmentation().GetNthSegment(i).GetName()
                 for i in range(segmentationNode.GetSegmentation().GetNumberOfSegments())]
        self.assertEqual(names, ["Left-Lateral-Ventricle", "Right-Lateral-Ventricle", "Left-Inf-Lat-Vent",
                                 "Right-Inf-Lat-Vent", "3rd-Ventricle", "4th-Ventricle"])
        self.assertTrue(segmentationNode.GetSegmentation().ContainsRepresentation(
            slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()))
        report = glue.ventricle_report(segmentationNode)
        self.assertAlmostEqual(report["ventricle_ml"], record["got_ml"], delta=0.01)
        self.assertFalse(os.path.exists(task.tempDir), "temporary folder left behind")

        self.delayDisplay("Segmenting the synthetic sample")
        task = logic.segment(volumeNode, device="cpu", waitForCompletion=True, timeout=1800)
        if task.outcome.status == "user_error" and "segmenter" in task.outcome.message:
            self.delayDisplay("Segmenter not available in this build: " + task.outcome.message)
            return
        self.assertTrue(task.outcome.ok, task.outcome.message)
        segmented = task.loaded[0]
        segmentedReport = glue.ventricle_report(segmented)
        self.assertGreater(segmentedReport["ventricle_ml"], 0.0)
        # same grid as the input volume
        image = segmented.GetSegmentation().GetSegment(
            segmented.GetSegmentation().GetNthSegmentID(0)).GetRepresentation(
            slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName())
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        error = glue.geometry_error_voxels(glue.numpy_matrix(matrix), glue.affine_from_node(volumeNode),
                                           volumeNode.GetImageData().GetDimensions())
        self.assertLess(error, 0.5)
        self.delayDisplay(f"Generated {record['got_ml']:.1f} mL, segmented {segmentedReport['ventricle_ml']:.1f} mL")

    def test_CancelNonBlocking(self):
        logic = self._logicOrSkip()
        _glue, protocol = _lib()
        self.delayDisplay("Cancelling a running generation")
        seen = []
        done = []
        task = logic.generate(logic.generatorDefaults()["trained_range_ml"][0] + 1.0, count=5, device="cpu",
                              waitForCompletion=False, onEvent=seen.append, onFinished=done.append)
        timer = qt.QElapsedTimer()
        timer.start()
        while not any(isinstance(e, protocol.Progress) for e in seen) and not done and timer.elapsed() < 600000:
            slicer.app.processEvents()
            time.sleep(0.02)
        self.assertFalse(done, "the run ended before it could be cancelled")
        task.cancel()
        while not done and timer.elapsed() < 600000:
            slicer.app.processEvents()
            time.sleep(0.02)
        self.assertTrue(done)
        self.assertEqual(task.outcome.status, "cancelled", task.outcome.message)
        self.assertFalse(os.path.exists(task.tempDir))
        self.assertFalse(logic.isRunning())
        self.delayDisplay("Cancel test passed")
