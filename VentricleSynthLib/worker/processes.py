"""Stopping a worker and everything it started: the process tree of a pid, signals to a list of
pids, and SIGTERM-then-SIGKILL of a whole tree (taskkill /T on Windows).

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


def kill_process_tree(pid: int | None, timeout: float = 3.0, extra_pids: Iterable[int] = ()) -> list[int]:
    """Stop `pid` and all its descendants: SIGTERM first (the worker cleans up and exits 130), SIGKILL
    after `timeout` seconds. `extra_pids` (e.g. the worker's own pid from its WORKER line, in case the
    launcher in between has gone) are included. Returns the pids signalled. Windows: taskkill /T /F."""
    if pid is None and not extra_pids:
        return []
    roots = [int(p) for p in ([pid] if pid is not None else []) + list(extra_pids) if p]
    if os.name == "nt":
        for root in roots:
            subprocess.run(["taskkill", "/PID", str(root), "/T", "/F"], capture_output=True,
                           creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        return roots
    targets = process_tree(None, roots)
    signal_pids(targets, signal.SIGTERM)
    deadline = time.monotonic() + max(0.0, timeout)
    while time.monotonic() < deadline and any(_alive(p) for p in targets):
        time.sleep(0.05)
    signal_pids(targets, signal.SIGKILL)
    return targets
