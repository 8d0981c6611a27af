"""VentricleSynth: generate labelled synthetic brain MRI with a requested ventricle volume, and segment
the ventricles of a scan, from a Slicer panel (Ruschke et al. 2024).

Thin by design: no machine learning runs in Slicer's process. `VentricleSynthLib.slicer_glue` writes inputs to a
temporary folder, runs `python -m VentricleSynthLib worker ...` with Slicer's Python through QProcess, follows its
PROGRESS lines and loads the files its RESULT lines name; the worker alone imports torch, monai and nnU-Net.
"""

import importlib
import logging
import os
import random
import sys
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


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


def _lib(name):  # `VentricleSynthLib.<name>`, imported when first used (after `_addLibraryToPath`; no torch)
    return importlib.import_module("VentricleSynthLib." + name)


REFUSAL = _lib("slicer_glue.compatibility").running_refusal()  # Slicer 5.8 (Python 3.9): this message, no panel


def reloadLibrary():
    """Reload every VentricleSynthLib module imported, after those it imports (importlib; Python 3.12 has no imp)."""
    for name in _lib("slicer_glue.reloading").reload_order():
        importlib.reload(sys.modules[name])


class VentricleSynth(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("VentricleSynth")
        texts = _lib("slicer_glue.module_texts")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = texts.CONTRIBUTORS
        self.parent.helpText = texts.help_text()
        self.parent.acknowledgementText = texts.acknowledgement_text()


_panel, _sampling = _lib("slicer_glue.panel"), _lib("generation.settings")


@parameterNodeWrapper
class VentricleSynthParameterNode:
    ventricleVolumeMl: Annotated[float, WithinRange(*_panel.VOLUME_RANGE_ML)] = 40.0  # requested ventricles (mL)
    guidanceScale: Annotated[float, WithinRange(0.0, _sampling.MAX_GUIDANCE)] = 4.0  # mask model's guidance
    maskSteps: Annotated[int, WithinRange(1, _sampling.MAX_STEPS)] = 50  # DDIM steps of the mask model
    imageSteps: Annotated[int, WithinRange(1, _sampling.MAX_STEPS)] = 50  # DDIM steps of the image model
    refine: bool = True  # move the label map to exactly the asked volume (off: the paper's method)
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
        self._segmentation = None  # the last segmentation, whose volume table Export saves

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        if REFUSAL:  # an unsupported Slicer: one message instead of a panel that would fail half-way
            label = qt.QLabel(REFUSAL)
            label.wordWrap = True
            self.layout.addWidget(label)
            self.layout.addStretch(1)
            logging.warning(REFUSAL)
            return
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
        self.ui.exportVolumesButton.connect("clicked(bool)", self.onExportVolumesButton)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.ensureDependencies)
        self.ui.modelsPathLineEdit.currentPath = self.logic.userModelsDir()
        self.ui.modelsPathLineEdit.connect("currentPathChanged(QString)", self.onModelsPathChanged)
        _panel.prepare(self.ui)
        self.initializeParameterNode()
        self.updateModelSummary()
        self.updateDependencyStatus()
        self.updateButtons()

    def cleanup(self) -> None:
        if self.logic:
            self.logic.cancelAll(discardResults=True)
        self.removeObservers()

    def enter(self) -> None:
        if self.logic:
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
            first = _panel.default_input_volume(slicer.mrmlScene)  # never a label map or a synthetic sample
            if first:
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
        _panel.apply_model_defaults(self.ui, self._parameterNode, self.logic.generatorDefaults(),
                                                       self.logic.modelsDir())

    def updateButtons(self, caller=None, event=None) -> None:
        hasInput = bool(self._parameterNode and self._parameterNode.inputVolume)
        if self._segmentation is not None and self._segmentation.GetScene() is None:
            self._segmentation = None  # deleted, or its scene closed
        _panel.update_buttons(self.ui, self._task, hasInput, self._segmentation)

    def setStatus(self, text: str, error: bool = False) -> None:
        self.ui.statusLabel.text = text
        self.ui.statusLabel.setStyleSheet("color: #c0392b;" if error else "")
        if text:
            self.ui.logTextEdit.appendPlainText(("ERROR: " if error else "") + text)

    def onWorkerEvent(self, event) -> None:
        _panel.show_event(self.ui, event)

    def runOrCancel(self, start, failure, needsPackages=True) -> None:
        """Cancel the running task (its button reads Cancel), else start one: `start()` returns the task."""
        if self._task is not None and not self._task.finished:
            self._task.cancel()
            self.setStatus(_("Cancelling ..."))
            return
        if needsPackages and not self.ensureDependencies():
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
        if task.discardResults:  # scene closed, module reloaded or panel gone: nothing of this run is shown
            return
        if task.kind == "segment" and task.loaded:
            self._segmentation = task.loaded[0]
        self.updateButtons()
        if outcome.ok:
            self.ui.progressBar.setValue(100)
        self.setStatus(outcome.message, error=outcome.status not in ("ok", "cancelled"))
        if outcome.status not in ("ok", "cancelled"):
            slicer.util.errorDisplay(outcome.message, windowTitle=_("VentricleSynth"))
        _panel.show_result(self.ui, task)  # a generated sample is shown in the views

    def onGenerateButton(self) -> None:
        p = self._parameterNode
        self.runOrCancel(lambda: self.logic.generate(
            p.ventricleVolumeMl, guidance=p.guidanceScale, steps=p.maskSteps, imageSteps=p.imageSteps, seed=p.seed,
            count=p.sampleCount, device=p.device, refine=p.refine, waitForCompletion=False,
            onEvent=self.onWorkerEvent, onFinished=self.onTaskFinished), _("Failed to start the generator."))

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
            _("Failed to verify the models."), needsPackages=False)  # `worker info` needs none of the ML packages

    def onModelsPathChanged(self, path) -> None:
        if not _lib("slicer_glue.environment").worth_saving(path):
            return  # a path being typed: saved once it is empty or names a folder holding bundles
        self.logic.setUserModelsDir(path)
        self.applyModelDefaults()
        self.updateModelSummary()

    def updateModelSummary(self) -> None:
        _panel.show_models_folder(self.ui, self.logic.generatorDefaults(), self.logic.modelsDir())

    def onExportVolumesButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to export the volumes."), waitCursor=True):
            path = _panel.export_volumes(self._segmentation, slicer.util.mainWindow())
            if path:
                self.setStatus(_("Volumes saved to {path}").format(path=path))

    def onOpenModelsFolderButton(self) -> None:
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(self.logic.modelsDir()))

    def updateDependencyStatus(self) -> None:
        self.ui.dependenciesLabel.text = _lib("slicer_glue.dependencies").status_text(self.logic.missingDependencies())

    def ensureDependencies(self) -> bool:
        """Ask once and install what is missing or outdated (a wait cursor during pip only; never raises)."""
        result = self.logic.installDependencies(askConfirmation=True)
        self.updateDependencyStatus()
        if result.message:
            self.setStatus(result.message, error=result.error)
        if result.error:  # not for Cancel, nothing to do, or an install already running
            slicer.util.errorDisplay(result.message, windowTitle=_("VentricleSynth"))
        return result.ok


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

    def requirementsPath(self) -> str:
        return os.path.join(self.moduleDir(), "Resources", "requirements.txt")

    def missingDependencies(self) -> list:
        """One `dependencies.Problem` per package missing or outside its tested versions (nothing imported)."""
        return _lib("slicer_glue.dependencies").missing_dependencies(self.requirementsPath())

    def installDependencies(self, askConfirmation=True):
        """InstallResult(ok, message, error): asks once, installs under a wait cursor, never raises."""
        return _lib("slicer_glue.dependencies").ensure_dependencies(self.requirementsPath(),
                                                                    ask_confirmation=askConfirmation)

    def _launch(self, makeTask, waitForCompletion, timeout, **options):
        if REFUSAL:
            raise RuntimeError(REFUSAL)
        environment = _lib("slicer_glue.environment")
        task = makeTask(environment.python_executable(), self.modelsDir(),
                        environment.worker_cwd(LIBRARY_PARENT_DIR, self.moduleDir()), **options)
        return _lib("slicer_glue.task").launch(task, self.tasks, wait=waitForCompletion, timeout=timeout)

    def generate(self, ventricleMl, guidance=None, steps=None, seed=0, count=1, device="auto",
                 waitForCompletion=False, onEvent=None, onFinished=None, labels="ventricles", timeout=None,
                 imageSteps=None, refine=True):
        """`count` samples of `ventricleMl` mL: (synthetic volume, segmentation) in `task.loaded`; returns the task.
        `steps`: DDIM steps of both stages, `imageSteps`: of the image stage (None: the bundles' defaults);
        `refine` False: the sampled label map as it is (no exact-volume refinement)."""
        return self._launch(_lib("slicer_glue.runs").generate_task, waitForCompletion, timeout,
                            ventricle_ml=ventricleMl, guidance=guidance, steps=steps, image_steps=imageSteps,
                            seed=seed, count=count, device=device, labels=labels, on_event=onEvent,
                            on_finished=onFinished, refine=refine)

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
    """In Slicer, bundled models on CPU: generate, segment, cancel (the glue is unit-tested under Testing/).
    Runs are non-blocking (the GUI keeps drawing); what cannot run here is logged, not skipped: Reload and Test
    calls runTest() directly, outside unittest, where skipTest would be an error."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        logic = VentricleSynthLogic()
        reason = REFUSAL or (logic.missingDependencies() and _("missing Python packages")) or (
            not logic.generatorDefaults() and _("no generator models in {folder}").format(folder=logic.modelsDir()))
        if reason:
            self.delayDisplay(_("VentricleSynth self-test not run: {reason}").format(reason=reason))
            logging.warning("VentricleSynth self-test not run: %s", reason)
            return
        for test in (self.test_GenerateAndSegment, self.test_CancelNonBlocking):
            self.setUp()
            test(logic)

    def test_GenerateAndSegment(self, logic):
        _lib("slicer_glue.self_test").generate_and_segment(self, logic)

    def test_CancelNonBlocking(self, logic):
        _lib("slicer_glue.self_test").cancel_non_blocking(self, logic)
