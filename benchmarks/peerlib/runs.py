"""One tool on one scan as a measured process (wall seconds and peak RSS by GNU time), with a cache of the
label maps of the slow peers: OUT/<scan>/<tool>.nii.gz beside <tool>.json (scan digest, tool version,
seconds, peak memory) and <tool>.log (the tool's own output). A cached map is reused while the scan's bytes
and the tool's version string stay the same.

Peak RSS is the largest resident set of the tool's process or any of its children (the kernel's
`ru_maxrss` as reported through wait4), not the sum over processes running at once.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

from VentricleSynthLib.bundles.format import sha256
from VentricleSynthLib.errors import RequestError, VentricleSynthError

TIME = Path("/usr/bin/time")


class ToolFailed(VentricleSynthError):
    """A tool ran and failed (not the user's input): exit status 1."""

    exit_code = 1


def check_time() -> None:
    if not TIME.is_file():
        raise RequestError(f"{TIME} (GNU time, Debian package 'time') is needed to measure peak memory")


def _measured(command: list[str], env: dict, cwd: Path, log: Path) -> dict:
    with tempfile.NamedTemporaryFile(mode="r", suffix=".time") as stats, open(log, "w") as out:
        start = time.perf_counter()
        done = subprocess.run([str(TIME), "-f", "%e %M", "-o", stats.name, *command], env=env, cwd=cwd,
                              stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        last = stats.read().strip().splitlines()[-1:]
    kib = int(last[0].split()[-1]) if last and last[0].split()[-1].isdigit() else 0
    return {"returncode": done.returncode, "seconds": round(wall, 1), "peak_rss_mb": round(kib / 1024, 1)}


def label_map_for(tool, scan, folder: Path, rerun: bool, say=print) -> dict:
    """Run `tool` on `scan` unless its cached label map still holds; returns the record (with 'path')."""
    folder.mkdir(parents=True, exist_ok=True)
    out, meta, log = (folder / f"{tool.name}{suffix}" for suffix in (".nii.gz", ".json", ".log"))
    key = {"scan_sha256": sha256(scan.image), "version": tool.version()}
    if tool.cached and not rerun and out.is_file() and meta.is_file():
        record = json.loads(meta.read_text())
        if all(record.get(k) == v for k, v in key.items()):
            say(f"{scan.name}: {tool.name} from the cache ({record['seconds']:.0f} s when it ran)")
            return {**record, "path": str(out), "cached": True}
    say(f"{scan.name}: running {tool.name} ...")
    out.unlink(missing_ok=True)
    meta.unlink(missing_ok=True)
    command = tool.command(scan.image, out)
    result = _measured(command, tool.env(), Path(__file__).resolve().parents[2], log)
    if result["returncode"] != 0 or not out.is_file():
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
        raise ToolFailed(f"{tool.name} failed on {scan.name} (exit {result['returncode']}; log {log}): {tail}")
    record = {**key, "tool": tool.name, "scan": scan.name, "image": str(scan.image),
              "seconds": result["seconds"], "peak_rss_mb": result["peak_rss_mb"],
              "command": command}
    meta.write_text(json.dumps(record, indent=2) + "\n")
    say(f"{scan.name}: {tool.name} took {record['seconds']:.0f} s, peak {record['peak_rss_mb']:.0f} MB")
    return {**record, "path": str(out), "cached": False}
