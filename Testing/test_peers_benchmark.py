"""benchmarks/peers.py without the peers: bad input is one `error:` line (exit 2), a peer's label map is cached
by scan digest and tool version, and the numbers, table and picture come out of small synthetic label maps.
The real comparison (brainchop takes ~20 min a head) runs by hand; its peers are never installed here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from peerlib.report import markdown  # noqa: E402
from peerlib.runs import ToolFailed, label_map_for  # noqa: E402
from peerlib.scans import Scan  # noqa: E402
from peerlib.scores import pairwise_dice, union_dice, volumes_ml  # noqa: E402
from peerlib.pictures import save_picture  # noqa: E402

WRITE_MAP = ("import sys, nibabel as nib, numpy as np; a = np.zeros((8, 8, 8), np.int16); a[2:4, 2:4, 2:4] = 4; "
             "nib.save(nib.Nifti1Image(a, np.eye(4)), sys.argv[2])")


class FakeTool:
    name, cached = "fake", True

    def __init__(self, code: str = WRITE_MAP):
        self.code, self.tag, self.runs = code, "v1", 0

    def version(self) -> str:
        return self.tag

    def command(self, image, out):
        self.runs += 1
        return [sys.executable, "-c", self.code, str(image), str(out)]

    def env(self):
        return None


def test_missing_peer_env_is_one_error_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--peers", str(tmp_path / "none"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "install_peers.sh" in proc.stderr


def test_missing_scan_is_one_error_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--tools", "ours", "--data",
                           str(tmp_path), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: scan colin27 not found"), proc.stderr


def test_peer_label_maps_are_cached_by_scan_and_version(tmp_path):
    image = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(512, dtype=np.float32).reshape(8, 8, 8), np.eye(4)), image)
    scan, tool, folder = Scan("scan", image), FakeTool(), tmp_path / "out" / "scan"
    first = label_map_for(tool, scan, folder, rerun=False, say=lambda _: None)
    assert not first["cached"] and first["seconds"] >= 0 and first["peak_rss_mb"] > 0
    assert label_map_for(tool, scan, folder, rerun=False, say=lambda _: None)["cached"] and tool.runs == 1
    assert not label_map_for(tool, scan, folder, rerun=True, say=lambda _: None)["cached"]
    tool.tag = "v2"
    assert not label_map_for(tool, scan, folder, rerun=False, say=lambda _: None)["cached"]
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), image)  # another scan, same name
    assert not label_map_for(tool, scan, folder, rerun=False, say=lambda _: None)["cached"] and tool.runs == 4


def test_a_failing_tool_is_an_error_of_its_own(tmp_path):
    image = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), image)
    with pytest.raises(ToolFailed, match="exit 3") as failure:
        label_map_for(FakeTool("raise SystemExit(3)"), Scan("scan", image), tmp_path / "o", False, lambda _: None)
    assert failure.value.exit_code == 1


def test_numbers_table_and_picture_from_synthetic_maps(tmp_path):
    affine = np.diag([2.0, 1.0, 1.0, 1.0])  # 2 uL voxels
    ours = np.zeros((20, 20, 20), np.int16)
    ours[4:8, 4:10, 4:10], ours[12:16, 4:10, 4:10], ours[9:11, 5:7, 5:7] = 4, 43, 14
    peer = np.where(ours == 43, 4, ours)  # an unsided tool: both lateral ventricles in one label
    sided, unsided = volumes_ml(ours, affine, sided=True), volumes_ml(peer, affine, sided=False)
    assert sided["lateral_left"] == sided["lateral_right"] == 0.29 and sided["third"] == 0.02
    assert unsided["lateral_left"] is None and unsided["lateral"] == sided["lateral"] == 0.58
    assert sided["total"] == unsided["total"] == 0.59
    assert union_dice(ours, peer) == 1.0 and pairwise_dice({"a": ours, "b": peer, "c": ours * 0}) == \
        {"a vs b": 1.0, "a vs c": 0.0, "b vs c": 0.0}
    row = {"volumes_ml": sided, "dice_vs_label": None, "seconds": 3.0, "peak_rss_mb": 512.0, "cached": False}
    results = {"tools": {"ours": {"title": "ours", "version": "v"}, "brainchop": {"title": "b", "version": "w"}},
               "scans": {"x": {"label_ml": None, "pairwise_dice": {"ours vs brainchop": 1.0},
                               "tools": {"ours": row, "brainchop": {**row, "volumes_ml": unsided, "cached": True}}}}}
    text = markdown(results)
    assert "| x | brainchop | — | — | 0.6 |" in text and "3 (cached)" in text and "| x | 1.000 |" in text
    out = save_picture(np.random.default_rng(0).random((20, 20, 20)), affine, {"ours": ours, "peer": peer}, "x",
                       tmp_path / "x.png")
    assert out.stat().st_size > 1000
