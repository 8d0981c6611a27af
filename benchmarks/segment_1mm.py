"""Benchmark: `segment` on a 1 mm T1 of 182x218x182 with the bundled segmenter, end to end.

The input is the committed ICBM 2009c template (with skull, 1.5 mm) resampled onto a 1 mm RAS grid of
182x218x182 (MNI-like size), written once to a temporary folder. Each run is a fresh
`python -m VentricleSynthLib segment` process, so the seconds and peak RSS include starting Python,
importing torch/nnU-Net, loading and verifying the bundle, resampling in and out, and writing the result.
Also printed: the volume found against the template's own ventricle volume, and whether the result lies
on the input's grid.

    python benchmarks/segment_1mm.py [--runs 3] [--threads 2] [--models DIR] [--tta] [--card]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from card_report import Printed, add_card_option, check_card_option, save_to_card  # noqa: E402

SHAPE = (182, 218, 182)


def write_input(folder: Path) -> tuple[Path, float]:
    """The 1 mm test image; returns its path and the template's ventricle volume (mL) on that grid."""
    from training.data.templates import committed_on_grid
    from VentricleSynthLib.io.nifti import save_volume
    from VentricleSynthLib.labels import VENTRICLE_LABELS

    image, label = committed_on_grid(SHAPE, 1.0)
    path = folder / "icbm_1mm.nii.gz"
    save_volume(image, path)
    return path, float(np.isin(label, VENTRICLE_LABELS).sum()) / 1000.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="")
    parser.add_argument("--tta", action="store_true", help="with test-time mirroring")
    add_card_option(parser)
    args = parser.parse_args()
    check_card_option(args)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="vs_bench_seg_") as tmp:
        tmp = Path(tmp)
        image, reference_ml = write_input(tmp)
        for run in range(args.runs):
            out = tmp / f"seg_{run}.nii.gz"
            cmd = [sys.executable, "-m", "VentricleSynthLib", "segment", str(image), "--out", str(out),
                   "--device", "cpu"] + (["--models", args.models] if args.models else []) \
                + (["--tta"] if args.tta else [])
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            start = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
            wall = time.perf_counter() - start
            if done.returncode != 0:
                print(done.stderr[-2000:], file=sys.stderr)
                return 1
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            result = json.loads(done.stdout.strip().splitlines()[-1])
            import nibabel as nib

            seg, src = nib.load(str(out)), nib.load(str(image))
            same_grid = seg.shape == src.shape and np.allclose(seg.affine, src.affine, atol=1e-4)
            rows.append((run + 1, wall, result["seconds"], max(peak, before) / 1024,
                         result["ventricle_ml"], same_grid))
    out = Printed()
    out(f"segment, 1 mm T1 {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} (ICBM 2009c with skull), cpu, {args.threads} threads,"
        f" tta={'on' if args.tta else 'off'}; template ventricles on that grid: {reference_ml:.1f} mL")
    out()
    out("| run | wall incl. start-up (s) | reported (s) | peak RSS (MB) | ventricles (mL) | on input grid |")
    out("|---|---|---|---|---|---|")
    for run, wall, seconds, rss, ml, same in rows:
        out(f"| {run} | {wall:.1f} | {seconds:.1f} | {rss:.0f} | {ml:.1f} | {'yes' if same else 'NO'} |")
    out()
    out("(peak RSS is the largest child process so far: ru_maxrss of RUSAGE_CHILDREN)")
    save_to_card(args, "segment_1mm", out, "segment_1mm.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
