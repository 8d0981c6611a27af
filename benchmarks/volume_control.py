"""Benchmark: how closely the bundled mask model's label maps reach the asked ventricle volume (issue 17).

Each (volume, seed) is sampled as generation samples it at the bundle's defaults (best of K candidates, the
seed's next ones drawn when none is eligible: `MaskGenerator.sample_many`), which gives (b) without refinement
and (a) refined (the defaults); candidate 0 as drawn gives (c) the model alone and (d) the model alone refined.
Volume accuracy needs the label maps only; the image stage's time is measured by benchmarks/generate_pair.py.

    python benchmarks/volume_control.py [--seeds 6] [--volumes 10] [--candidates K] [--guidance W] [--out F.jsonl]
        [--keep-noise-mean]   # the starting noise as drawn (its per-channel mean not removed): the cause of issue 17
    python benchmarks/volume_control.py --summarise results.jsonl   # the table from (partial) results

Each sample's line is appended to --out as it is done, so an interrupted run still summarises.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIGS = {"a_refined_best_of_k": ("refined", "best"), "b_best_of_k": ("raw", "best"),
           "c_model_alone": ("raw", "first"), "d_model_alone_refined": ("refined", "first")}


def run(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from VentricleSynthLib.bundles.store import MASK, bundle_path
    from VentricleSynthLib.generation.generators import MaskGenerator
    from VentricleSynthLib.generation.refinement import plausibility, refine
    from VentricleSynthLib.generation.sampler import initial_noise
    from VentricleSynthLib.volumes import fragmented, ventricle_volume_ml, voxel_volume_ml

    mask = MaskGenerator(bundle_path(MASK, args.models), "cpu")
    if args.keep_noise_mean:  # the experiment's knob: the noise as drawn
        mask.starting_noise = lambda seeds, per_seed=1: initial_noise(mask.latent_shape, seeds, per_seed)
    settings = mask.settings(guidance=args.guidance, candidates=args.candidates)
    k = settings.candidates
    volumes = np.linspace(20.0, 140.0, args.volumes)
    with open(args.out, "a") as out:
        for seed in range(args.seeds):
            for asked in volumes:
                t0 = time.perf_counter()
                label, sampled = mask.sample_many([float(asked)], [seed], settings)[0]  # what generation keeps
                if k == 1 and sampled["redrawn"] == 0:
                    first = label
                else:  # candidate 0 alone, as drawn
                    with torch.no_grad():
                        first = mask.decode(mask.sample_latents([float(asked)], settings.guidance,
                                                                settings.mask_steps, mask.starting_noise([seed])))
                    first = first.label
                sample_s = time.perf_counter() - t0
                row = {"asked_ml": float(asked), "seed": seed, "candidates": k, "guidance": settings.guidance,
                       "sample_s": sample_s, "candidates_ml": sampled["candidates_ml"], "chosen": sampled["chosen"],
                       "redrawn": sampled["redrawn"], "keep_noise_mean": args.keep_noise_mean, "threads": args.threads}
                for name, source in (("best", label), ("first", first)):
                    row[f"{name}_raw_ml"] = ventricle_volume_ml(source, mask.affine)
                    row[f"{name}_raw_checks"] = plausibility(source)
                    row[f"{name}_raw_fragmented"] = fragmented(source)
                    row[f"{name}_brain_ml"] = float(np.count_nonzero(source) * voxel_volume_ml(mask.affine))
                    t1 = time.perf_counter()
                    refined, record = refine(source, mask.affine, float(asked))
                    row[f"{name}_refine_s"] = time.perf_counter() - t1
                    row[f"{name}_refined_ml"] = ventricle_volume_ml(refined, mask.affine)
                    row[f"{name}_refinement"] = record
                out.write(json.dumps(row) + "\n")
                out.flush()
                print(f"seed {seed} asked {asked:.1f}: best {row['best_raw_ml']:.1f} -> {row['best_refined_ml']:.1f}"
                      f" (max {row['best_refinement']['max_displacement_mm']} mm), first {row['first_raw_ml']:.1f}"
                      f" -> {row['first_refined_ml']:.1f} (max {row['first_refinement']['max_displacement_mm']} mm)"
                      f", {sample_s:.0f} s", flush=True)


def summarise(path) -> None:
    from scipy.stats import spearmanr

    from VentricleSynthLib.volumes import too_many_pieces

    rows = [json.loads(line) for line in open(path) if line.strip()]
    asked = np.array([r["asked_ml"] for r in rows])
    print(f"{len(rows)} samples, {len(set(asked))} volumes x {len(set(r['seed'] for r in rows))} seeds, "
          f"{rows[0]['candidates']} candidates, guidance {rows[0].get('guidance', 'default')}\n")
    print("| configuration | median err % | p95 err % | max err % | Spearman |")
    print("|---|---|---|---|---|")
    for name, (kind, which) in CONFIGS.items():
        got = np.array([r[f"{which}_{kind}_ml"] for r in rows])
        err = np.abs(got - asked) / asked * 100
        print(f"| {name} | {np.median(err):.2f} | {np.percentile(err, 95):.2f} | {err.max():.2f} | "
              f"{spearmanr(asked, got).statistic:.4f} |")
    print("\n| refined from | max disp mm: median / p95 / max | mean disp mm (brain): median | warnings | "
          "main classes lost | brain pieces > 1 | more ventricle pieces | fragmented: sampled / refined | "
          "refine s (median) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for which in ("best", "first"):
        recs = [r[f"{which}_refinement"] for r in rows]
        raw = [r[f"{which}_raw_checks"] for r in rows]
        mx = np.array([x["max_displacement_mm"] for x in recs])
        mean = np.array([x["mean_displacement_mm"] for x in recs])
        lost = sum(1 for x, y in zip(recs, raw) if y["main_classes_present"] and not x["main_classes_present"])
        split = sum(1 for x in recs if x["brain_pieces"] > 1)
        more = sum(1 for x, y in zip(recs, raw) if x["ventricle_pieces"] > y["ventricle_pieces"])
        split_raw = sum(1 for r in rows if r.get(f"{which}_raw_fragmented"))
        split_refined = sum(1 for x in recs if too_many_pieces(x["ventricle_pieces"]))
        print(f"| {which} | {np.median(mx):.2f} / {np.percentile(mx, 95):.2f} / {mx.max():.2f} | "
              f"{np.median(mean):.3f} | {sum(1 for x in recs if x['warnings'])} | {lost} | {split} | {more} | "
              f"{split_raw} / {split_refined} | "
              f"{np.median([r[f'{which}_refine_s'] for r in rows]):.2f} |")
    brains = np.array([r["first_brain_ml"] for r in rows if "first_brain_ml" in r])
    if brains.size:
        print(f"\nbrain volume of the model-alone maps (mL): median {np.median(brains):.0f}, range "
              f"{brains.min():.0f}-{brains.max():.0f}")
    print(f"\nsamples whose seed's next candidates were drawn: {sum(1 for r in rows if r.get('redrawn'))}")
    print(f"\nmask sampling (K={rows[0]['candidates']}) s per sample, {rows[0].get('threads', 1)} thread(s): median "
          f"{np.median([r['sample_s'] for r in rows]):.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=6)
    p.add_argument("--volumes", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--candidates", type=int, default=None, help="K (default: the bundle's)")
    p.add_argument("--guidance", type=float, default=None, help="w (default: the bundle's)")
    p.add_argument("--models", default=None)
    p.add_argument("--keep-noise-mean", action="store_true",
                   help="start from the noise as drawn, its per-channel mean kept (what sampling did before issue 17)")
    p.add_argument("--out", default="volume_control.jsonl")
    p.add_argument("--summarise", metavar="JSONL")
    args = p.parse_args()
    if args.summarise:
        summarise(args.summarise)
        return
    run(args)
    summarise(args.out)


if __name__ == "__main__":
    main()
