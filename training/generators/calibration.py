"""Stage `calibrate`: how well the mask generator follows the asked ventricle volume, and how T1-like
the image generator's output is. Writes WORK/calibration/{calibration.json,volume_control.png} and
the measured sections of both bundles' card.md (manifests refreshed).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from scipy.stats import spearmanr

from VentricleSynthLib.bundles import format as bundles
from VentricleSynthLib.io.figures import png_figure
from VentricleSynthLib.generation.generators import ImageGenerator, MaskGenerator, generate_pair
from VentricleSynthLib.labels import MAIN_CLASSES, CORTEX_LABELS, VENTRICLE_LABELS, WHITE_MATTER_LABELS
from VentricleSynthLib.io.nifti import atomic_write_bytes
from VentricleSynthLib.generation.sample_folder import write_preview
from VentricleSynthLib.volumes import ventricle_volume_ml


def anatomy_ok(label: np.ndarray) -> dict:
    """The schema's main classes are present and the brain is one connected component."""
    present = set(np.unique(label).tolist())
    _, n_components = ndimage.label(label > 0)
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


def sweep_volume(mask: MaskGenerator, asked: list[float], settings: list[tuple[float, int]], seeds: list[int],
                 steps: int, progress=print) -> list[dict]:
    """Sample every asked volume with every seed under every (guidance, candidates) setting."""
    rows = []
    for w, k in settings:
        for v in asked:
            for s in seeds:
                start = time.perf_counter()
                label, record = mask.sample_with_record(v, guidance=w, steps=steps, seed=s, candidates=k)
                rows.append({"guidance": w, "candidates": k, "asked_ml": v, "seed": s,
                             "got_ml": ventricle_volume_ml(label, mask.affine),
                             "candidates_ml": record["candidates_ml"],
                             "seconds": time.perf_counter() - start, **anatomy_ok(label)})
                progress(f"PROGRESS stage=calibrate w={w} K={k} asked={v} seed={s} got={rows[-1]['got_ml']:.1f}")
    return rows


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
            "seconds_median": float(np.median([r["seconds"] for r in sel])),
            "samples": len(sel),
        }
    return out


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


def _replace_section(card: Path, heading: str, body: str) -> None:
    """Replace (or append) the markdown section `## heading` of a card."""
    text = card.read_text() if card.is_file() else ""
    marker = f"## {heading}\n"
    if marker in text:
        head, rest = text.split(marker, 1)
        tail = rest.split("\n## ", 1)
        text = head + marker + body + ("\n## " + tail[1] if len(tail) > 1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + marker + body
    card.write_text(text)


def run(config: dict, work: Path, models: Path | None = None, asked=(20, 40, 60, 80, 100, 120),
        guidances=None, seeds=(0, 1, 2, 3, 4), image_samples: int = 20, command: str = "", progress=print) -> dict:
    models = Path(models) if models else work / "bundles"
    mask = MaskGenerator(models / "mask_generator", "cpu")
    image = ImageGenerator(models / "image_generator", "cpu")
    default_w = float(mask.sampling["guidance"])
    default_k = int(mask.sampling.get("candidates", 1))
    steps = int(mask.sampling["steps"])
    # the model alone (K = 1) at each guidance, and the bundle's default sampling
    settings = sorted({(float(w), 1) for w in (guidances or [1.0, default_w])} | {(default_w, default_k)},
                      key=lambda wk: (wk[1], wk[0]))
    out = work / "calibration"
    out.mkdir(parents=True, exist_ok=True)
    rows = sweep_volume(mask, list(asked), settings, list(seeds), steps, progress)
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
              "t1_contrast_fraction": float(np.mean(contrast)), "image_samples": image_samples,
              "pair_seconds_median": float(np.median(pair_seconds)), "command": command,
              "threads": torch.get_num_threads()}
    text = json.dumps(result, indent=2)
    atomic_write_bytes(out / "calibration.json", lambda tmp: Path(tmp).write_text(text))
    _write_cards(models, result, out, previews, command)
    return result


def _write_cards(models: Path, result: dict, out: Path, previews: list[Path], command: str) -> None:
    import shutil

    mask_dir, image_dir = models / "mask_generator", models / "image_generator"
    asked = list(next(iter(result["volume_control"].values()))["median_got_ml"])
    lines = ["| guidance w | candidates K | Spearman ρ | median abs(obtained−asked)/asked | MAE (mL) | "
             f"median obtained for {'/'.join(asked)} mL | main classes | one component | s/sample | n |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in result["volume_control"].items():
        lines.append(f"| {s['guidance']:g}{' (default)' if name == result['default'] else ''} | {s['candidates']} | "
                     f"{s['spearman']:.3f} | {100 * s['median_rel_error']:.1f} % | {s['mean_abs_error_ml']:.1f} | "
                     f"{'/'.join(f'{v:.0f}' for v in s['median_got_ml'].values())} | "
                     f"{100 * s['main_classes_fraction']:.0f} % | {100 * s['one_component_fraction']:.0f} % | "
                     f"{s['seconds_median']:.1f} | {s['samples']} |")
    shutil.copyfile(out / "volume_control.png", mask_dir / "volume_control.png")
    body = (f"Measured with `{command}` (CPU, {result['threads']} torch threads, {result['steps']} DDIM steps; "
            f"asked {', '.join(asked)} mL, "
            f"{len({r['seed'] for r in result['rows']})} seeds each; K = 1 is the diffusion model alone, K > 1 keeps "
            "the candidate closest to the asked volume).\n\n"
            + "\n".join(lines) + "\n\n![asked vs obtained](volume_control.png)\n")
    _replace_section(mask_dir / "card.md", "Volume control (measured)", body)
    for p in previews:
        shutil.copyfile(p, image_dir / p.name)
    body = (f"Measured with `{command}`: {result['image_samples']} pairs across the trained range with the mask "
            f"generator's default sampling ({result['default']}). Mean intensity WM > GM > ventricles inside "
            f"the conditioning label map in "
            f"{100 * result['t1_contrast_fraction']:.0f} % of samples. Median seconds per pair (both stages, "
            f"{result['steps']} steps each, {result['threads']} torch threads): "
            f"{result['pair_seconds_median']:.1f} s.\n\n"
            + "".join(f"![preview]({p.name})\n" for p in previews))
    _replace_section(image_dir / "card.md", "Image realism (measured)", body)
    bundles.write_manifest(mask_dir)
    bundles.write_manifest(image_dir)
