"""The cohort report: OUT/report/{report.md, volumes.png, qc.png, montage.png} from the cases' rows.

volumes.png: histograms of the asked and obtained ventricle volumes, and obtained against asked.
qc.png: label-fidelity Dice, volume error and the largest connected piece's share of the ventricles.
montage.png: up to eight samples spread over the obtained volume range.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from VentricleSynthLib.cohorts.qc import DEFAULT_MIN_DICE, VOLUME_TOLERANCE_ML, VOLUME_TOLERANCE_REL
from VentricleSynthLib.io.atomic import write_text
from VentricleSynthLib.io.figures import png_figure
from VentricleSynthLib.io.montage import write_montage
from VentricleSynthLib.volumes import MAX_VENTRICLE_PIECES

MONTAGE_SAMPLES = 8
DICE_GOAL = 0.85
TABLE_ROWS = 200


def _number(v) -> float | None:
    """A finite float from a row's cell, None for an empty or non-finite one."""
    if v in (None, ""):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _floats(rows: list[dict], key: str) -> np.ndarray:
    return np.asarray([v for v in (_number(r.get(key)) for r in rows) if v is not None], dtype=float)


def summary(rows: list[dict]) -> dict:
    """The cohort's headline numbers (JSON-ready; None where not measurable)."""
    from scipy.stats import spearmanr

    measured = [r for r in rows if _number(r.get("asked_ml")) is not None and _number(r.get("got_ml")) is not None]
    asked, got = _floats(measured, "asked_ml"), _floats(measured, "got_ml")  # aligned: the same rows
    dice = _floats(rows, "qc_dice")
    err = got - asked
    rho = None
    if len(asked) >= 3 and np.ptp(asked) > 0 and np.ptp(got) > 0:
        rho = float(spearmanr(asked, got)[0])
    seconds = _floats(rows, "seconds")
    return {
        "samples": len(rows),
        "included": sum(1 for r in rows if r["included"]),
        "flagged": sum(1 for r in rows if r["qc"] != "ok"),
        "spearman_asked_got": None if rho is None else round(rho, 4),
        "median_abs_error_ml": round(float(np.median(np.abs(err))), 3) if err.size else None,
        "median_rel_error": round(float(np.median(np.abs(err) / asked)), 4) if err.size else None,
        "median_dice": round(float(np.median(dice)), 4) if dice.size else None,
        "dice_measured": int(dice.size),
        "seconds_per_sample": round(float(seconds.mean()), 3) if seconds.size else None,
    }


def plot_volumes(rows: list[dict], path: Path) -> None:
    asked, got = _floats(rows, "asked_ml"), _floats(rows, "got_ml")
    with png_figure(path, ncols=2, figsize=(9, 3.8)) as (fig, (ax1, ax2)):
        lo, hi = float(min(asked.min(), got.min())), float(max(asked.max(), got.max()))
        bins = np.linspace(lo, hi if hi > lo else lo + 1, min(30, max(5, len(rows) // 3)) + 1)
        ax1.hist(asked, bins=bins, alpha=0.6, label="asked")
        ax1.hist(got, bins=bins, alpha=0.6, label="obtained")
        ax1.set_xlabel("ventricle volume (mL)")
        ax1.set_ylabel("samples")
        ax1.legend()
        ax2.scatter(asked, got, s=12)
        ax2.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax2.set_xlabel("asked (mL)")
        ax2.set_ylabel("obtained (mL)")
        fig.suptitle("Ventricle volumes: asked vs obtained", fontsize=10)


def plot_qc(rows: list[dict], path: Path) -> None:
    panels = [("qc_dice", "label fidelity Dice", (0.0, 1.0)), ("volume_error_ml", "obtained - asked (mL)", None),
              ("largest_component_fraction", "largest piece / ventricles", (0.0, 1.0))]
    with png_figure(path, ncols=3, figsize=(11, 3.4)) as (fig, axes):
        for ax, (key, title, limits) in zip(axes, panels):
            values = _floats(rows, key)
            if values.size:
                ax.hist(values, bins=20 if limits else min(20, max(5, values.size // 2)), range=limits)
            else:
                ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(title, fontsize=9)


def montage_indices(rows: list[dict], n: int = MONTAGE_SAMPLES) -> list[int]:
    """Indices of up to `n` samples at evenly spaced ranks of the obtained volume."""
    ordered = sorted(rows, key=lambda r: float(r["got_ml"]))
    if len(ordered) <= n:
        return [int(r["index"]) for r in ordered]
    picks = np.unique(np.round(np.linspace(0, len(ordered) - 1, n)).astype(int))
    return [int(ordered[p]["index"]) for p in picks]


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def write_report(out: Path, rows: list[dict], run: dict, load: Callable[[int], tuple[np.ndarray, np.ndarray]],
                 min_dice: float | None = None) -> dict:
    """Write OUT/report/; `load(index)` gives a sample's (image, label) for the montage. Returns the summary."""
    folder = Path(out) / "report"
    folder.mkdir(parents=True, exist_ok=True)
    s = summary(rows)
    if not rows:
        return s
    plot_volumes(rows, folder / "volumes.png")
    plot_qc(rows, folder / "qc.png")
    by_index = {int(r["index"]): r for r in rows}
    cases = []
    for index in montage_indices(rows):
        image, label = load(index)
        r = by_index[index]
        cases.append({"image": image, "label": label,
                      "caption": f"{r['case']}\nasked {float(r['asked_ml']):.1f} mL\ngot {float(r['got_ml']):.1f} mL"})
    write_montage(cases, folder / "montage.png", title="SYNTHETIC samples across the volume range")
    threshold = DEFAULT_MIN_DICE if min_dice is None else min_dice
    dice_line = (f"**{s['median_dice']:.3f}** over {s['dice_measured']} samples (goal >= {DICE_GOAL})"
                 if s["median_dice"] is not None else
                 f"not measured ({next((r['qc_note'] for r in rows if r.get('qc_note')), 'no segmenter bundle')})")
    models = sorted({r["qc_model"] for r in rows if r.get("qc_model")})
    seg_text = ", ".join(f"`{m}`" for m in models) or "none"
    if len(models) > 1:
        seg_text += " (several: their Dice values are not comparable; see cases.csv qc_model)"
    rel = None if s["median_rel_error"] is None else 100 * s["median_rel_error"]
    lines = [
        "# Synthetic cohort",
        "",
        "SYNTHETIC data for training and research; not images of real people.",
        "",
        f"- samples: {s['samples']} ({s['included']} in the dataset, {s['samples'] - s['included']} rejected by "
        f"`--qc-min-dice`), format `{run['format']}`",
        f"- distribution: {run['distribution_description']} (`{run['distribution']}`), base seed {run['seed']}",
        f"- guidance {run['guidance']:g}, DDIM steps {run['steps']['mask']} (mask) / {run['steps']['image']} (image), "
        f"{run.get('candidates', 1)} candidate label map(s) per sample (the one closest to the asked volume kept), "
        + ("then moved to exactly the asked volume (exact-volume refinement; cases.csv: got_ml_before_refinement, "
           "max_displacement_mm)" if run.get("refine") else "no exact-volume refinement (`--no-refine`)"),
        f"- models: mask `{run['models']['mask']['name']}` {run['models']['mask']['sha256'][:12]}, image "
        f"`{run['models']['image']['name']}` {run['models']['image']['sha256'][:12]}; QC segmenter: "
        f"{seg_text}",
        "",
        "## Volume control",
        "",
        f"- Spearman correlation of obtained with asked volume: {_fmt(s['spearman_asked_got'], '.3f')}",
        f"- median |obtained - asked|: {_fmt(s['median_abs_error_ml'], '.2f')} mL "
        f"({_fmt(rel, '.1f')} % of the asked volume)",
        "",
        "![volumes](volumes.png)",
        "",
        "## Quality control",
        "",
        f"- median label-fidelity Dice (segmenter on the generated image vs the generated label map): {dice_line}",
        f"- flagged samples: {s['flagged']} of {s['samples']} (flags: `volume_off` |error| > "
        f"{VOLUME_TOLERANCE_ML:g} mL and > {100 * VOLUME_TOLERANCE_REL:g} %; `low_dice` Dice < {threshold:g}; "
        f"`fragmented` more than {MAX_VENTRICLE_PIECES} connected pieces; `no_ventricles`)",
        f"- seconds per sample (generation + QC): {_fmt(s['seconds_per_sample'], '.2f')}",
        "",
        "![qc](qc.png)",
        "",
        "## Samples across the volume range",
        "",
        "![montage](montage.png)",
        "",
        "## Cases",
        "",
        "| case | asked mL | got mL | Dice | pieces | QC | in dataset |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows[:TABLE_ROWS]:
        d = r.get("qc_dice")
        lines.append(f"| {r['case']} | {float(r['asked_ml']):.1f} | {float(r['got_ml']):.1f} | "
                     f"{'n/a' if d in (None, '') else format(float(d), '.3f')} | {r['components']} | {r['qc']} | "
                     f"{'yes' if r['included'] else 'no'} |")
    if len(rows) > TABLE_ROWS:
        lines.append(f"\n{len(rows) - TABLE_ROWS} more in cases.csv.")
    text = "\n".join(lines) + "\n"
    write_text(folder / "report.md", text)
    return s
