"""Stopping a worker and everything it started: the process tree of a pid, signals to a list of pids, and
`WorkerStop`, the cancel sequence (graceful stop of the worker, then SIGKILL or taskkill /T of the whole tree)
that both the QProcess mode and the blocking runner use.

Standard library only (psutil is used when Slicer happens to have it), like `worker.protocol`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterable


def _children_table() -> dict[int, list[int]]:
    """parent pid -> child pids of every process we can see (POSIX)."""
    table: dict[int, list[int]] = {}
    try:
        import psutil  # optional; Slicer may have it

        for proc in psutil.process_iter(["pid", "ppid"]):
            table.setdefault(proc.info["ppid"], []).append(proc.info["pid"])
        return table
    except Exception:  # noqa: BLE001 - psutil absent or a process vanished while listing
        table.clear()
    proc_dir = Path("/proc")
    if proc_dir.is_dir():
        for entry in proc_dir.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            table.setdefault(ppid, []).append(int(entry.name))
        return table
    try:
        out = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid="], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return table
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            table.setdefault(int(parts[1]), []).append(int(parts[0]))
    return table


def descendants(pid: int) -> list[int]:
    """All descendants of `pid` (children first, breadth-first)."""
    table = _children_table()
    out, frontier = [], [int(pid)]
    while frontier:
        nxt = []
        for parent in frontier:
            for child in table.get(parent, []):
                if child not in out and child != pid:
                    out.append(child)
                    nxt.append(child)
        frontier = nxt
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) counts as gone
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True


def process_tree(pid: int | None, extra_pids: Iterable[int] = ()) -> list[int]:
    """`pid`, its descendants and `extra_pids` (and their descendants), without duplicates. Record the
    tree before stopping anything: once a parent has exited, its children are re-parented and lost."""
    roots = [int(p) for p in ([pid] if pid is not None else []) + list(extra_pids) if p]
    out: list[int] = []
    for root in roots:
        for p in descendants(root) + [root]:
            if p not in out and p != os.getpid():
                out.append(p)
    return out


def signal_pids(pids: Iterable[int], sig: int | None = None) -> None:
    """Send `sig` (default SIGTERM) to each pid still alive; never blocks. POSIX only (no-op on Windows)."""
    if os.name == "nt":
        return
    sig = signal.SIGTERM if sig is None else sig
    for p in pids:
        if _alive(p):
            try:
                os.kill(p, sig)
            except OSError:
                pass


# ----------------------------------------------------------------------------------- cancel sequence
GRACE_SECONDS = 10.0  # a denoising step on the CPU may take seconds before the worker sees its signal


def _start_time(pid: int) -> str | None:
    """Kernel start time of `pid` (Linux), to tell it from a later process reusing the number; None elsewhere."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class WorkerStop:
    """Cancel a worker that may run behind a launcher: Slicer's PythonSlicer is a CTKAppLauncher that runs
    python-real as its child, passes stdin and stdout through, and forwards no signal (it dies of SIGTERM).

    `begin()`: record the tree, 'cancel' + end of stdin (`write_cancel`), SIGTERM to the worker's own pid
    (its WORKER line), never to the launcher: the worker cleans up and exits 130, the launcher with it.
    `kill()`: after `grace` seconds, SIGKILL (Windows: taskkill /T /F) whatever of the tree is left;
    `kill(root_exited=True)`: once the launcher has exited, the worker's leftover children (POSIX only).
    """

    def __init__(self, root_pid: int | None, worker_pid: int | None = None, write_cancel=None,
                 grace: float = GRACE_SECONDS):
        self.root_pid = int(root_pid) if root_pid else None
        self.worker_pid = int(worker_pid) if worker_pid else None
        self.write_cancel = write_cancel
        self.grace = float(grace)
        self.deadline: float | None = None
        self.killed = False
        self.pids: list[int] = []
        self._identity: dict[int, str | None] = {}
        self._terminated: set[int] = set()

    def _same(self, pid: int) -> bool:
        started = self._identity.get(pid)
        return started is None or _start_time(pid) in (started, None)

    def _record(self, root_exited: bool = False) -> None:
        """Add the descendants of the recorded processes (still the same ones) to the record."""
        roots = [p for p in self.pids if self._same(p) and not (root_exited and p == self.root_pid)]
        roots += [p for p in (self.root_pid, self.worker_pid)
                  if p and p not in self._identity and not (root_exited and p == self.root_pid)]
        for pid in process_tree(None, roots):
            if pid not in self._identity:
                self._identity[pid] = _start_time(pid)
                self.pids.append(pid)

    def _terminate_worker(self) -> None:
        pid = self.worker_pid
        if os.name == "nt" or not pid or pid in self._terminated or pid == os.getpid():
            return
        self._terminated.add(pid)
        signal_pids([pid], signal.SIGTERM)

    def begin(self) -> None:
        """The graceful request: stdin first (it reaches the worker through any launcher), then SIGTERM."""
        if self.deadline is not None:
            return
        self.deadline = time.monotonic() + self.grace
        if os.name != "nt":
            self._record()
        if self.write_cancel is not None:
            try:
                self.write_cancel()
            except Exception:  # noqa: BLE001 - stdin already closed or the launcher gone; SIGTERM and kill follow
                pass
        self._terminate_worker()

    def found_worker(self, pid: int | None) -> None:
        """The worker's WORKER line arrived after `begin()`: it gets its SIGTERM now."""
        if pid and self.deadline is not None and self.worker_pid is None:
            self.worker_pid = int(pid)
            if os.name != "nt":
                self._record()
            self._terminate_worker()

    @property
    def overdue(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def kill(self, root_exited: bool = False) -> list[int]:
        """SIGKILL what is left of the tree, children started since `begin()` included. Returns the pids."""
        self.killed = True
        if os.name == "nt":
            if root_exited:  # taskkill /T needs the living parent, and Windows reuses pids quickly
                return []
            roots = [p for p in (self.root_pid, self.worker_pid) if p]
            for root in roots:
                subprocess.run(["taskkill", "/PID", str(root), "/T", "/F"], capture_output=True,
                               creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
            return roots
        self._record(root_exited)
        targets = [p for p in self.pids if self._same(p) and not (root_exited and p == self.root_pid)]
        signal_pids(targets, signal.SIGKILL)
        return targets

    def wait(self, root_exited, poll_seconds: float = 0.05) -> None:
        """Block until `root_exited()` or the grace period is over (the blocking runner's error path)."""
        while not root_exited() and not self.overdue:
            time.sleep(poll_seconds)
