"""Atomic writes: a reader sees the old file or the new one, never half of one; nothing is left behind."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from VentricleSynthLib.errors import OutputError
from VentricleSynthLib.io.atomic import (
    atomic_write,
    refuse_overwriting_inputs,
    writable_dir,
    write_csv,
    write_json,
    write_text,
)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "report.md"
    target.write_text("old")

    def half_then_fail(tmp):
        with open(tmp, "w") as fh:
            fh.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_text_json_and_csv_land_whole_with_the_umask_permissions(tmp_path):
    write_text(tmp_path / "a" / "b.txt", "hello\n")
    assert (tmp_path / "a" / "b.txt").read_text() == "hello\n"
    write_json(tmp_path / "x.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "x.json").read_text() == json.dumps({"b": 1, "a": [1, 2]}, indent=2) + "\n"
    write_csv(tmp_path / "r.csv", [{"case": "c1", "ml": 1.5, "extra": "dropped"}], ["case", "ml"])
    with open(tmp_path / "r.csv", newline="") as fh:
        assert list(csv.DictReader(fh)) == [{"case": "c1", "ml": "1.5"}]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_writable_dir_creates_the_folder_and_names_the_users_out_when_it_cannot(tmp_path):
    assert writable_dir(tmp_path / "new" / "out") == (tmp_path / "new" / "out").resolve()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="cannot write to --out seg.nii.gz"):
        writable_dir(blocker / "sub", shown="seg.nii.gz")
    with pytest.raises(OutputError, match=f"cannot write to --out {blocker / 'sub'}"):
        writable_dir(blocker / "sub")


# --- the output rule: replaced atomically with its permissions; never an input; no stale temporaries ----------

def test_a_replaced_file_keeps_its_permission_bits(tmp_path):
    target = tmp_path / "seg.nii.gz"
    target.write_text("old")
    os.chmod(target, 0o600)
    write_text(target, "new")
    assert target.read_text() == "new" and target.stat().st_mode & 0o777 == 0o600
    os.chmod(target, 0o640)
    write_text(target, "newer")
    assert target.stat().st_mode & 0o777 == 0o640


def test_an_output_that_is_an_input_is_refused_in_every_spelling(tmp_path):
    image = tmp_path / "t1.nii.gz"
    image.write_bytes(b"scan")
    (tmp_path / "link.nii.gz").symlink_to(image)
    os.link(image, tmp_path / "hard.nii.gz")
    (tmp_path / "sub").mkdir()
    for out in (image, tmp_path / "sub" / ".." / "t1.nii.gz", tmp_path / "link.nii.gz", tmp_path / "hard.nii.gz"):
        with pytest.raises(OutputError, match="is the input"):
            refuse_overwriting_inputs(out, tmp_path / "other.nii.gz", None, image)
    refuse_overwriting_inputs(tmp_path / "seg.nii.gz", image)  # another file: fine
    refuse_overwriting_inputs(image, tmp_path / "missing.nii.gz")  # a missing input is reported by its reader
    assert image.read_bytes() == b"scan"


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_next_write_removes_temporaries_of_killed_writers_only(tmp_path):
    from VentricleSynthLib.io.atomic import _host

    dead, alive = _dead_pid(), os.getppid()
    stale = tmp_path / f".seg.nii.gz.tmp-{_host()}-{dead}-abc123_x.nii.gz"
    live = tmp_path / f".seg.nii.gz.tmp-{_host()}-{alive}-def456_y.nii.gz"  # a concurrent writer of seg.nii.gz
    shard = tmp_path / f".seg_2.nii.gz.tmp-{_host()}-{dead}-ghi789_z.nii.gz"  # another output's temporary
    other_host = tmp_path / f".seg.nii.gz.tmp-elsewhere-{dead}-jkl012_w.nii.gz"  # a writer on another machine
    for path in (stale, live, shard, other_host):
        path.write_text("partial")
    atomic_write(tmp_path / "seg.nii.gz", lambda tmp: Path(tmp).write_text("whole"))
    assert not stale.exists()
    assert live.exists() and shard.exists() and other_host.exists()
    assert (tmp_path / "seg.nii.gz").read_text() == "whole"


def test_the_temporary_names_the_writer(tmp_path):
    from VentricleSynthLib.io.atomic import _host

    seen = []
    atomic_write(tmp_path / "a.json", lambda tmp: seen.append(os.path.basename(tmp)) or Path(tmp).write_text(""))
    assert seen[0].startswith(f".a.json.tmp-{_host()}-{os.getpid()}-") and seen[0].endswith(".json")
