"""benchmarks/gpu_check.py --cpu: the device check's CPU mode, so the script cannot rot between GPU leases; and
its time box: a part that hangs is a row of the table (with the stack where it hung), never a hang of the check.

Why here: a GPU is lent rarely and briefly; a check that first fails on the device wastes the lease. The CPU
mode drives the same parts (the project's own stages in time-boxed subprocesses) with the tiny profile, on the
device's path (nnU-Net reads NIfTI through NibabelIO, SimpleITK is the stand-in), and must leave nothing behind
but its table and log: its work folder is temporary and removed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("data", "mask-ae", "mask-ldm", "image-ae", "image-ldm", "sample-1", "sample-8", "nnunet")


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _untracked() -> set[str]:
    out = subprocess.run(["git", "ls-files", "-o", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True)
    return set(out.stdout.splitlines())


def test_gpu_check_cpu_mode_lists_every_part_and_leaves_nothing(tmp_path):
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    tmp.mkdir()
    before = _untracked()
    env = {**os.environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (out / "gpu_check.md").read_text()
    assert "SimpleITK: stand-in" in table and "INCOMPLETE" not in table, table
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    for part in PARTS:
        assert part in rows, table
        seconds = rows[part].split("|")[3].strip()
        assert float(seconds) > 0, rows[part]
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["complete"] and result["simpleitk"] == "stand-in"
    parts = result["parts"]
    assert [p["part"] for p in parts] == list(PARTS)
    assert all(p["status"] == "ok" for p in parts), parts
    log = (out / "gpu_check.log").read_text()
    assert all(f"===== {part}: ok in " in log for part in PARTS), log[-3000:]
    assert "nibabel_reader_writer.NibabelIO" in log  # nnU-Net read the raw dataset without SimpleITK
    assert table.strip() in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log", "gpu_check.md"]
    assert list(tmp.iterdir()) == [], "the work folder was left behind"
    assert _untracked() == before, "files were left in the checkout"


def test_a_part_over_its_budget_is_a_row_with_its_stack_and_nothing_of_it_survives(tmp_path):
    marker = f"gpu-check-test-{os.getpid()}-{time.time_ns()}"  # names the part's own child process
    (tmp_path / "hang_here.py").write_text(f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', "
                                           f"'import time; time.sleep(60)', '{marker}'])\ntime.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(tmp_path), str(ROOT)))}
    start = time.monotonic()
    row = _gpu_check().run_part("hang", ["hang_here"], 3, env, tmp_path / "hang.log")
    assert time.monotonic() - start < 20
    assert row["status"] == "over budget" and row["seconds"] >= 3, row
    assert any("hang_here.py" in frame for frame in row["stack"]), row  # where it hung
    assert row["peak_gib"] is None  # no GPU; the part still reported (on SIGTERM)
    pgrep = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    assert pgrep.stdout.strip() == "", "the part's child process outlived it"
