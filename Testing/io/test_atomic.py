"""Atomic writes: a reader sees the old file or the new one, never half of one; nothing is left behind."""

from __future__ import annotations

import csv
import json
import os

import pytest

from VentricleSynthLib.errors import OutputError
from VentricleSynthLib.io.atomic import atomic_write, writable_dir, write_csv, write_json, write_text


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
