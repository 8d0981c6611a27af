"""Stage `evaluate`: score ventricle segmentations against references, for any number of prediction sets.

`python training/train.py evaluate --pred [NAME=]DIR [--pred ...] --ref DIR --out DIR
[--pred-mapping SPEC ...] [--ref-mapping SPEC]`

Metrics are on the binary union of the six ventricle labels (4, 43, 5, 44, 14, 15), as in the
paper's code: Dice, IoU, volumes in mL (|dV| and signed dV = pred - ref), and HD95 in mm.
HD95 is the symmetric 95th-percentile surface distance: the larger of the two directed 95th
percentiles of distances from the surface voxels of one mask to the nearest surface voxel of the
other (surface = mask voxels with a 6-neighbour outside; distances between voxel centres in mm,
anisotropic spacing honoured). Conventions for empty masks: both empty -> Dice 1, IoU 1, HD95 0;
exactly one empty -> Dice 0, IoU 0, HD95 inf (reported as a count, left out of the HD95 mean).
Mean +- SD use the sample SD (ddof=1).

Folders: a folder of `CASE.nii.gz` label maps, an nnU-Net raw dataset (`labelsTr/` + dataset.json,
whose index -> FreeSurfer table is applied), or generated samples (`sample_*/label.nii.gz`).
Label conventions: FreeSurfer/SynthSeg numbers by default; `--*-mapping cerebra` or a CSV
(`source,target`) for others. Prediction and reference of a case must share one voxel grid.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage

from VentricleSynthLib.errors import DatasetError, GeometryMismatchError, InvalidImageError
from VentricleSynthLib.io.figures import png_figure
from VentricleSynthLib.labels import LabelMapping, VENTRICLE_LABELS, mapping_from_spec, validate_label_map
from VentricleSynthLib.io.nifti import NIFTI_SUFFIXES, Volume, _affine, _as_3d, _read, atomic_write_bytes, check_same_grid
from VentricleSynthLib.io.nnunet_raw import index_to_freesurfer, read_dataset_json, write_csv
from VentricleSynthLib.metrics import dice, iou
from VentricleSynthLib.volumes import voxel_volume_ml

CASE_FIELDS = ["case", "ref_ml", "pred_ml", "abs_dv_ml", "signed_dv_ml", "dice", "iou", "hd95_mm"]
METRICS = ("dice", "iou", "abs_dv_ml", "signed_dv_ml", "hd95_mm")
STRIP_SUFFIXES = ("_seg", "_label", "_labels", "_pred", "_synthseg", "_aseg", "_ventricles")


# --- metrics -----------------------------------------------------------------------------------------

def surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with at least one 6-neighbour outside the mask (or outside the array)."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return mask.copy()
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1), border_value=0)
    return mask & ~eroded


def directed_surface_distances(src: np.ndarray, dst: np.ndarray, spacing) -> np.ndarray:
    """Distances (mm) from each surface voxel of `src` to the nearest surface voxel of `dst` (both non-empty)."""
    s_src, s_dst = surface(src), surface(dst)
    return ndimage.distance_transform_edt(~s_dst, sampling=spacing)[s_src]


def hd95(a: np.ndarray, b: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm (see the module notes for empty masks)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    has_a, has_b = a.any(), b.any()
    if not has_a and not has_b:
        return 0.0
    if not has_a or not has_b:
        return math.inf
    # crop to the union's box (+1 voxel): every surface voxel lies inside, so distances are exact
    idx = np.argwhere(a | b)
    lo = np.maximum(idx.min(axis=0) - 1, 0)
    hi = np.minimum(idx.max(axis=0) + 2, a.shape)
    box = tuple(slice(int(l), int(h)) for l, h in zip(lo, hi))
    a, b = a[box], b[box]
    spacing = [float(s) for s in spacing]
    d_ab = directed_surface_distances(a, b, spacing)
    d_ba = directed_surface_distances(b, a, spacing)
    return float(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)))


def compare(pred: Volume, ref: Volume, case: str = "") -> dict:
    """Every metric of one case on the ventricle union; refuses different voxel grids."""
    what = f"case {case}: prediction and reference" if case else "prediction and reference"
    check_same_grid(pred, ref, what=what)
    p = np.isin(pred.array, VENTRICLE_LABELS)
    r = np.isin(ref.array, VENTRICLE_LABELS)
    voxel = voxel_volume_ml(ref.affine)
    ref_ml, pred_ml = float(r.sum()) * voxel, float(p.sum()) * voxel
    return {
        "case": case,
        "ref_ml": ref_ml,
        "pred_ml": pred_ml,
        "abs_dv_ml": abs(pred_ml - ref_ml),
        "signed_dv_ml": pred_ml - ref_ml,
        "dice": dice(p, r),
        "iou": iou(p, r),
        "hd95_mm": hd95(p, r, ref.spacing),
    }


# --- reading label maps --------------------------------------------------------------------------

def load_labels(path: Path, mapping: LabelMapping | None = None) -> Volume:
    """A label map in FreeSurfer numbers (after `mapping`); unlike nifti.load_label_map, empty maps are fine."""
    path = Path(path)
    img, data = _read(path)
    arr = np.asarray(_as_3d(path, data))
    if arr.dtype.kind == "f" and (not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr))):
        raise InvalidImageError(f"{path}: label map has non-integer or non-finite values")
    if mapping is not None:
        arr = mapping.apply(arr)
    else:
        validate_label_map(arr, what=str(path))
    return Volume(arr.astype(np.int16), _affine(path, img))


def _case_id(name: str) -> str:
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def discover(folder: Path, mapping=None) -> dict[str, Callable[[], Volume]]:
    """case id -> loader of its label map (FreeSurfer numbers) for any supported folder layout."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder")
    explicit = mapping_from_spec(mapping)
    if (folder / "dataset.json").is_file() and (folder / "labelsTr").is_dir():
        table = explicit or LabelMapping("dataset.json", index_to_freesurfer(read_dataset_json(folder)))
        files = {_case_id(p.name): p for p in sorted((folder / "labelsTr").iterdir()) if _case_id(p.name) != p.name}
    else:
        table = explicit
        files = {_case_id(p.name): p for p in sorted(folder.iterdir())
                 if p.is_file() and not p.name.startswith(".") and _case_id(p.name) != p.name}
        for sample in sorted(folder.glob("sample_*")):
            if (sample / "label.nii.gz").is_file():
                files[sample.name] = sample / "label.nii.gz"
    if not files:
        raise DatasetError(f"{folder}: no label maps found (expected CASE.nii.gz files, labelsTr/ of an nnU-Net "
                           f"dataset, or sample_*/label.nii.gz)")
    return {case: (lambda p=path: load_labels(p, table)) for case, path in files.items()}


def _strip(case: str) -> str:
    for suffix in STRIP_SUFFIXES:
        if case.lower().endswith(suffix):
            return case[: -len(suffix)]
    return case


def match_cases(pred: dict, ref: dict) -> tuple[list[tuple[str, str]], list[str]]:
    """(pred id, ref id) pairs by exact id, else after removing suffixes like _seg/_pred; and the unmatched refs."""
    pairs, missing = [], []
    by_stripped = {_strip(k): k for k in pred}
    for case in sorted(ref):
        if case in pred:
            pairs.append((case, case))
        elif _strip(case) in by_stripped:
            pairs.append((by_stripped[_strip(case)], case))
        else:
            missing.append(case)
    return pairs, missing


def evaluate_folder(pred_dir: Path, ref_dir: Path, pred_mapping=None, ref_mapping=None,
                    refs: dict | None = None) -> tuple[list[dict], list[str]]:
    """Per-case metrics of one prediction set; the reference cases it has no prediction for."""
    preds = discover(pred_dir, pred_mapping)
    refs = refs if refs is not None else discover(ref_dir, ref_mapping)
    pairs, missing = match_cases(preds, refs)
    if not pairs:
        raise DatasetError(f"no case of {pred_dir} matches a reference case in {ref_dir} "
                           f"(reference ids e.g. {', '.join(sorted(refs)[:3])})")
    return [compare(preds[p](), refs[r](), case=r) for p, r in pairs], missing


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


# --- the stage ---------------------------------------------------------------------------------------

@dataclass
class PredictionSet:
    name: str
    folder: Path
    mapping: str | None = None


def parse_pred_specs(specs: list[str], mappings: list[str] | None = None) -> list[PredictionSet]:
    """`[NAME=]DIR` specs (name defaults to the folder name); mappings: none, one for all, or one per set."""
    mappings = list(mappings or [])
    if len(mappings) not in (0, 1, len(specs)):
        raise DatasetError(f"--pred-mapping: give one mapping for all {len(specs)} prediction sets or one per set, "
                           f"not {len(mappings)}")
    sets, names = [], set()
    for i, spec in enumerate(specs):
        name, sep, folder = str(spec).partition("=")
        if not sep or not name or Path(spec).exists():
            name, folder = Path(spec).name, str(spec)
        if name in names:
            raise DatasetError(f"two prediction sets are named {name!r}; name them with NAME=DIR")
        names.add(name)
        mapping = mappings[i] if len(mappings) == len(specs) else (mappings[0] if mappings else None)
        sets.append(PredictionSet(name, Path(folder), mapping))
    return sets


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
    text = json.dumps(_finite({"reference": str(ref_dir), "sets": summaries, "missing": missing or {}}),
                      indent=2, default=_json_default) + "\n"
    atomic_write_bytes(out / "summary.json", lambda tmp: Path(tmp).write_text(text))
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
    atomic_write_bytes(out / "report.md", lambda tmp: Path(tmp).write_text(report))
    return summaries


def _round(v):
    return round(v, 4) if isinstance(v, float) and np.isfinite(v) else v


def _rounded(row: dict) -> dict:
    return {k: _round(v) for k, v in row.items()}


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(type(o))


def run(pred_specs: list[str], ref_dir: Path, out: Path, pred_mappings: list[str] | None = None,
        ref_mapping: str | None = None, title: str = "Ventricle segmentation") -> dict:
    sets = parse_pred_specs(pred_specs, pred_mappings)
    refs = discover(ref_dir, ref_mapping)
    results, missing = {}, {}
    for s in sets:
        results[s.name], missing[s.name] = evaluate_folder(s.folder, ref_dir, s.mapping, refs=refs)
    return write_report(results, out, ref_dir, title=title, missing=missing)


def _finite(o):
    """JSON has no NaN/inf: non-finite numbers become null."""
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if isinstance(o, (float, np.floating)) and not np.isfinite(o):
        return None
    return o


__all__ = ["dice", "iou", "hd95", "surface", "compare", "load_labels", "discover", "evaluate_folder", "summarize",
           "paper_table", "write_report", "run", "GeometryMismatchError"]
