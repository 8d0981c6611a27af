"""Stopping a worker's process tree: children and grandchildren are found, and `WorkerStop` leaves them (and
the launcher) alone until its kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from VentricleSynthLib.worker import processes

PY = sys.executable


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_worker_stop_spares_the_launcher_until_the_kill_then_ends_children_and_grandchildren(tmp_path):
    """Without the worker's pid the graceful step signals nothing (the launcher would die of it at once); the
    kill then ends the whole tree, a grandchild included."""
    pid_file = tmp_path / "pids"
    code = ("import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import subprocess, sys, time; "
            "subprocess.Popen([sys.executable, \"-c\", \"import time; time.sleep(120)\"]); time.sleep(120)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
            "time.sleep(120)\n")
    parent = subprocess.Popen([PY, "-c", code])
    try:
        deadline = time.monotonic() + 30
        while len(processes.descendants(parent.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(pid_file.read_text())
        tree = processes.descendants(parent.pid)
        assert child in tree and len(tree) == 2
        stop = processes.WorkerStop(parent.pid, grace=60)
        stop.begin()
        assert set(stop.pids) == {parent.pid, *tree} and not stop.overdue
        time.sleep(0.3)
        assert parent.poll() is None and all(processes._alive(p) for p in tree)
        assert set(stop.kill()) == {parent.pid, *tree}
        assert parent.wait(timeout=10) == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while any(processes._alive(p) for p in tree) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(processes._alive(p) for p in tree)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
