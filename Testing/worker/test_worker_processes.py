"""Stopping a worker's process tree: children and grandchildren are found and stopped."""

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
def test_kill_process_tree_stops_children_and_grandchildren(tmp_path):
    pid_file = tmp_path / "pids"
    code = ("import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
            "time.sleep(120)\n")
    parent = subprocess.Popen([PY, "-c", code])
    try:
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(pid_file.read_text())
        assert child in processes.descendants(parent.pid)
        killed = processes.kill_process_tree(parent.pid, timeout=2.0)
        assert set(killed) == {parent.pid, child}
        assert parent.wait(timeout=10) == -signal.SIGTERM
        deadline = time.monotonic() + 10
        while processes._alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not processes._alive(child)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
