"""The worker task runner of the Slicer module, headless: blocking runs of a tiny stand-in worker (results loaded
as their RESULT lines arrive, callbacks, cancel, discarded results, temporary folder, the Logic's task list), and
the QProcess mode driven by a stand-in `qt` (qt itself is not importable here), on real processes behind a
PythonSlicer-like launcher for cancel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from VentricleSynthLib.slicer_glue.task import WorkerTask, launch
from VentricleSynthLib.worker import processes
from VentricleSynthLib.worker.protocol import Message, Plan, Progress, Result, Started, WorkerProtocol

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}

# Announces itself, plans 3 steps, and writes two results with a step between them; "slow" then waits.
_STAND_IN = """
import os, sys, time
print(f"WORKER pid={os.getpid()} version=test command=generate", flush=True)
print("PLAN count=1 stages=mask:3", flush=True)
print("PROGRESS stage=mask step=1/3", flush=True)
print('RESULT {"kind": "sample", "index": 0}', flush=True)
print("PROGRESS stage=mask step=2/3", flush=True)
if sys.argv[1] == "slow":
    time.sleep(60)
print('RESULT {"kind": "sample", "index": 1}', flush=True)
print("PROGRESS stage=mask step=3/3", flush=True)
sys.exit(int(sys.argv[2]))
"""


def _task(tmp_path, mode="fast", code=0, loader=None, **kwargs):
    temp_dir = tmp_path / "run"
    (temp_dir / "out").mkdir(parents=True)
    return WorkerTask("generate", [sys.executable, "-c", _STAND_IN, mode, str(code)], str(tmp_path), ENV,
                      str(temp_dir), WorkerProtocol(), loader=loader, **kwargs)


def test_blocking_run_loads_each_result_and_cleans_up(tmp_path):
    events, finished = [], []
    task = _task(tmp_path, loader=lambda result: ("node", result["index"]), onEvent=events.append,
                 onFinished=finished.append)
    tasks = []
    assert launch(task, tasks, wait=True, timeout=60) is task
    assert task.finished and task.outcome.ok and task.outcome.message == "Finished."
    assert task.loaded == [("node", 0), ("node", 1)] and task.loadErrors == []
    assert [type(e) for e in events] == [Started, Plan, Progress, Result, Progress, Result, Progress]
    assert events[-1].fraction == pytest.approx(1.0)
    assert finished == [task] and tasks == []  # the Logic's list of running tasks is emptied
    assert not (tmp_path / "run").exists()  # the temporary folder is removed
    assert task.cwd == str(tmp_path) and task.environment["PYTHONUNBUFFERED"] == "1"


def test_a_result_that_cannot_be_loaded_fails_the_run_but_the_others_load(tmp_path):
    def loader(result):
        if result["index"] == 0:
            raise ValueError("bad file")
        return result["index"]

    task = _task(tmp_path, loader=loader)
    outcome = task.runBlocking(timeout=60)
    assert task.loaded == [1] and task.loadErrors == ["ValueError: bad file"]
    assert outcome.status == "failed" and outcome.exit_code == 0
    assert outcome.message == "The worker finished but its results could not be loaded: ValueError: bad file"
    assert len(outcome.results) == 2


def test_a_failing_event_callback_does_not_stop_the_run(tmp_path):
    seen = []

    def callback(event):
        seen.append(event)
        raise RuntimeError("GUI gone")

    task = _task(tmp_path, loader=lambda result: result["index"], onEvent=callback)
    assert task.runBlocking(timeout=60).ok and task.loaded == [0, 1] and len(seen) == 7


def test_worker_errors_come_back_as_the_outcome(tmp_path):
    task = _task(tmp_path, code=2, loader=lambda result: result)
    outcome = task.runBlocking(timeout=60)
    assert outcome.status == "user_error" and outcome.exit_code == 2 and len(task.loaded) == 2
    assert not (tmp_path / "run").exists()


def test_cancel_in_blocking_mode_keeps_finished_results(tmp_path):
    finished = []

    def on_event(event):
        if isinstance(event, Progress) and event.step == 2:
            task.cancel()

    task = _task(tmp_path, mode="slow", loader=lambda result: result["index"], onEvent=on_event,
                 onFinished=finished.append)
    outcome = task.runBlocking(timeout=60)
    assert task.cancelRequested and outcome.status == "cancelled"
    assert outcome.message == "Cancelled; 1 finished result(s) kept." and task.loaded == [0]
    assert finished == [task] and not (tmp_path / "run").exists()
    task.cancel()  # after the end: nothing happens
    assert task.outcome is outcome


# Sample 0 loaded, then the cancel; sample 1 is already on its way (in the pipe) and must not be loaded.
_DISCARD_STAND_IN = """
import os, signal, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # it stops on "cancel" from stdin
print(f"WORKER pid={os.getpid()} version=test command=generate", flush=True)
print("RESULT " + sys.argv[1], flush=True)
print("PROGRESS stage=mask step=1/2", flush=True)
print("RESULT " + sys.argv[2], flush=True)
sys.stdin.readline()
sys.exit(130)
"""


def _sample_result(folder, index) -> str:
    from VentricleSynthLib.generation.sample_folder import write_sample

    label = np.zeros((12, 12, 12), np.int16)
    label[3:6, 3:6, 3:6], label[6:9, 3:6, 3:6] = 4, 43
    record = {"asked_ml": 0.05, "got_ml": 0.054, "seed": index, "seconds": 1.0}
    sample = write_sample(folder, index, (label > 0) * 0.7 + 0.1, label, np.eye(4), record)
    files = {"image": "image.nii.gz", "label": "label.nii.gz", "record": "sample.json"}
    return json.dumps({"kind": "sample", "index": index, "files": {k: str(sample / f) for k, f in files.items()},
                       **record})


def test_discarded_results_are_not_loaded_and_loaded_ones_leave_the_scene(scene, tmp_path):
    """cancel(discardResults=True) (scene close, reload): a result arriving afterwards is not loaded, the nodes the
    task loaded leave their scene, `loaded` is empty when onFinished runs, and the outcome says so."""
    from VentricleSynthLib.slicer_glue.results import load_sample

    results = [_sample_result(tmp_path / "samples", k) for k in range(2)]
    at_cancel, at_finish = [], []

    def on_event(event):
        if isinstance(event, Progress):
            at_cancel.append((len(task.loaded), scene.GetNumberOfNodes()))
            task.cancel(discardResults=True)

    def on_finished(t):
        at_finish.append((list(t.loaded), scene.GetNumberOfNodes(), t.outcome.message))

    (tmp_path / "run").mkdir()
    task = WorkerTask("generate", [sys.executable, "-c", _DISCARD_STAND_IN, *results], str(tmp_path), ENV,
                      str(tmp_path / "run"), WorkerProtocol(), loader=lambda r: load_sample(r, scene=scene),
                      onEvent=on_event, onFinished=on_finished)
    outcome = task.runBlocking(timeout=60)
    assert at_cancel == [(1, 4)]  # one sample loaded: its volume, segmentation and their display nodes
    assert len(task.protocol.results) == 2  # the second sample did arrive ...
    assert at_finish == [([], 0, "Cancelled; its results were discarded.")]  # ... and nothing is left
    assert (outcome.status, outcome.exit_code, outcome.results) == ("cancelled", 130, [])
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------- QProcess callbacks, stand-in qt
@pytest.fixture
def fake_qt(monkeypatch):
    qt = types.ModuleType("qt")
    qt.QProcess = types.SimpleNamespace(NormalExit=0, CrashExit=1, FailedToStart=0, Crashed=1)
    qt.QByteArray, qt.timers = bytes, []  # timers: (when due, callback) of QTimer.singleShot
    qt.QTimer = types.SimpleNamespace(singleShot=lambda ms, call: qt.timers.append((time.monotonic() + ms / 1e3, call)))
    monkeypatch.setitem(sys.modules, "qt", qt)
    return qt


class _Process:
    """What the task reads from a QProcess: its merged output, once."""

    def __init__(self, output: bytes):
        self.output = output
        self.deleted = False

    def readAllStandardOutput(self):
        output, self.output = self.output, b""
        return output

    def deleteLater(self):
        self.deleted = True


def test_qprocess_finished_parses_the_rest_and_maps_exit_status(tmp_path, fake_qt):
    normal, crash = fake_qt.QProcess.NormalExit, fake_qt.QProcess.CrashExit
    for status, code, expected in ((normal, 0, "ok"), (normal, 2, "user_error"), (crash, 0, "killed")):
        task = _task(tmp_path, loader=lambda result: result["index"])
        task.process = _Process(b'RESULT {"kind": "sample", "index": 4}\nerror: last words')
        task._onProcessFinished(code, status)
        assert task.outcome.status == expected and task.loaded == [4] and task.process.deleted
        if expected == "user_error":
            assert task.outcome.message == "last words"
        task._onProcessFinished(code, status)  # a second signal changes nothing
        assert task.loaded == [4]


def test_qprocess_failing_to_start_says_which_program(tmp_path, fake_qt):
    finished = []
    task = _task(tmp_path, onFinished=finished.append)
    task._onProcessError(fake_qt.QProcess.FailedToStart)
    assert task.outcome.status == "failed" and task.outcome.exit_code is None
    assert task.outcome.message == (f"Could not start the worker ({sys.executable}): is Slicer's Python launcher "
                                    "present?")
    assert finished == [task] and not (tmp_path / "run").exists()


class _RealProcess:
    """The QProcess calls the task makes, on a real process with merged channels."""

    def __init__(self, command):
        self.popen = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, env=ENV)
        os.set_blocking(self.popen.stdout.fileno(), False)

    def processId(self):
        return self.popen.pid

    def readAllStandardOutput(self):
        chunks = []
        while True:
            try:
                chunk = os.read(self.popen.stdout.fileno(), 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def write(self, data):
        self.popen.stdin.write(data)
        self.popen.stdin.flush()

    def closeWriteChannel(self):
        self.popen.stdin.close()

    def kill(self):
        self.popen.kill()

    def deleteLater(self):
        self.popen.stdout.close()


def _event_loop(task, qt, limit=60.0):
    """What Qt's event loop does for the task: readyRead, due timers, finished (CrashExit when a signal ended it)."""
    deadline = time.monotonic() + limit
    while not task.finished and time.monotonic() < deadline:
        task._onReadyRead()
        for due, call in [t for t in qt.timers if t[0] <= time.monotonic()]:
            qt.timers.remove((due, call))
            call()
        code = task.process.popen.poll()
        if code is not None:
            task._onProcessFinished(max(code, 0), qt.QProcess.CrashExit if code < 0 else qt.QProcess.NormalExit)
        time.sleep(0.02)


# PythonSlicer-like: the worker is its child, stdin/stdout pass through, no signal is forwarded.
_LAUNCHER = "import subprocess, sys\ncode = subprocess.Popen(sys.argv[1:]).wait()\nsys.exit(code if code >= 0 else 1)\n"
_CLEANING_WORKER = """
import os, signal, sys, time
from pathlib import Path
def stop(*_):
    raise KeyboardInterrupt
signal.signal(signal.SIGTERM, signal.SIG_IGN if sys.argv[2] == "stubborn" else stop)
print(f"WORKER pid={os.getpid()} version=test command=generate", flush=True)
try:
    print('RESULT {"kind": "sample", "index": 0}', flush=True)
    print("PROGRESS stage=mask step=1/2", flush=True)
    time.sleep(60)
except KeyboardInterrupt:
    time.sleep(1.0)
    Path(sys.argv[1]).write_text("cleaned up")
    sys.exit(130)
"""


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
@pytest.mark.parametrize("mode", ["graceful", "stubborn"])
def test_qprocess_cancel_through_a_launcher_stops_the_worker_not_the_launcher(tmp_path, fake_qt, mode):
    """Cancel signals the worker (its WORKER pid), not the launcher: the worker cleans up and exits 130, which the
    launcher passes on (a normal exit); a worker that ignores it is killed with its launcher after the grace."""
    (tmp_path / "launcher.py").write_text(_LAUNCHER)
    task = _task(tmp_path, loader=lambda result: result["index"],
                 onEvent=lambda e: task.cancel() if isinstance(e, Progress) else None)
    task.command = [sys.executable, str(tmp_path / "launcher.py"), sys.executable, "-c", _CLEANING_WORKER,
                    str(tmp_path / "cleaned"), mode]
    task.graceSeconds = 10.0 if mode == "graceful" else 0.5
    task.process = _RealProcess(task.command)
    _event_loop(task, fake_qt)
    outcome, graceful = task.outcome, mode == "graceful"
    assert outcome.status == "cancelled" and task.loaded == [0]
    assert outcome.message == "Cancelled; 1 finished result(s) kept."
    assert outcome.exit_code == (130 if graceful else None)  # 130 passed on by the launcher; else a CrashExit
    assert (tmp_path / "cleaned").exists() == graceful and not (tmp_path / "run").exists()
    assert len(fake_qt.timers) == graceful  # the kill, still pending when the worker stopped by itself
    task.process.popen.wait(timeout=10)
    deadline = time.monotonic() + 10
    while processes._alive(task.protocol.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not processes._alive(task.protocol.pid)


def test_the_task_module_imports_without_qt():
    code = "import sys, VentricleSynthLib.slicer_glue.task as t; sys.exit(1 if 'qt' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_messages_reach_the_event_callback(tmp_path):
    events = []
    task = _task(tmp_path, onEvent=events.append)
    task.handleEvent(Message("warning", "careful"))
    assert events == [Message("warning", "careful")] and not task.loaded
