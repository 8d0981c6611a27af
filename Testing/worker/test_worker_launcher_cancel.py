"""Cancel through a launcher like Slicer's PythonSlicer (a CTKAppLauncher: the worker is its child, stdin and stdout
pass through, no signal is forwarded, it dies of SIGTERM): the worker gets its graceful stop first (it cleans up
and exits 130, the launcher with it), then whatever is left of the tree is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from VentricleSynthLib.worker import processes
from VentricleSynthLib.worker.client import run_worker
from VentricleSynthLib.worker.processes import WorkerStop
from VentricleSynthLib.worker.protocol import EXIT_CANCELLED, Progress, describe_exit

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
PY = sys.executable
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

# ctkAppLauncher::runProcess: the program is a child with forwarded channels; its exit code is the launcher's
# (EXIT_FAILURE if it crashed); no signal handler, so SIGTERM ends the launcher at once and the child lives on.
LAUNCHER = """
import subprocess, sys
child = subprocess.Popen(sys.argv[1:])
code = child.wait()
sys.exit(code if code >= 0 else 1)
"""

# The real worker entry (server.run: WORKER line, signal handlers, --watch-stdin) running a stand-in command that
# starts a child of its own, then loops; its cleanup takes a second and leaves a marker. 'stubborn' ignores SIGTERM.
WORKER = """
import os, signal, subprocess, sys, time
from argparse import Namespace
from pathlib import Path
from VentricleSynthLib.worker import server

folder = Path(sys.argv[1])

def loop(args):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    (folder / "pids").write_text(f"{os.getpid()} {child.pid}")
    if "stubborn" in sys.argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        print("PROGRESS stage=mask step=1/2", flush=True)
        while True:
            time.sleep(0.05)
    finally:
        time.sleep(1.0)
        (folder / "cleaned").write_text("a half-written sample removed")

server.COMMANDS["loop"] = loop
sys.exit(server.run(Namespace(worker_command="loop", watch_stdin="--watch-stdin" in sys.argv)))
"""


def _command(tmp_path, *flags):
    (tmp_path / "launcher.py").write_text(LAUNCHER)
    (tmp_path / "worker.py").write_text(WORKER)
    return [PY, str(tmp_path / "launcher.py"), PY, str(tmp_path / "worker.py"), str(tmp_path), *flags]


def _start(tmp_path, *flags):
    """The launcher as QProcess runs it (stdin and stdout pipes); returns it, the worker's pid and its child's."""
    launcher = subprocess.Popen(_command(tmp_path, *flags), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=ENV)
    for line in iter(launcher.stdout.readline, b""):
        if line.startswith(b"PROGRESS"):
            break
    worker, child = map(int, (tmp_path / "pids").read_text().split())
    return launcher, worker, child


def _gone(pids, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while any(processes._alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(processes._alive(p) for p in pids)


def _cleanup(launcher, *pids):
    processes.signal_pids(pids, signal.SIGKILL)
    if launcher.poll() is None:
        launcher.kill()
    launcher.wait()


def _write_cancel(launcher):
    launcher.stdin.write(b"cancel\n")
    launcher.stdin.close()


def test_sigterm_to_the_launcher_ends_it_at_once_and_the_old_order_then_killed_the_cleaning_worker(tmp_path):
    """The old QProcess-mode cancel: SIGTERM to the recorded tree; the launcher dies at once (QProcess reports a
    CrashExit), and `finished` SIGKILLed the tree while the worker was still cleaning up."""
    launcher, worker, child = _start(tmp_path, "--watch-stdin")
    try:
        pids = processes.process_tree(launcher.pid, [worker])
        assert set(pids) == {launcher.pid, worker, child}
        processes.signal_pids(pids)
        assert launcher.wait(timeout=10) == -signal.SIGTERM  # did not wait for its worker
        assert processes._alive(worker)  # cleaning up, orphaned
        processes.signal_pids(pids, signal.SIGKILL)  # old WorkerTask._onProcessFinished
        assert _gone([worker, child])
        assert not (tmp_path / "cleaned").exists()  # the graceful exit never happened
    finally:
        _cleanup(launcher, worker, child)


@pytest.mark.parametrize("worker_line_read", [True, False], ids=["stdin+SIGTERM", "stdin-only"])
def test_worker_stop_lets_the_worker_clean_up_then_kills_the_rest_of_the_tree(tmp_path, worker_line_read):
    """The QProcess-mode sequence: begin() (stdin 'cancel', SIGTERM to the worker only); `finished` arrives as a
    normal exit 130 forwarded by the launcher; kill(root_exited=True) then ends the worker's leftover child."""
    launcher, worker, child = _start(tmp_path, "--watch-stdin")
    try:
        stop = WorkerStop(launcher.pid, worker if worker_line_read else None,
                          write_cancel=lambda: _write_cancel(launcher), grace=60)
        started = time.monotonic()
        stop.begin()
        assert set(stop.pids) == {launcher.pid, worker, child}
        assert launcher.wait(timeout=30) == EXIT_CANCELLED  # QProcess: NormalExit, 130
        assert time.monotonic() - started < 30 and not stop.overdue
        assert (tmp_path / "cleaned").read_text() == "a half-written sample removed"
        assert describe_exit(EXIT_CANCELLED, cancel_requested=True).status == "cancelled"
        assert processes._alive(child)  # the worker left its child behind ...
        assert child in stop.kill(root_exited=True)
        assert _gone([worker, child])  # ... and nothing of the tree survives
    finally:
        _cleanup(launcher, worker, child)


@pytest.mark.parametrize("flags", [("--watch-stdin",), ()], ids=["stdin+SIGTERM", "SIGTERM-only"])
def test_run_worker_through_the_launcher_stops_the_worker_gracefully(tmp_path, flags):
    seen = []
    started = time.monotonic()
    outcome = run_worker(_command(tmp_path, *flags), env=ENV, on_event=seen.append, grace=60,
                         should_cancel=lambda: any(isinstance(e, Progress) for e in seen))
    assert time.monotonic() - started < 30
    assert (outcome.status, outcome.exit_code, outcome.message) == ("cancelled", EXIT_CANCELLED, "Cancelled.")
    assert (tmp_path / "cleaned").exists()  # its cleanup ran to the end
    worker, child = map(int, (tmp_path / "pids").read_text().split())
    assert _gone([worker, child], timeout=1.0)


def test_run_worker_kills_the_tree_of_a_worker_that_does_not_stop(tmp_path):
    seen = []
    started = time.monotonic()
    outcome = run_worker(_command(tmp_path, "stubborn"), env=ENV, on_event=seen.append, grace=1.0,
                         should_cancel=lambda: any(isinstance(e, Progress) for e in seen))
    assert time.monotonic() - started >= 1.0
    assert outcome.status == "cancelled" and outcome.exit_code == -signal.SIGKILL
    assert not (tmp_path / "cleaned").exists()
    worker, child = map(int, (tmp_path / "pids").read_text().split())
    assert _gone([worker, child], timeout=1.0)
