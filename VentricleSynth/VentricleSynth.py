"""VentricleSynth: generate labelled synthetic brain MRI with a requested ventricle volume, and segment
the ventricles of a scan, from a Slicer panel (Ruschke et al. 2024).

Thin by design: no machine learning runs in Slicer's process. `VentricleSynthLib.slicer_glue` writes inputs to a
temporary folder, runs `python -m VentricleSynthLib worker ...` with Slicer's Python through QProcess, follows its
PROGRESS lines and loads the files its RESULT lines name; the worker alone imports torch, monai and nnU-Net.
"""

import importlib
import json
import os
import random
import sys
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
except ImportError:  # Slicer < 5.4: texts as they are
    _ = str


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
PAPER = ('Ruschke et al. 2024, "Guided Synthesis of Labeled Brain MRI Data Using Latent Diffusion Models for '
         'Segmentation of Enlarged Ventricles", arXiv:2411.01351')


def _lib(name):  # `VentricleSynthLib.<name>`, imported when first used (after `_addLibraryToPath`; no torch)
    return importlib.import_module("VentricleSynthLib." + name)


def reloadLibrary():
    """Reload every VentricleSynthLib module imported, after those it imports (importlib; Python 3.12 has no imp)."""
    for name in _lib("slicer_glue.reloading").reload_order():
        importlib.reload(sys.modules[name])


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


@parameterNodeWrapper
class VentricleSynthParameterNode:
    ventricleVolumeMl: Annotated[float, WithinRange(1.0, 500.0)] = 40.0  # requested ventricular system (mL)
    guidanceScale: Annotated[float, WithinRange(0.0, 20.0)] = 4.0  # classifier-free guidance of the mask model
    steps: Annotated[int, WithinRange(1, 1000)] = 50  # DDIM steps per stage
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0  # seed of the first sample (sample k uses seed + k)
    sampleCount: Annotated[int, WithinRange(1, 20)] = 1  # number of samples to generate
    device: Annotated[str, Choice(["auto", "cpu", "cuda", "mps"])] = "auto"  # where the worker runs the networks
    inputVolume: vtkMRMLScalarVolumeNode  # volume to segment
    testTimeAugmentation: bool = False  # mirrored test-time augmentation in the segmenter
    defaultsFromModels: str = ""  # models folder whose bundle defaults were last applied (not shown)


class VentricleSynthWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._task = None

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
        self.ui.installDependenciesButton.connect("clicked(bool)", self.ensureDependencies)
        self.ui.modelsPathLineEdit.currentPath = self.logic.userModelsDir()
        self.ui.modelsPathLineEdit.connect("currentPathChanged(QString)", self.onModelsPathChanged)
        _lib("slicer_glue.panel").prepare(self.ui)
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
        _lib("slicer_glue.panel").apply_model_defaults(self.ui, self._parameterNode, self.logic.generatorDefaults(),
                                                       self.logic.modelsDir())

    def updateButtons(self, caller=None, event=None) -> None:
        hasInput = bool(self._parameterNode and self._parameterNode.inputVolume)
        _lib("slicer_glue.panel").update_buttons(self.ui, self._task, hasInput)

    def setStatus(self, text: str, error: bool = False) -> None:
        self.ui.statusLabel.text = text
        self.ui.statusLabel.setStyleSheet("color: #c0392b;" if error else "")
        if text:
            self.ui.logTextEdit.appendPlainText(("ERROR: " if error else "") + text)

    def onWorkerEvent(self, event) -> None:
        _lib("slicer_glue.panel").show_event(self.ui, event)

    def runOrCancel(self, start, failure) -> None:
        """Cancel the running task (its button reads Cancel), else start one: `start()` returns the task."""
        if self._task is not None and not self._task.finished:
            self._task.cancel()
            self.setStatus(_("Cancelling ..."))
            return
        if not self.ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay(failure, waitCursor=True):
            task = start()
            if task.finished:  # failed to start: onTaskFinished has already reported it
                return
            self._task = task
            self.ui.progressBar.setValue(0)
            self.setStatus(_("Starting the worker ..."))
            self.ui.logTextEdit.appendPlainText("$ " + " ".join(task.command))
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
        _lib("slicer_glue.panel").show_result(self.ui, task)  # a generated sample is shown in the views

    def onGenerateButton(self) -> None:
        p = self._parameterNode
        self.runOrCancel(lambda: self.logic.generate(
            p.ventricleVolumeMl, guidance=p.guidanceScale, steps=p.steps, seed=p.seed, count=p.sampleCount,
            device=p.device, waitForCompletion=False, onEvent=self.onWorkerEvent, onFinished=self.onTaskFinished),
            _("Failed to start the generator."))

    def onRandomSeedButton(self) -> None:
        if self._parameterNode:
            self._parameterNode.seed = random.randint(0, 2**31 - 1)

    def onSegmentButton(self) -> None:
        p = self._parameterNode
        self.runOrCancel(lambda: self.logic.segment(
            p.inputVolume, device=p.device, tta=p.testTimeAugmentation, waitForCompletion=False,
            onEvent=self.onWorkerEvent, onFinished=self.onTaskFinished), _("Failed to start the segmenter."))

    def onRefreshModelsButton(self) -> None:
        self.runOrCancel(lambda: self.logic.modelsInfo(
            waitForCompletion=False, onEvent=self.onWorkerEvent, onFinished=self.onTaskFinished),
            _("Failed to verify the models."))

    def onModelsPathChanged(self, path) -> None:
        self.logic.setUserModelsDir(path)
        self.applyModelDefaults()
        self.updateModelSummary()

    def updateModelSummary(self) -> None:
        _lib("slicer_glue.panel").show_models_folder(self.ui, self.logic.generatorDefaults(), self.logic.modelsDir())

    def onOpenModelsFolderButton(self) -> None:
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(self.logic.modelsDir()))

    def updateDependencyStatus(self) -> None:
        self.ui.dependenciesLabel.text = _lib("slicer_glue.panel").dependencies_text(self.logic.missingDependencies())

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


class VentricleSynthLogic(ScriptedLoadableModuleLogic):
    """Facade over `VentricleSynthLib.slicer_glue` for the widget and scripts, e.g. in Slicer's Python console:
    `task = VentricleSynthLogic().generate(45.0, waitForCompletion=True)`, then `task.outcome`, `task.loaded`."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.tasks = []

    def getParameterNode(self):
        return VentricleSynthParameterNode(super().getParameterNode())

    @staticmethod
    def moduleDir() -> str:
        return os.path.dirname(os.path.abspath(__file__))

    def userModelsDir(self) -> str:
        return _lib("slicer_glue.environment").user_models_dir()

    def setUserModelsDir(self, path) -> None:
        _lib("slicer_glue.environment").set_user_models_dir(path)

    def modelsDir(self) -> str:
        """The user's folder (Models section) if set, else $VENTRICLESYNTH_MODELS, else the bundled models."""
        return _lib("slicer_glue.environment").models_dir(self.userModelsDir())

    def generatorDefaults(self) -> dict:
        return _lib("generation.settings").panel_defaults(self.modelsDir())

    def missingDependencies(self) -> list:
        return _lib("slicer_glue.dependencies").missing_dependencies()

    def installDependencies(self, askConfirmation=True) -> None:
        requirements = os.path.join(self.moduleDir(), "Resources", "requirements.txt")
        _lib("slicer_glue.dependencies").install_dependencies(requirements, ask_confirmation=askConfirmation)

    def _launch(self, makeTask, waitForCompletion, timeout, **options):
        environment = _lib("slicer_glue.environment")
        task = makeTask(environment.python_executable(), self.modelsDir(),
                        environment.worker_cwd(LIBRARY_PARENT_DIR, self.moduleDir()), **options)
        return _lib("slicer_glue.task").launch(task, self.tasks, wait=waitForCompletion, timeout=timeout)

    def generate(self, ventricleMl, guidance=None, steps=None, seed=0, count=1, device="auto",
                 waitForCompletion=False, onEvent=None, onFinished=None, labels="ventricles", timeout=None):
        """`count` samples of `ventricleMl` mL: (synthetic volume, segmentation) in `task.loaded`; returns the task."""
        return self._launch(_lib("slicer_glue.runs").generate_task, waitForCompletion, timeout,
                            ventricle_ml=ventricleMl, guidance=guidance, steps=steps, seed=seed, count=count,
                            device=device, labels=labels, on_event=onEvent, on_finished=onFinished)

    def segment(self, inputVolumeNode, device="auto", tta=False, waitForCompletion=False, onEvent=None,
                onFinished=None, timeout=None):
        """The ventricles of `inputVolumeNode`: `task.loaded[0]`, on its grid and parent transform."""
        return self._launch(_lib("slicer_glue.runs").segment_task, waitForCompletion, timeout,
                            input_volume_node=inputVolumeNode, device=device, tta=tta, on_event=onEvent,
                            on_finished=onFinished)

    def modelsInfo(self, waitForCompletion=True, onEvent=None, onFinished=None, timeout=None):
        """`worker info`: bundles with verified checksums, versions, devices (in `task.outcome.results`)."""
        return self._launch(_lib("slicer_glue.runs").info_task, waitForCompletion, timeout, on_event=onEvent,
                            on_finished=onFinished)

    def isRunning(self) -> bool:
        return any(not task.finished for task in self.tasks)

    def cancelAll(self, discardResults=False) -> None:
        for task in list(self.tasks):
            task.cancel(discardResults=discardResults)


class VentricleSynthTest(ScriptedLoadableModuleTest):
    """In Slicer, bundled models on CPU: generate, segment, cancel (the glue is unit-tested under Testing/)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_GenerateAndSegment, self.test_CancelNonBlocking):
            self.setUp()
            test()

    def _logicOrSkip(self):
        logic = VentricleSynthLogic()
        if logic.missingDependencies() or not logic.generatorDefaults():
            self.skipTest(f"missing Python packages or no generator models in {logic.modelsDir()}")
        return logic

    def test_GenerateAndSegment(self):
        logic, mrml = self._logicOrSkip(), _lib("slicer_glue.mrml")
        report = _lib("slicer_glue.segmentation_nodes").ventricle_report
        low, high = logic.generatorDefaults()["trained_range_ml"]
        self.delayDisplay("Generating one sample on the CPU")
        task = logic.generate(round((low + high) / 2, 1), seed=7, device="cpu", waitForCompletion=True, timeout=1800)
        self.assertTrue(task.outcome.ok, task.outcome.message)
        self.assertFalse(os.path.exists(task.tempDir), "temporary folder left behind")
        volumeNode, segmentationNode = task.loaded[0]
        self.assertTrue(volumeNode.GetName().startswith(mrml.SYNTHETIC_PREFIX) and mrml.is_synthetic(volumeNode))
        self.assertTrue(mrml.is_synthetic(segmentationNode))
        record = json.loads(volumeNode.GetAttribute(mrml.RECORD_ATTRIBUTE))
        self.assertAlmostEqual(report(segmentationNode)["ventricle_ml"], record["got_ml"], delta=0.01)
        self.delayDisplay("Segmenting the synthetic sample")
        task = logic.segment(volumeNode, device="cpu", waitForCompletion=True, timeout=1800)
        self.assertTrue(task.outcome.ok, task.outcome.message)
        self.assertGreater(report(task.loaded[0])["ventricle_ml"], 0.0)

    def test_CancelNonBlocking(self):
        logic, Progress = self._logicOrSkip(), _lib("worker.protocol").Progress
        self.delayDisplay("Cancelling a running generation")
        seen, done = [], []
        task = logic.generate(logic.generatorDefaults()["trained_range_ml"][0] + 1.0, count=5, device="cpu",
                              waitForCompletion=False, onEvent=seen.append, onFinished=done.append)
        deadline = time.monotonic() + 600
        while not any(isinstance(e, Progress) for e in seen) and not done and time.monotonic() < deadline:
            slicer.app.processEvents()
            time.sleep(0.02)
        self.assertFalse(done, "the run ended before it could be cancelled")
        task.cancel()
        while not done and time.monotonic() < deadline:
            slicer.app.processEvents()
            time.sleep(0.02)
        self.assertEqual(task.outcome.status, "cancelled", task.outcome.message)
        self.assertFalse(os.path.exists(task.tempDir))
        self.assertFalse(logic.isRunning())
