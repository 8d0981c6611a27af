"""Calibration (stage `calibrate`): how well the mask generator follows the asked ventricle volume, and how
T1-like the image generator's output is. Writes WORK/calibration/{calibration.json,volume_control.png} and
the measured sections of both bundles' card.md (manifests refreshed).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from training.cards import IMAGE_REALISM, VOLUME_CONTROL, calibration_sections, replace_sections
from VentricleSynthLib.bundles.store import IMAGE, MASK, bundle_path
from VentricleSynthLib.generation.generators import ImageGenerator, MaskGenerator
from VentricleSynthLib.generation.pairs import generate_pair
from VentricleSynthLib.generation.refinement import refine
from VentricleSynthLib.generation.sample_folder import write_preview
from VentricleSynthLib.io.atomic import write_text
from VentricleSynthLib.io.figures import png_figure
from VentricleSynthLib.labels import CORTEX_LABELS, MAIN_CLASSES, VENTRICLE_LABELS, WHITE_MATTER_LABELS
from VentricleSynthLib.morphology import connected_components
from VentricleSynthLib.volumes import ventricle_volume_ml


def anatomy_ok(label: np.ndarray) -> dict:
    """The schema's main classes are present and the brain is one connected component."""
    present = set(np.unique(label).tolist())
    _, n_components = connected_components(label > 0)
    return {"main_classes": all(c in present for c in MAIN_CLASSES), "components": int(n_components)}


def t1_contrast_ok(image: np.ndarray, label: np.ndarray) -> bool:
    """Mean intensity WM > GM > ventricles inside the conditioning label map."""
    def mean(labels):
        sel = np.isin(label, labels)
        return float(image[sel].mean()) if sel.any() else np.nan

    wm, gm, vent = mean(WHITE_MATTER_LABELS), mean(CORTEX_LABELS), mean(VENTRICLE_LABELS)
    return bool(wm > gm > vent)


def setting_name(guidance: float, candidates: int) -> str:
    return f"w={guidance:g}, K={candidates}"


def sweep_volume(mask: MaskGenerator, asked: list[float], grid: list[tuple[float, int]], seeds: list[int],
                 steps: int, progress=print) -> list[dict]:
    """Sample every asked volume with every seed under every (guidance, candidates) setting; each label map is
    also refined to the asked volume (refinement on: `refined_ml`, displacement, plausibility after it)."""
    rows = []
    for w, k in grid:
        for v in asked:
            for s in seeds:
                start = time.perf_counter()
                label, record = mask.sample_with_record(v, guidance=w, steps=steps, seed=s, candidates=k)
                rows.append({"guidance": w, "candidates": k, "asked_ml": v, "seed": s,
                             "got_ml": ventricle_volume_ml(label, mask.affine),
                             "candidates_ml": record["candidates_ml"], "redrawn": record["redrawn"],
                             "candidates_eligible": record["candidates_eligible"],
                             "fragmented": record["candidates_fragmented"][record["chosen"]],
                             "seconds": time.perf_counter() - start, **anatomy_ok(label)})
                refined, how = refine(label, mask.affine, v)
                rows[-1].update(refined_ml=ventricle_volume_ml(refined, mask.affine),
                                max_displacement_mm=how["max_displacement_mm"], refined_plausible=how["plausible"])
                progress(f"PROGRESS stage=calibrate w={w} K={k} asked={v} seed={s} got={rows[-1]['got_ml']:.1f}")
    return rows


def fit_volume_calibration(mask: MaskGenerator, guidance: float, steps: int, seeds: list[int], points: int = 12,
                           progress=print) -> dict | None:
    """The asked -> condition table that makes the model alone (K = 1) reach the asked volume on average.

    `points` conditions across the trained range, each sampled with every seed (no calibration applied); the
    median obtained volume per condition, made non-decreasing, is inverted. None when the obtained volumes do
    not rise with the condition over at least a tenth of the trained range (nothing to invert)."""
    lo, hi = mask.trained_range_ml
    conditions = np.linspace(lo, hi, points)
    saved, mask.calibration = mask.calibration, None
    try:
        medians = []
        for c in conditions:
            got = [ventricle_volume_ml(mask.sample(float(c), guidance=guidance, steps=steps, seed=s, candidates=1),
                                       mask.affine) for s in seeds]
            medians.append(float(np.median(got)))
            progress(f"PROGRESS stage=calibrate fit condition={c:.1f} median_got={medians[-1]:.1f}")
    finally:
        mask.calibration = saved
    rising = np.maximum.accumulate(medians)
    keep = np.concatenate([[True], np.diff(rising) > 0])  # np.interp needs increasing points
    if rising[-1] - rising[0] < 0.1 * (hi - lo) or keep.sum() < 2:
        return None
    return {"guidance": float(guidance), "steps": int(steps), "seeds": [int(s) for s in seeds],
            "asked_ml": [round(float(v), 3) for v in rising[keep]],
            "condition_ml": [round(float(c), 3) for c in conditions[keep]],
            "measured_median_ml": [round(v, 3) for v in medians],
            "measured_condition_ml": [round(float(c), 3) for c in conditions]}


def store_volume_calibration(folder: Path, calibration: dict | None) -> None:
    """The table into the mask bundle's config.json (None removes it), manifest updated."""
    from VentricleSynthLib.bundles import format as bundles
    from VentricleSynthLib.io.atomic import write_json

    config = bundles.read_config(folder)
    config.pop("volume_calibration", None)
    if calibration is not None:
        config["volume_calibration"] = calibration
    write_json(folder / bundles.CONFIG, config)
    bundles.write_manifest(folder)


def _by_setting(rows: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (r["candidates"], r["guidance"])):
        groups.setdefault(setting_name(r["guidance"], r["candidates"]), []).append(r)
    return groups


def summarise(rows: list[dict]) -> dict[str, dict]:
    out = {}
    for name, sel in _by_setting(rows).items():
        asked = np.array([r["asked_ml"] for r in sel])
        got = np.array([r["got_ml"] for r in sel])
        rel = np.abs(got - asked) / asked
        out[name] = {
            "guidance": sel[0]["guidance"],
            "candidates": sel[0]["candidates"],
            "spearman": float(spearmanr(asked, got).statistic),
            "median_rel_error": float(np.median(rel)),
            "mean_abs_error_ml": float(np.mean(np.abs(got - asked))),
            "median_got_ml": {f"{a:g}": float(np.median(got[asked == a])) for a in sorted(set(asked.tolist()))},
            "main_classes_fraction": float(np.mean([r["main_classes"] for r in sel])),
            "one_component_fraction": float(np.mean([r["components"] == 1 for r in sel])),
            "whole_ventricles_fraction": float(np.mean([not r["fragmented"] for r in sel])),
            "redrawn_fraction": float(np.mean([r["redrawn"] > 0 for r in sel])),
            "seconds_median": float(np.median([r["seconds"] for r in sel])),
            "samples": len(sel),
            **_refined_summary(sel, asked),
        }
    return out


def _refined_summary(sel: list[dict], asked: np.ndarray) -> dict:
    """The same setting with exact-volume refinement on."""
    got = np.array([r["refined_ml"] for r in sel])
    rel = np.abs(got - asked) / asked
    disp = np.array([r["max_displacement_mm"] for r in sel])
    return {"refined_spearman": float(spearmanr(asked, got).statistic),
            "refined_median_rel_error": float(np.median(rel)), "refined_p95_rel_error": float(np.percentile(rel, 95)),
            "max_displacement_mm_median": float(np.median(disp)), "max_displacement_mm_max": float(disp.max()),
            "refined_plausible_fraction": float(np.mean([r["refined_plausible"] for r in sel]))}


def plot_sweep(rows: list[dict], path: Path) -> None:
    with png_figure(path, figsize=(5, 4.5)) as (fig, ax):
        for name, sel in _by_setting(rows).items():
            asked = sorted({r["asked_ml"] for r in sel})
            med = [np.median([r["got_ml"] for r in sel if r["asked_ml"] == a]) for a in asked]
            ax.scatter([r["asked_ml"] for r in sel], [r["got_ml"] for r in sel], s=8, alpha=0.5)
            ax.plot(asked, med, label=f"{name} (median)")
        lim = max(max(r["asked_ml"] for r in rows), max(r["got_ml"] for r in rows)) * 1.05
        ax.plot([0, lim], [0, lim], "k--", lw=0.8, label="identity")
        ax.set_xlabel("asked ventricle volume (mL)")
        ax.set_ylabel("obtained ventricle volume (mL)")
        ax.set_title("w: guidance scale; K: candidates per sample", fontsize=8)
        ax.legend(fontsize=7)


def run(work: Path, models: Path | None = None, asked=(20, 40, 60, 80, 100, 120),
        guidances=None, seeds=(0, 1, 2, 3, 4), image_samples: int = 20, command: str = "", progress=print,
        fit_seeds=(100, 101, 102, 103, 104, 105), fit_points: int = 12) -> dict:
    """Fit the mask bundle's volume calibration (on `fit_seeds`, none of the measuring `seeds`), then measure
    volume control and image realism into the cards. `fit_seeds=()` keeps the bundle's calibration as it is."""
    models = Path(models) if models else work / "bundles"
    mask = MaskGenerator(bundle_path(MASK, models), "cpu")
    image = ImageGenerator(bundle_path(IMAGE, models), "cpu")
    defaults = mask.settings()
    default_w, default_k, steps = defaults.guidance, defaults.candidates, defaults.mask_steps
    if fit_seeds:
        if set(fit_seeds) & set(seeds):
            raise ValueError("the volume calibration is fitted on other seeds than those that measure it")
        calibration = fit_volume_calibration(mask, default_w, steps, list(fit_seeds), fit_points, progress)
        store_volume_calibration(bundle_path(MASK, models), calibration)
        mask = MaskGenerator(bundle_path(MASK, models), "cpu")
    # the model alone (K = 1) at each guidance, and the bundle's default sampling
    grid = sorted({(float(w), 1) for w in (guidances or [1.0, default_w])} | {(default_w, default_k)},
                  key=lambda wk: (wk[1], wk[0]))
    out = work / "calibration"
    out.mkdir(parents=True, exist_ok=True)
    rows = sweep_volume(mask, list(asked), grid, list(seeds), steps, progress)
    stats = summarise(rows)
    plot_sweep(rows, out / "volume_control.png")
    # image realism: pairs across the range at the default guidance
    contrast, previews, pair_seconds = [], [], []
    lo, hi = mask.trained_range_ml
    for i, v in enumerate(np.linspace(max(lo, 15.0), min(hi, 130.0), image_samples)):
        pair = generate_pair(mask, image, float(v), seed=1000 + i)
        contrast.append(t1_contrast_ok(pair.image, pair.label))
        pair_seconds.append(pair.record["seconds"])
        if i in (0, image_samples // 2, image_samples - 1):
            path = out / f"preview_{i:02d}.png"
            write_preview(pair.image, pair.label, path, f"asked {v:.0f} mL, got {pair.record['got_ml']:.1f} mL")
            previews.append(path)
    result = {"volume_control": stats, "default": setting_name(default_w, default_k), "steps": steps, "rows": rows,
              "volume_calibration": mask.calibration,
              "t1_contrast_fraction": float(np.mean(contrast)), "image_samples": image_samples,
              "pair_seconds_median": float(np.median(pair_seconds)), "image_steps": int(image.sampling["steps"]),
              "command": command,
              "threads": torch.get_num_threads()}
    text = json.dumps(result, indent=2)
    write_text(out / "calibration.json", text)
    _write_cards(models, result, out, previews, command)
    return result


def _write_cards(models: Path, result: dict, out: Path, previews: list[Path], command: str) -> None:
    """The measured sections of both cards (with the figures they show); the manifests follow."""
    import shutil

    mask_dir, image_dir = bundle_path(MASK, models), bundle_path(IMAGE, models)
    volume, realism = calibration_sections(result, previews, command)
    shutil.copyfile(out / "volume_control.png", mask_dir / "volume_control.png")
    replace_sections(mask_dir, {VOLUME_CONTROL: volume})
    for p in previews:
        shutil.copyfile(p, image_dir / p.name)
    replace_sections(image_dir, {IMAGE_REALISM: realism})
