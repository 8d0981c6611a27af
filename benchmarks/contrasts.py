"""Benchmark: the segmenter on hold-out heads of every contrast (T1, T2, FLAIR, PD), at 1 mm, against their labels.

Each head is a template-cohort case made on a 1 mm grid (random pose, scale and warp, the ventricles flowed to a
volume spread evenly over `--low`..`--high` mL; its own seeds, apart from every training cohort's), so anatomy and
volume are new to the segmenter. Its label map is rendered per contrast with the phantom's tissue intensities
(benchmarks/phantom.py: CSF dark on T1 and FLAIR, bright on T2 and PD), blurred by a random resolution (partial
volume), multiplied by a smooth bias field and given Rician noise; skull-stripped, as the phantoms. `t1-cohort` is
the case's own T1 image as the template cohort makes it for training (the template's intensities, skull kept on
half the cases): the segmenter's home ground, for comparison.

    python benchmarks/contrasts.py [--cases 6] [--contrasts t1-cohort t1 t2 flair pd] [--seed 7000] [--models DIR]
                                   [--card]

Prints one row per head and contrast (Dice of the ventricular system and mean Dice of the six labels against the
case's labels, true and found mL, seconds), then one summary row per contrast.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from card_report import Printed, add_card_option, check_card_option, save_to_card  # noqa: E402
from phantom import CONTRASTS, phantom_cohort, render, with_bias_field, with_rician_noise  # noqa: E402

from VentricleSynthLib.metrics import dice  # noqa: E402

COHORT_T1 = "t1-cohort"
ALL = (COHORT_T1, *sorted(CONTRASTS))


def rendered(label: np.ndarray, contrast: str, rng: np.random.Generator) -> np.ndarray:
    """The label map as an image of `contrast`: tissue intensities, blur, bias field, Rician noise."""
    image = with_bias_field(ndimage.gaussian_filter(render(label, contrast), rng.uniform(0.4, 1.0, 3)), rng)
    return with_rician_noise(image, rng.uniform(0.01, 0.03) * image.max(), rng)


def label_dice(found: np.ndarray, truth: np.ndarray, labels: tuple[int, ...]) -> float:
    """Mean Dice over the labels present in the truth."""
    return float(np.mean([dice(found == lab, truth == lab) for lab in labels if (truth == lab).any()]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=6)
    p.add_argument("--low", type=float, default=15.0)
    p.add_argument("--high", type=float, default=150.0)
    p.add_argument("--contrasts", nargs="+", default=list(ALL), choices=ALL)
    p.add_argument("--seed", type=int, default=7000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", default=None)
    add_card_option(p)
    args = p.parse_args()
    check_card_option(args)

    import torch

    torch.set_num_threads(args.threads)
    from VentricleSynthLib.io.nifti import Volume
    from VentricleSynthLib.labels import VENTRICLE_LABELS
    from VentricleSynthLib.segmentation.predictor import get_segmenter

    segmenter = get_segmenter(args.models, "cpu")
    cohort = phantom_cohort()
    rows: dict[str, list[tuple[float, float, float]]] = {c: [] for c in args.contrasts}
    out = Printed()
    out("| case | contrast | true mL | found mL | error % | Dice (system) | Dice (labels, mean) | s |")
    out("|---|---|---|---|---|---|---|---|")
    for i, target in enumerate(np.linspace(args.low, args.high, args.cases)):
        case = cohort.make_case(float(target), np.random.default_rng([args.seed, i]))
        truth = np.where(np.isin(case["label"], VENTRICLE_LABELS), case["label"], 0)
        true_ml = case["ventricle_ml"]
        for contrast in args.contrasts:
            rng = np.random.default_rng([args.seed, i, ALL.index(contrast)])
            image = case["image"] if contrast == COHORT_T1 else rendered(case["label"], contrast, rng)
            t0 = time.perf_counter()
            found, result = segmenter.segment(Volume(image.astype(np.float32), case["affine"]))
            seconds = time.perf_counter() - t0
            d_sys, d_lab = dice(found.array > 0, truth > 0), label_dice(found.array, truth, VENTRICLE_LABELS)
            err = (result["ventricle_ml"] - true_ml) / true_ml * 100
            rows[contrast].append((d_sys, d_lab, err))
            out(f"| {i} | {contrast} | {true_ml:.1f} | {result['ventricle_ml']:.1f} | {err:+.1f} | {d_sys:.3f} | "
                f"{d_lab:.3f} | {seconds:.1f} |")
    out()
    out("| contrast | cases | Dice (system) mean / min | Dice (labels) mean | volume error % median / max abs |")
    out("|---|---|---|---|---|")
    for contrast, r in rows.items():
        a = np.asarray(r)
        out(f"| {contrast} | {len(a)} | {a[:, 0].mean():.3f} / {a[:, 0].min():.3f} | {a[:, 1].mean():.3f} | "
            f"{np.median(a[:, 2]):+.1f} / {np.abs(a[:, 2]).max():.1f} |")
    save_to_card(args, "contrasts", out, "contrasts.py")


if __name__ == "__main__":
    main()
