"""The worker task runner of the Slicer module, headless: blocking runs of a tiny stand-in worker (results loaded
as their RESULT lines arrive, callbacks, cancel, temporary folder, the Logic's task list), and the QProcess
callbacks driven by hand with a stand-in `qt` (qt itself is not importable here)."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest

from VentricleSynthLib.slicer_glue.task import WorkerTask, launch
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


def test_cancel_discarding_results_loads_nothing_more(tmp_path):
    def on_event(event):
        if isinstance(event, Started):
            task.cancel(discardResults=True)

    task = _task(tmp_path, mode="slow", loader=lambda result: result["index"], onEvent=on_event)
    outcome = task.runBlocking(timeout=60)
    assert task.discardResults and task.loaded == []
    assert outcome.status == "cancelled" and outcome.message == "Cancelled."


# ------------------------------------------------------------------- QProcess callbacks, stand-in qt
@pytest.fixture
def fake_qt(monkeypatch):
    qt = types.ModuleType("qt")
    qt.QProcess = types.SimpleNamespace(NormalExit=0, CrashExit=1, FailedToStart=0, Crashed=1)
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


def test_the_task_module_imports_without_qt():
    code = "import sys, VentricleSynthLib.slicer_glue.task as t; sys.exit(1 if 'qt' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_messages_reach_the_event_callback(tmp_path):
    events = []
    task = _task(tmp_path, onEvent=events.append)
    task.handleEvent(Message("warning", "careful"))
    assert events == [Message("warning", "careful")] and not task.loaded
