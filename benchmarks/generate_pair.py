"""Benchmark: one labelled pair (mask LDM + SPADE image LDM) with the bundled models on this machine.

Prints a table of wall seconds and peak RSS per run, and whether the same seed gave the same pair.
Each run is a fresh process, so peak RSS includes loading torch and the models.

    python benchmarks/generate_pair.py [--steps N] [--runs 3] [--threads 2] [--models DIR] [--candidates K]
                                       [--no-refine]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import hashlib, json, resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[1]))
from VentricleSynthLib.generation.generators import ImageGenerator, MaskGenerator
from VentricleSynthLib.generation.pairs import generate_pair
from VentricleSynthLib.bundles.store import IMAGE, MASK, bundle_path
models = sys.argv[4] or None
t0 = time.perf_counter()
mask = MaskGenerator(bundle_path(MASK, models), "cpu")
image = ImageGenerator(bundle_path(IMAGE, models), "cpu")
t1 = time.perf_counter()
pair = generate_pair(mask, image, float(sys.argv[3]), steps=int(sys.argv[2]) or None, seed=123,
                     candidates=int(sys.argv[5]) or None, refine=sys.argv[6] == "1")
t2 = time.perf_counter()
digest = hashlib.sha256(pair.image.tobytes() + pair.label.tobytes()).hexdigest()[:16]
print(json.dumps({"steps": pair.record["steps"], "candidates": pair.record["candidates"],
                  "redrawn": pair.record["redrawn"],
                  "load_s": t1 - t0, "pair_s": t2 - t1, "total_s": t2 - t0, "got_ml": pair.record["got_ml"],
                  "got_ml_before_refinement": pair.record["got_ml_before_refinement"],
                  "max_displacement_mm": pair.record["max_displacement_mm"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "digest": digest}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=0, help="DDIM steps per stage (default 0: each bundle's own)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--volume-ml", type=float, default=60.0)
    parser.add_argument("--models", default="")
    parser.add_argument("--candidates", type=int, default=0, help="label maps per sample (default 0: the bundle's)")
    parser.add_argument("--no-refine", action="store_true", help="no exact-volume refinement")
    args = parser.parse_args()
    rows = []
    for _ in range(args.runs):
        child = [str(args.threads), str(args.steps), str(args.volume_ml), args.models, str(args.candidates),
                 "0" if args.no_refine else "1"]
        out = subprocess.run([sys.executable, "-c", CHILD, *child], capture_output=True, text=True, cwd=REPO,
                             env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        if out.returncode != 0:
            print(out.stderr[-2000:], file=sys.stderr)
            return 1
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    steps = rows[0]["steps"]
    print(f"one labelled pair, cpu, {args.threads} threads, DDIM steps mask {steps['mask']} (x{rows[0]['candidates']} "
          f"candidates) + image {steps['image']}, refinement {'off' if args.no_refine else 'on'}, "
          f"asked {args.volume_ml:g} mL, seed 123")
    print("| run | load (s) | pair (s) | total (s) | peak RSS (MB) | got (mL) | sampled (mL) | redrawn | "
          "max disp (mm) | digest |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(rows, 1):
        print(f"| {i} | {r['load_s']:.2f} | {r['pair_s']:.2f} | {r['total_s']:.2f} | {r['peak_rss_mb']:.0f} | "
              f"{r['got_ml']:.1f} | {r['got_ml_before_refinement']:.1f} | {r['redrawn']} | "
              f"{r['max_displacement_mm']:.1f} | "
              f"{r['digest']} |")
    same = len({r["digest"] for r in rows}) == 1
    print(f"same seed, same pair across runs: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
