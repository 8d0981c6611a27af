"""One run of the worker process for the Slicer module: command, temporary folder, parser, loaded nodes
and outcome; non-blocking through qt.QProcess (inside Slicer) or blocking through `worker.client.run_worker`.

`qt` is imported inside the QProcess methods only: the blocking mode runs without Qt (scripts, tests).
"""

from __future__ import annotations

import logging
import shutil

from VentricleSynthLib.slicer_glue.i18n import tr as _
from VentricleSynthLib.worker.client import run_worker
from VentricleSynthLib.worker.processes import GRACE_SECONDS, WorkerStop
from VentricleSynthLib.worker.protocol import Outcome, Result, Started


def _qt():
    import qt

    return qt


def remove_nodes(value) -> int:
    """Remove the MRML node(s) of one loaded result (a node or a tuple of nodes) from their scene, with their
    display and storage nodes, where they are still there. Returns how many nodes were removed."""
    removed = 0
    for node in value if isinstance(value, (tuple, list)) else (value,):
        scene = node.GetScene() if hasattr(node, "GetScene") else None
        if scene is None or not scene.IsNodePresent(node):
            continue
        related = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())] \
            if hasattr(node, "GetNumberOfDisplayNodes") else []
        if hasattr(node, "GetNumberOfStorageNodes"):
            related += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
        for item in [node] + related:
            if item is not None and scene.IsNodePresent(item):
                scene.RemoveNode(item)
                removed += 1
    return removed


class WorkerTask:
    """One worker run: command, temporary folder, parser, loaded nodes and outcome.

    Non-blocking runs use qt.QProcess (stdout and stderr merged) and call `onEvent(event)` for every
    parsed line and `onFinished(task)` at the end; `runBlocking()` is the scripting/testing mode.
    Results are loaded as soon as their RESULT line arrives (their files are complete by then); the
    temporary folder is removed when the run ends, whatever the outcome.
    """

    graceSeconds = GRACE_SECONDS  # from the graceful stop of a cancel to the kill of the worker's tree

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
        self._stop = None

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    # -- events
    def handleEvent(self, event) -> None:
        if isinstance(event, Result) and self.loader is not None and not self.discardResults:
            try:
                value = self.loader(event.data)
                if value is not None:
                    self.loaded.append(value)
            except Exception as exc:  # noqa: BLE001 - report and keep reading the worker
                logging.exception("VentricleSynth: could not load a result")
                self.loadErrors.append(f"{exc.__class__.__name__}: {exc}")
        if isinstance(event, Started) and self._stop is not None:
            self._stop.found_worker(event.pid)  # its WORKER line came after the cancel
        if self.onEvent is not None:
            try:
                self.onEvent(event)
            except Exception:  # noqa: BLE001 - a GUI callback must not stop the run
                logging.exception("VentricleSynth: event callback failed")

    # -- blocking mode
    def runBlocking(self, timeout=None):
        outcome = run_worker(self.command, env=self.environment, cwd=self.cwd, on_event=self.handleEvent,
                             protocol=self.protocol, timeout=timeout, should_cancel=lambda: self.cancelRequested,
                             grace=self.graceSeconds)
        self._finish(outcome)
        return self.outcome

    # -- QProcess mode
    def start(self) -> None:
        qt = _qt()
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
        crashed = exitStatus == _qt().QProcess.CrashExit
        if self._stop is not None:  # whatever the cancelled worker had started must not outlive it
            self._stop.kill(root_exited=True)
        self._finish(self.protocol.finish(None if crashed else int(exitCode), cancel_requested=self.cancelRequested,
                                          crashed=crashed))

    def _onProcessError(self, error) -> None:
        if error == _qt().QProcess.FailedToStart and not self.finished:
            message = _("Could not start the worker ({program}): is Slicer's Python launcher present?")
            self._finish(Outcome("failed", None, message.format(program=self.command[0])))

    def cancel(self, discardResults=False) -> None:
        """Stop the worker as `worker.processes.WorkerStop` does: 'cancel' on its stdin and SIGTERM to the worker's
        own pid (Slicer's launcher forwards stdin, not signals); it cleans up and exits 130. Its whole tree is
        killed after `graceSeconds`. `discardResults`: nothing more is loaded, and what this task loaded is
        removed from the scene (the scene or the panel is going away); the outcome says so."""
        if self.finished:
            return
        if discardResults:
            self.discardResults = True
            for value in self.loaded:
                remove_nodes(value)
            self.loaded.clear()
        if self.cancelRequested:
            return
        self.cancelRequested = True
        if self.process is None:
            return  # blocking mode: run_worker polls cancelRequested
        self._stop = WorkerStop(int(self.process.processId() or 0) or None, self.protocol.pid,
                                write_cancel=self._writeCancel, grace=self.graceSeconds)
        self._stop.begin()
        _qt().QTimer.singleShot(int(self.graceSeconds * 1000), self._forceKill)

    def _writeCancel(self) -> None:
        self.process.write(_qt().QByteArray(b"cancel\n"))
        self.process.closeWriteChannel()

    def _forceKill(self) -> None:
        if self.finished or self.process is None:
            return
        self._stop.kill()
        self.process.kill()

    def _finish(self, outcome) -> None:
        if self.finished:
            return
        if self.tempDir:
            shutil.rmtree(self.tempDir, ignore_errors=True)
        if self.discardResults and outcome.status in ("ok", "cancelled"):
            outcome = Outcome("cancelled", outcome.exit_code, _("Cancelled; its results were discarded."))
        elif outcome.ok and self.loadErrors:
            outcome = Outcome("failed", outcome.exit_code,
                              _("The worker finished but its results could not be loaded: ")
                              + "; ".join(self.loadErrors), outcome.results)
        elif outcome.status == "cancelled" and self.loaded:
            outcome = Outcome("cancelled", outcome.exit_code,
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


def launch(task: WorkerTask, tasks: list, wait: bool = False, timeout=None) -> WorkerTask:
    """Run `task`, listed in `tasks` (the Logic's running tasks) until it finishes: blocking when `wait`
    (with `timeout` seconds at most), else through QProcess. Returns the task."""
    tasks.append(task)
    previous = task.onFinished

    def finished(t):
        if t in tasks:
            tasks.remove(t)
        if previous is not None:
            previous(t)

    task.onFinished = finished
    if wait:
        task.runBlocking(timeout=timeout)
    else:
        task.start()
    return task
