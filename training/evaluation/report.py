"""The evaluation report: per-set summaries (mean ± SD, Bland-Altman limits, error trend), the paper's table,
the three plots and report.md comparing prediction sets side by side."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from VentricleSynthLib.io.atomic import refuse_overwriting_inputs, write_csv, write_text
from VentricleSynthLib.io.figures import png_figure
from VentricleSynthLib.labels import VENTRICLE_LABELS

from training.evaluation.scoring import discover, evaluate_folder, matched_cases, parse_pred_specs
from training.outputs import missing_dirs, output_folder, refuse_inside_inputs, remove_if_empty

CASE_FIELDS = ["case", "ref_ml", "pred_ml", "abs_dv_ml", "signed_dv_ml", "dice", "iou", "hd95_mm"]
METRICS = ("dice", "iou", "abs_dv_ml", "signed_dv_ml", "hd95_mm")
REPORT_FILES = ("summary.csv", "summary.json", "report.md", "bland_altman.png", "volume_scatter.png",
                "volumes_by_case.png")


# --- summaries -----------------------------------------------------------------------------------

def _mean_sd(values) -> tuple[float, float]:
    v = np.asarray([x for x in values if np.isfinite(x)], float)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan


def summarize(rows: list[dict]) -> dict:
    """mean and SD of every metric, Bland-Altman bias and limits, and the trend of the error with volume."""
    out: dict = {"n": len(rows)}
    for key in METRICS:
        mean, sd = _mean_sd(r[key] for r in rows)
        out[f"{key}_mean"], out[f"{key}_sd"] = mean, sd
    out["hd95_inf"] = int(sum(1 for r in rows if not np.isfinite(r["hd95_mm"])))
    diff = np.asarray([r["signed_dv_ml"] for r in rows], float)
    ref = np.asarray([r["ref_ml"] for r in rows], float)
    sd = out["signed_dv_ml_sd"]
    out["loa_low_ml"] = out["signed_dv_ml_mean"] - 1.96 * sd if np.isfinite(sd) else math.nan
    out["loa_high_ml"] = out["signed_dv_ml_mean"] + 1.96 * sd if np.isfinite(sd) else math.nan
    out["rmse_ml"] = float(np.sqrt(np.mean(diff ** 2))) if diff.size else math.nan
    out["error_slope"] = out["error_slope_p"] = math.nan
    if ref.size >= 3 and np.ptp(ref) > 0:
        from scipy import stats

        fit = stats.linregress(ref, diff)
        out["error_slope"], out["error_slope_p"] = float(fit.slope), float(fit.pvalue)
    return out


def _fmt(mean: float, sd: float, digits: int = 2) -> str:
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if np.isfinite(sd) else f"{mean:.{digits}f}"


def paper_table(summaries: dict[str, dict], extra: dict[str, dict] | None = None) -> str:
    """Markdown table in the paper's form (MAE ± SD mL, Dice ± SD) with our further columns."""
    lines = ["| model | n | MAE ventricular volume (mL) | Dice | IoU | bias (mL) | HD95 (mm) | error vs volume slope |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in summaries.items():
        note = (extra or {}).get(name, {}).get("note", "")
        if s is None:
            lines.append(f"| {name} | – | {note or 'not run'} | | | | | |")
            continue
        hd = _fmt(s["hd95_mm_mean"], s["hd95_mm_sd"]) + (f" ({s['hd95_inf']} empty)" if s["hd95_inf"] else "")
        slope = "n/a" if not np.isfinite(s["error_slope"]) else f"{s['error_slope']:+.3f} (p={s['error_slope_p']:.2g})"
        lines.append(f"| {name} | {s['n']} | {_fmt(s['abs_dv_ml_mean'], s['abs_dv_ml_sd'])} | "
                     f"{_fmt(s['dice_mean'], s['dice_sd'], 3)} | {_fmt(s['iou_mean'], s['iou_sd'], 3)} | "
                     f"{_fmt(s['signed_dv_ml_mean'], s['signed_dv_ml_sd'])} | {hd} | {slope} |")
    return "\n".join(lines) + "\n"


# --- plots -------------------------------------------------------------------------------------------

def plot_bland_altman(results: dict[str, list[dict]], path: Path) -> None:
    n = len(results)
    with png_figure(path, figsize=(4.2 * n, 3.6), ncols=n, squeeze=False, sharey=True) as (fig, axes):
        for ax, (name, rows) in zip(axes[0], results.items()):
            ref = np.asarray([r["ref_ml"] for r in rows])
            pred = np.asarray([r["pred_ml"] for r in rows])
            mean, diff = (ref + pred) / 2, pred - ref
            ax.scatter(mean, diff, s=14)
            bias = diff.mean()
            ax.axhline(bias, color="k", lw=1, label=f"bias {bias:+.1f} mL")
            if diff.size > 1:
                sd = diff.std(ddof=1)
                for sign in (-1, 1):
                    ax.axhline(bias + sign * 1.96 * sd, color="gray", ls="--", lw=0.8)
            ax.axhline(0, color="lightgray", lw=0.6)
            ax.set_title(name, fontsize=10)
            ax.set_xlabel("mean of reference and prediction (mL)")
            ax.legend(fontsize=7, loc="best")
        axes[0][0].set_ylabel("prediction − reference (mL)")
        fig.suptitle("Bland–Altman: ventricular volume", fontsize=10)


def plot_volume_scatter(results: dict[str, list[dict]], path: Path) -> None:
    with png_figure(path, figsize=(4.6, 4.4)) as (fig, ax):
        lo, hi = math.inf, -math.inf
        for name, rows in results.items():
            ref = np.asarray([r["ref_ml"] for r in rows])
            pred = np.asarray([r["pred_ml"] for r in rows])
            ax.scatter(ref, pred, s=14, label=name)
            lo, hi = min(lo, ref.min(), pred.min()), max(hi, ref.max(), pred.max())
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, ls="--", label="identity")
        ax.set_xlabel("reference ventricular volume (mL)")
        ax.set_ylabel("predicted ventricular volume (mL)")
        ax.legend(fontsize=7)
        ax.set_title("reference vs predicted volume", fontsize=10)


def plot_volumes_by_case(results: dict[str, list[dict]], path: Path) -> None:
    """Per-case volumes sorted by the reference volume (the paper code's per-patient plot)."""
    order = sorted({r["case"]: r["ref_ml"] for rows in results.values() for r in rows}.items(), key=lambda kv: kv[1])
    cases = [c for c, _ in order]
    with png_figure(path, figsize=(max(5.0, 0.25 * len(cases) + 2), 3.8)) as (fig, ax):
        x = np.arange(len(cases))
        ax.plot(x, [v for _, v in order], "k-o", ms=3, lw=1.2, label="reference")
        for name, rows in results.items():
            by = {r["case"]: r["pred_ml"] for r in rows}
            ax.plot(x, [by.get(c, np.nan) for c in cases], "o", ms=3.5, label=name)
        ax.set_xlabel(f"case (sorted by reference volume; n={len(cases)})")
        ax.set_ylabel("ventricular volume (mL)")
        ax.set_xticks([])
        ax.legend(fontsize=7)


# --- the report --------------------------------------------------------------------------------------

def write_report(results: dict[str, list[dict]], out: Path, ref_dir: Path, title: str = "Ventricle segmentation",
                 missing: dict[str, list[str]] | None = None, notes: dict[str, dict] | None = None,
                 preamble: str = "") -> dict:
    """CSV per set, summary.csv/json, the three plots and report.md comparing the sets side by side."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summaries = {}
    for name, rows in results.items():
        write_csv(out / f"per_case_{name}.csv", [_rounded(r) for r in rows], CASE_FIELDS)
        summaries[name] = summarize(rows)
    summary_rows = [{"set": name, **{k: _round(v) for k, v in s.items()}} for name, s in summaries.items()]
    if summary_rows:
        write_csv(out / "summary.csv", summary_rows, list(summary_rows[0]))
    text = json.dumps(finite({"reference": str(ref_dir), "sets": summaries, "missing": missing or {}}),
                      indent=2, default=_json_default) + "\n"
    write_text(out / "summary.json", text)
    plotted = {k: v for k, v in results.items() if v}
    if plotted:
        plot_bland_altman(plotted, out / "bland_altman.png")
        plot_volume_scatter(plotted, out / "volume_scatter.png")
        plot_volumes_by_case(plotted, out / "volumes_by_case.png")
    all_summaries = {**{k: None for k in (notes or {})}, **summaries}
    md = [f"# {title}", "", preamble.strip(), "" if preamble else None,
          f"Reference: `{ref_dir}`. Metrics on the union of the ventricle labels {list(VENTRICLE_LABELS)}; "
          "mean ± SD (sample SD). MAE = mean |predicted − reference| volume; bias = mean signed difference "
          "(predicted − reference); slope = linear trend of the signed error against the reference volume.", "",
          paper_table(all_summaries, notes), ""]
    for name, cases in (missing or {}).items():
        if cases:
            md.append(f"- **{name}**: no prediction for {len(cases)} reference case(s): {', '.join(cases[:10])}"
                      f"{' …' if len(cases) > 10 else ''}")
    if plotted:
        md += ["", "![Bland–Altman](bland_altman.png)", "", "![reference vs predicted](volume_scatter.png)", "",
               "![per-case volumes](volumes_by_case.png)", ""]
    md += ["", "Per-case values: " + ", ".join(f"`per_case_{n}.csv`" for n in results) + "."]
    report = "\n".join(line for line in md if line is not None) + "\n"
    write_text(out / "report.md", report)
    return summaries


def _round(v):
    return round(v, 4) if isinstance(v, float) and np.isfinite(v) else v


def _rounded(row: dict) -> dict:
    return {k: _round(v) for k, v in row.items()}


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(type(o))


def finite(o):
    """JSON has no NaN/inf: non-finite numbers become null."""
    if isinstance(o, dict):
        return {k: finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite(v) for v in o]
    if isinstance(o, (float, np.floating)) and not np.isfinite(o):
        return None
    return o


def evaluate_sets(pred_specs: list[str], ref_dir: Path, out: Path, pred_mappings: list[str] | None = None,
                  ref_mapping: str | None = None, title: str = "Ventricle segmentation") -> dict:
    """Stage `evaluate`: score every `[NAME=]DIR` prediction set against `ref_dir`, then the report in `out`.

    Every input is found and matched, and `out` proved writable and outside the input folders, before the
    first case is scored; a failed run leaves no folder it created."""
    sets = parse_pred_specs(pred_specs, pred_mappings)
    refs = discover(ref_dir, ref_mapping)
    preds = {s.name: discover(s.folder, s.mapping) for s in sets}
    for s in sets:
        matched_cases(preds[s.name], refs, s.folder, ref_dir)
    refuse_inside_inputs(out, f"--out {out}", {"--ref": Path(ref_dir), **{f"--pred {s.name}": s.folder for s in sets}})
    tables = [m for m in [ref_mapping, *(s.mapping for s in sets)] if m and Path(m).is_file()]  # mapping CSVs
    for name in [*(f"per_case_{s.name}.csv" for s in sets), *REPORT_FILES]:
        refuse_overwriting_inputs(Path(out) / name, *tables)
    new_dirs = missing_dirs(out)
    output_folder(out, f"--out {out}")
    try:
        results, missing = {}, {}
        for s in sets:
            results[s.name], missing[s.name] = evaluate_folder(s.folder, ref_dir, refs=refs, preds=preds[s.name])
    except BaseException:
        remove_if_empty(new_dirs)
        raise
    return write_report(results, out, ref_dir, title=title, missing=missing)
