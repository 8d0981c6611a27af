"""Benchmark: the bundled segmenter's volumes on partial-volume phantoms whose true ventricle volume is exact.

Each phantom is the committed template's label map with its ventricles flowed to a target volume (the template
cohort's flow), rendered at 0.5 mm with one intensity per tissue class for a contrast (T1, T2, FLAIR, PD),
imaged at 1 mm by averaging 2x2x2 blocks (partial volume), then given a smooth multiplicative bias field and
Rician noise. The true fractional ventricle volume is the 0.5 mm ventricle voxel count x 0.125 uL; the true
"half" volume counts the 1 mm voxels at least half ventricle (the boundary convention, see
VentricleSynthLib/segmentation/partial_volume.py).

    python benchmarks/phantom.py [--volumes 15 30 60 100 150] [--contrasts t1] [--seed 0] [--save DIR] [--card]

Prints one row per phantom: true volumes, `segment`'s voxel-count and partial-volume (soft) volumes, their
errors, Dice against the true half-voxel labels, seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from card_report import Printed, add_card_option, check_card_option, save_to_card  # noqa: E402

FINE_MM, IMAGED_MM = 0.5, 1.0
# intensity of each tissue class (label groups below) per contrast; CSF includes the ventricles
CONTRASTS = {
    "t1": {"csf": 0.12, "gm": 0.50, "deep_gm": 0.62, "wm": 0.82},
    "t2": {"csf": 1.00, "gm": 0.55, "deep_gm": 0.48, "wm": 0.35},
    "flair": {"csf": 0.06, "gm": 0.62, "deep_gm": 0.55, "wm": 0.45},
    "pd": {"csf": 0.90, "gm": 0.76, "deep_gm": 0.72, "wm": 0.62},
}
GROUPS = {
    "csf": (4, 43, 5, 44, 14, 15, 24),
    "wm": (2, 41, 7, 46, 16, 28, 60, 13, 52),  # cerebral/cerebellar WM, brainstem, ventral DC, pallidum
    "deep_gm": (10, 49, 11, 50, 12, 51, 26, 58),  # thalamus, caudate, putamen, accumbens
    "gm": (3, 42, 8, 47, 17, 53, 18, 54),  # cortex, cerebellar cortex, hippocampus, amygdala
}


def render(label: np.ndarray, contrast: str) -> np.ndarray:
    lut = np.zeros(int(label.max()) + 1, np.float32)
    for group, labels in GROUPS.items():
        for lab in labels:
            if lab < lut.size:
                lut[lab] = CONTRASTS[contrast][group]
    return lut[label]


def with_bias_field(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`image` times a smooth multiplicative bias field (a 4x4x4 log-normal grid, cubic-interpolated)."""
    coarse = rng.normal(0.0, 0.12, (4, 4, 4))
    bias = np.exp(ndimage.zoom(coarse, [n / 4 for n in image.shape], order=3, mode="nearest"))
    return image * bias[: image.shape[0], : image.shape[1], : image.shape[2]]


def with_rician_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """The magnitude of `image` plus complex Gaussian noise of standard deviation `sigma` (Rician)."""
    return np.sqrt((image + rng.normal(0, sigma, image.shape)) ** 2 + rng.normal(0, sigma, image.shape) ** 2)


def phantom_cohort():
    """The template cohort on a 1 mm grid around the committed template's brain (the phantoms' imaged grid)."""
    from VentricleSynthLib.imaging.geometry import world_bbox
    from VentricleSynthLib.labels import CSF_LABEL, VENTRICLE_LABELS
    from training.data.template_cohort import TemplateCohort, TemplateCohortSettings
    from training.data.templates import load_committed

    template = load_committed()
    # the template's CSF label (derived from intensities) lines 7 % of the ventricles' surface with slivers no
    # image can tell from ventricle; the phantom gives them the nearest other tissue's label
    ventricles = np.isin(template.label, VENTRICLE_LABELS)
    csf = template.label == CSF_LABEL
    sliver = csf & ndimage.binary_dilation(ventricles, iterations=2)
    tissue = (template.label > 0) & ~ventricles & ~csf
    nearest = ndimage.distance_transform_edt(~tissue, return_distances=False, return_indices=True)
    template.label = np.where(sliver, template.label[tuple(nearest)], template.label)
    lo, hi = world_bbox(template.brain_mask, template.affine)
    shape = tuple(int(e) for e in np.ceil(hi - lo + 8))  # mm = 1 mm voxels, a 4 mm margin
    return TemplateCohort(template, TemplateCohortSettings(spacing=(IMAGED_MM,) * 3, shape=shape))


def make_phantom(cohort, target_ml: float, contrast: str, rng: np.random.Generator) -> dict:
    """The phantom's 1 mm image and affine, its true fractional and half-voxel volumes and 1 mm half labels.
    The flow's strength is solved on the 1 mm grid; the volume it gives is then measured at 0.5 mm."""
    from VentricleSynthLib.imaging.geometry import ras_grid
    from VentricleSynthLib.labels import VENTRICLE_LABELS

    strength, _ = cohort.solve_strength(cohort._ijk_world, target_ml)
    scale = int(round(IMAGED_MM / FINE_MM))
    fine = ras_grid(FINE_MM, tuple(scale * n for n in cohort.grid.shape), cohort.centre)  # blocks = 1 mm voxels
    world = (fine.affine[:3, :3] @ np.indices(fine.shape, dtype=np.float32).reshape(3, -1)
             + fine.affine[:3, 3:4]).astype(np.float32)
    warped = cohort._ventricle_flow(strength, world)
    ijk = cohort._tmpl_inv[:3, :3] @ warped + cohort._tmpl_inv[:3, 3:4]
    label = ndimage.map_coordinates(cohort.template.label, ijk, order=0, mode="constant").reshape(fine.shape)
    del warped, ijk, world
    ventricles = np.isin(label, VENTRICLE_LABELS)
    true_ml = float(ventricles.sum()) * FINE_MM ** 3 / 1000

    def blocks(a):  # (n*scale, ...) -> (scale**3, n, ...)
        return np.stack([a[i::scale, j::scale, k::scale] for i in range(scale) for j in range(scale)
                         for k in range(scale)])

    image = blocks(render(label, contrast)).mean(axis=0)
    fraction = blocks(ventricles.astype(np.float32)).mean(axis=0)
    half = np.where(fraction >= 0.5, blocks(np.where(ventricles, label, 0)).max(axis=0), 0).astype(np.int16)
    del label, ventricles
    image = with_bias_field(image, rng)
    image = with_rician_noise(image, 0.02 * image.max(), rng)
    return {"image": image.astype(np.float32), "affine": cohort.grid.affine.copy(), "true_ml": true_ml,
            "true_half_ml": float((fraction >= 0.5).sum()) * IMAGED_MM ** 3 / 1000, "half": half, "fraction": fraction,
            "strength_mm": strength}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--volumes", type=float, nargs="+", default=[15, 30, 60, 100, 150])
    p.add_argument("--contrasts", nargs="+", default=["t1"], choices=sorted(CONTRASTS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", default=None)
    p.add_argument("--save", type=Path, default=None, help="write each phantom's image and true labels here")
    add_card_option(p)
    args = p.parse_args()
    check_card_option(args)

    import torch

    torch.set_num_threads(args.threads)
    from VentricleSynthLib.io.nifti import Volume, save_volume
    from VentricleSynthLib.metrics import dice
    from VentricleSynthLib.segmentation.predictor import get_segmenter

    segmenter = get_segmenter(args.models, "cpu")
    cohort = phantom_cohort()
    out = Printed()
    out("| contrast | asked mL | true mL (fractional) | true mL (half-voxel) | segment mL | error % | "
        "soft mL | soft error % | Dice vs half-voxel truth | s |")
    out("|---|---|---|---|---|---|---|---|---|---|")
    for contrast in args.contrasts:
        for i, target in enumerate(args.volumes):
            rng = np.random.default_rng([args.seed, i])
            ph = make_phantom(cohort, target, contrast, rng)
            t0 = time.perf_counter()
            label, result = segmenter.segment(Volume(ph["image"], ph["affine"]))
            seconds = time.perf_counter() - t0
            got, soft = result["ventricle_ml"], result["ventricle_soft_ml"]
            err = (got - ph["true_ml"]) / ph["true_ml"] * 100
            soft_err = "" if soft is None else f"{(soft - ph['true_ml']) / ph['true_ml'] * 100:+.2f}"
            out(f"| {contrast} | {target:g} | {ph['true_ml']:.2f} | {ph['true_half_ml']:.2f} | {got:.2f} | "
                f"{err:+.2f} | {soft if soft is not None else 'n/a'} | {soft_err} | "
                f"{dice(label.array > 0, ph['half'] > 0):.3f} | {seconds:.1f} |")
            if args.save:
                args.save.mkdir(parents=True, exist_ok=True)
                save_volume(Volume(ph["image"], ph["affine"]), args.save / f"{contrast}_{target:g}_image.nii.gz")
                save_volume(Volume(ph["half"], ph["affine"]), args.save / f"{contrast}_{target:g}_label.nii.gz",
                            dtype=np.int16)
    save_to_card(args, "phantom", out, "phantom.py")


if __name__ == "__main__":
    main()
