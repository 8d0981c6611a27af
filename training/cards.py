"""Model cards: the card.md of every bundle training writes, and how a card changes.

A card is written whole when its bundle is exported (`generator_card`, `segmenter_card`); the calibrate stage
then replaces its measured sections (`calibration_sections`). Whoever changes a card goes through
`write_card` or `replace_sections`, which rewrite the bundle's manifest afterwards, so a bundle always verifies.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from VentricleSynthLib.bundles import format as bundles
from VentricleSynthLib.generation.settings import MAX_REDRAWS
from VentricleSynthLib.io.atomic import write_text
from VentricleSynthLib.volumes import MAX_VENTRICLE_PIECES

CARD = "card.md"


def write_card(folder: Path, text: str) -> Path:
    """card.md of the bundle in `folder` (whole), then its manifest."""
    write_text(Path(folder) / CARD, text)
    bundles.write_manifest(folder)
    return Path(folder) / CARD


def replace_section(text: str, heading: str, body: str) -> str:
    """`text` with the markdown section `## heading` replaced by `body` (or appended)."""
    marker = f"## {heading}\n"
    if marker in text:
        head, rest = text.split(marker, 1)
        tail = rest.split("\n## ", 1)
        return head + marker + body + ("\n## " + tail[1] if len(tail) > 1 else "")
    return text.rstrip("\n") + "\n\n" + marker + body


def replace_sections(folder: Path, sections: dict[str, str]) -> None:
    """Replace (or append) these `## heading` sections of a bundle's card, then rewrite its manifest."""
    card = Path(folder) / CARD
    text = card.read_text() if card.is_file() else ""
    for heading, body in sections.items():
        text = replace_section(text, heading, body)
    write_card(folder, text)


# --- the generators --------------------------------------------------------------------------------------

def generator_card(config: dict, title: str) -> str:
    """A generator bundle's card from its own config.json: what it is, data, training (calibrate adds more)."""
    prov = config["provenance"]
    steps = "; ".join(f"`{stage}` {v.get('steps')} steps, {v.get('seconds', 0) / 60:.0f} min"
                      for stage, v in prov["steps"].items())
    profile = config["profile"]
    lines = [
        f"# {title}", "",
        f"- Profile `{profile['name']}`: {profile['spacing']} mm, shape {profile['shape']}; latent "
        f"{config['latent_shape']} (scale {config['scale_factor']:.4f}, per-channel shift stored).",
        f"- Architecture (MONAI): `{json.dumps(config['architecture'])}`.",
        f"- Scheduler: `{json.dumps(config['scheduler'])}`; "
        f"sampling defaults `{json.dumps(config.get('sampling', {}))}`.",
        f"- Data: {prov['data']['cases']} training cases of {', '.join(prov['data']['datasets'])} "
        f"(config `{prov['data']['config']}`), the offline template cohort.",
        f"- Training on the CPU (2 cores, 1 thread per stage): {steps}. Git commit `{prov.get('git_commit')}`.",
        f"- Reproduce: `python training/train.py data --config {profile['name']} --work W`, then the stages above "
        f"with the same config, then `python training/train.py calibrate --config {profile['name']} --work W`.",
    ]
    if "volume_normalisation" in config:
        norm = config["volume_normalisation"]
        lines.append(f"- Volume condition: {norm['quantity']}, min–max normalised over "
                     f"{norm['min_ml']:.1f}–{norm['max_ml']:.1f} mL (the trained range).")
    return "\n".join(lines) + "\n"


VOLUME_CONTROL = "Volume control (measured)"
IMAGE_REALISM = "Image realism (measured)"


def _calibration_text(calibration: dict | None) -> str:
    if not calibration:
        return "No volume calibration: the asked volume is the model's condition.\n\n"
    pairs = ", ".join(f"{a:.0f}→{c:.0f}" for a, c in zip(calibration["asked_ml"], calibration["condition_ml"]))
    return (f"Volume calibration (asked → condition, mL; fitted by this stage at w = {calibration['guidance']:g}, "
            f"K = 1, seeds {', '.join(str(s) for s in calibration['seeds'])}, none of the seeds measured below; "
            f"the condition that gave the asked volume as median): {pairs}. All rows below use it.\n\n")


def calibration_sections(result: dict, previews: list[Path], command: str) -> tuple[str, str]:
    """The calibrate stage's measured sections: (mask card's volume control, image card's realism)."""
    asked = list(next(iter(result["volume_control"].values()))["median_got_ml"])
    lines = ["| guidance w | candidates K | Spearman ρ | median abs(obtained−asked)/asked | MAE (mL) | "
             f"median obtained for {'/'.join(asked)} mL | main classes | one component | ventricles whole | redrawn | "
             "s/sample | n | "
             "refined: Spearman ρ | refined: median / p95 error | refined: largest displacement median / max (mm) | "
             "refined: plausible |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in result["volume_control"].items():
        lines.append(f"| {s['guidance']:g}{' (default)' if name == result['default'] else ''} | {s['candidates']} | "
                     f"{s['spearman']:.3f} | {100 * s['median_rel_error']:.1f} % | {s['mean_abs_error_ml']:.1f} | "
                     f"{'/'.join(f'{v:.0f}' for v in s['median_got_ml'].values())} | "
                     f"{100 * s['main_classes_fraction']:.0f} % | {100 * s['one_component_fraction']:.0f} % | "
                     f"{100 * s['whole_ventricles_fraction']:.0f} % | {100 * s['redrawn_fraction']:.0f} % | "
                     f"{s['seconds_median']:.1f} | {s['samples']} | {s['refined_spearman']:.3f} | "
                     f"{100 * s['refined_median_rel_error']:.1f} / {100 * s['refined_p95_rel_error']:.1f} % | "
                     f"{s['max_displacement_mm_median']:.1f} / {s['max_displacement_mm_max']:.1f} | "
                     f"{100 * s['refined_plausible_fraction']:.0f} % |")
    volume = (f"Measured with `{command}` (CPU, {result['threads']} torch threads, {result['steps']} DDIM steps; "
              f"asked {', '.join(asked)} mL, "
              f"{len({r['seed'] for r in result['rows']})} seeds each; K = 1 is the diffusion model alone, K > 1 "
              "keeps the candidate closest to the asked volume; ventricles whole: in at most "
              f"{MAX_VENTRICLE_PIECES} 26-connected pieces; redrawn: samples whose first K candidates all lacked a "
              f"main class or were fragmented, so that the seed's next ones were drawn (up to {MAX_REDRAWS}); the "
              "refined columns: the same label maps moved to the asked volume by exact-volume refinement, the "
              "generator's default; plausible: main classes kept, one brain, ventricles whole).\n\n"
              + _calibration_text(result.get("volume_calibration"))
              + "\n".join(lines) + "\n\n![asked vs obtained](volume_control.png)\n")
    realism = (f"Measured with `{command}`: {result['image_samples']} pairs across the trained range with the mask "
               f"generator's default sampling ({result['default']}). Mean intensity WM > GM > ventricles inside "
               f"the conditioning label map in "
               f"{100 * result['t1_contrast_fraction']:.0f} % of samples. Median seconds per pair (both stages: "
               f"{result['steps']} DDIM steps of the mask model, {result['image_steps']} of the image model; "
               f"{result['threads']} torch threads): "
               f"{result['pair_seconds_median']:.1f} s.\n\n"
               + "".join(f"![preview]({p.name})\n" for p in previews))
    return volume, realism


# --- the segmenter ---------------------------------------------------------------------------------------

def segmenter_card(config: dict, metrics: dict) -> str:
    """The segmenter bundle's card from its config.json and the stage's measured metrics."""
    t, nn, p = config["training"], config["nnunet"], config["profile"]
    lines = [
        "# VentricleSynth ventricle segmenter (nnU-Net v2)", "",
        f"- profile **{p['name']}**: {' x '.join(f'{s:g}' for s in p['spacing'])} mm, "
        f"{' x '.join(str(s) for s in p['shape'])} voxels; input intensities 0.5-99.5 percentile -> [0, 1]",
        f"- labels: {', '.join(f'{i}={n}' for i, n in config['label_names'].items())} "
        f"(FreeSurfer {', '.join(str(v) for v in config['labels'].values())})",
        f"- nnU-Net {nn['nnunetv2_version']}, {nn['configuration']} ({nn['plan']} plan), "
        f"{nn['parameters'] / 1e6:.2f} M parameters, trained with {nn['trainer_trained_with']}: "
        f"{t['schedule']['epochs']} epochs x {t['schedule']['iterations_per_epoch']} iterations"
        + "".join(f" (trained {e['from_epoch']} epochs, then continued to {e['to_epoch']} with --resume: the poly "
                  f"learning rate picked up at epoch {e['from_epoch']} of {e['to_epoch']})"
                  for e in t.get("schedule_extensions") or []),
        "- outputs: " + ("nnU-Net regions (sigmoid), trained as the ventricular system plus one region per "
                         "label; at inference a voxel is ventricle where its most likely label region exceeds "
                         "the decision threshold (next line) and is named by it"
                         if nn.get("targets") == "union+labels" else
                         "softmax over background and the six labels (nnU-Net's default)"),
        f"- decision: a voxel is ventricle where the union probability exceeds "
        f"{(config.get('decision') or {}).get('union_threshold', 0.5):g}"
        + (f" (chosen on the {config['decision']['chosen_on']}; volume MAE by threshold: "
           + ", ".join(f"{k}: {v:.2f} mL" for k, v in config["decision"]["volume_mae_ml"].items()) + ")"
           if "volume_mae_ml" in (config.get("decision") or {}) else ""),
        f"- training data: {t.get('cases', '?')} cases ({t.get('sources', '')}); "
        f"{t.get('seconds', 0):.0f} s of training on {t.get('device', '?')}",
        f"- git commit: {t.get('git_commit') or 'unknown'}", "",
        "Use: `python -m VentricleSynthLib segment T1.nii.gz --out seg.nii.gz` or "
        "`VentricleSynthLib.segmentation.files.segment_file`. The folder under nnUNet_results/ is a standard "
        "nnU-Net v2 model folder (trainer nnUNetTrainer: training only switched mirroring off and changed "
        "the schedule).", "",
    ]
    if metrics:
        config_name = Path(str(t.get("config") or "cpu")).stem
        lines += ["## Measured", "",
                  f"By the stage itself right after training (`python training/train.py segmenter --config "
                  f"{config_name} --work WORK`), on profile-grid cases the network never trained on: `val` is the "
                  "cohort's validation split (nnU-Net's fold-0 validation cases), `enlarged hold-out` the enlarged "
                  "cohort (60-150 mL, its own data seed). Dice and volumes use the union of the six labels; error "
                  "slope = slope of (predicted - reference) mL against the reference volume.", "",
                  "| set | n | Dice (union) | volume MAE (mL) | bias (mL) | HD95 (mm) | error slope |",
                  "|---|---|---|---|---|---|---|"]
        for name, s in metrics.items():
            lines.append(f"| {name} | {s['n']} | {_pm(s, 'dice', 3)} | {_pm(s, 'abs_dv_ml')} | "
                         f"{_num(s.get('signed_dv_ml_mean'), '+.2f')} | {_pm(s, 'hd95_mm')} | "
                         f"{_num(s.get('error_slope'), '+.3f')} |")
        lines.append("")
    return "\n".join(lines)


# measured sections a segmenter benchmark adds to the bundled segmenter's card (`benchmarks/... --card`), in order
BENCHMARK_SECTIONS = {
    "contrasts": "Contrasts, 1 mm hold-out heads (measured, benchmarks/contrasts.py)",
    "phantom": "Partial-volume phantoms, 1 mm (measured, benchmarks/phantom.py)",
    "peers": "Beside public peers on real heads (measured, benchmarks/peers.py)",
    "segment_1mm": "Speed and memory on a 1 mm head (measured, benchmarks/segment_1mm.py)",
}


def record_benchmark(folder: Path, name: str, table: str, command: str, day: str) -> Path:
    """Benchmark `name`'s printed `table` as its section of the segmenter card in `folder`, under the command
    that printed it; the sections follow the stage's own text in the order of BENCHMARK_SECTIONS."""
    card = Path(folder) / CARD
    stage, bodies = benchmark_sections(card.read_text() if card.is_file() else "")
    bodies[BENCHMARK_SECTIONS[name]] = f"Measured with `{command}` on {day} (CPU).\n\n{table.strip()}"
    ordered = [h for h in BENCHMARK_SECTIONS.values() if h in bodies]
    write_card(folder, stage.rstrip("\n") + "\n" + "".join(f"\n## {h}\n{bodies[h]}\n" for h in ordered))
    return card


def benchmark_sections(card: str) -> tuple[str, dict[str, str]]:
    """A segmenter card split into the stage's own text and the benchmark sections after it (heading -> body)."""
    starts = [card.index(f"\n## {h}\n") for h in BENCHMARK_SECTIONS.values() if f"\n## {h}\n" in card]
    if not starts:
        return card, {}
    stage, rest = card[:min(starts)], card[min(starts):]
    bodies = {}
    for part in rest.split("\n## ")[1:]:
        heading, _, body = part.partition("\n")
        bodies[heading] = body.strip("\n")
    return stage, bodies


def _num(value, fmt: str) -> str:
    return "n/a" if value is None or not np.isfinite(value) else format(value, fmt)


def _pm(s: dict, key: str, digits: int = 2) -> str:
    mean, sd = s.get(f"{key}_mean"), s.get(f"{key}_sd")
    text = _num(mean, f".{digits}f")
    return text if sd is None or text == "n/a" or not np.isfinite(sd) else f"{text} ± {sd:.{digits}f}"
