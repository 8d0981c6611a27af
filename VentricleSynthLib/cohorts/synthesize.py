"""Synthetic cohorts: K labelled pairs whose ventricle volumes follow a chosen distribution, with QC and a report.

Restartable and shardable with no coordinator:
- sample i asks `distribution.volume(i, seed)` mL with generator seed `sample_seed(seed, i)`;
- indices form fixed blocks of `batch_size` (one batched sampling call each, always computed whole), and
  block b belongs to shard b mod N (`owned`; `--shard i/N`, or RANK/WORLD_SIZE under torchrun): a sample's
  values depend on the settings only, never on the shard, the count or earlier interruptions;
- a sample is complete once its record exists (written last, atomically) and is then skipped; at start-up the
  owner clears whatever an interrupted write left for its incomplete indices, so a killed run redoes at most
  the samples it was writing and leaves no dataset file without a record;
- OUT/synthesis.json pins what decides the values and the dataset (format, distribution, seed, guidance,
  steps, candidates, models, batch size, device type, QC filter); it is created exclusively, and a run with
  other settings refuses the folder (a different batch size would also change which shard owns an index);
- a block that fails (out of memory, a model error) is reported in one line and counted; its samples get no
  record, so the next run retries them;
- every run ends by rebuilding cases.csv, dataset.json and the report from all records present, so the
  last shard to finish (or any later run) leaves them complete.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from VentricleSynthLib.cohorts.distributions import Distribution, check_seed, parse, sample_seed
from VentricleSynthLib.cohorts.layout import FORMATS, make_layout
from VentricleSynthLib.cohorts.request import CohortRequest, check_min_dice, owned, parse_shard, shard_device
from VentricleSynthLib.errors import OutputError, RequestError, VentricleSynthError
from VentricleSynthLib.generation.refinement import RECORD_FIELDS

RUN_FILE = "synthesis.json"
CASE_FIELDS = ["case", "index", "asked_ml", "got_ml", "seed", "guidance", "steps", "image_steps", "candidates",
               "redrawn", "refine", *RECORD_FIELDS, "seconds", "qc",
               "qc_dice", "qc_seg_ml", "volume_error_ml", "components", "largest_component_fraction", "included",
               "tiv_ml", "batch_size", "device", "qc_model", "qc_note", "warnings"]


def _check_out(out: Path) -> None:
    """Refuse a folder that holds something other than this kind of cohort (inputs are never overwritten)."""
    if out.is_file():
        raise OutputError(f"cannot write to --out {out}: it is a file")
    if out.is_dir() and not (out / RUN_FILE).is_file():
        foreign = [p.name for p in out.iterdir() if not p.name.startswith(".")]
        if foreign:
            raise OutputError(f"--out {out} is not empty and holds no synthetic cohort ({RUN_FILE}); "
                              f"use a new or empty folder")


def _pin_settings(out: Path, run: dict) -> None:
    """Create OUT/synthesis.json with `run`, or refuse the folder if it pins other settings.

    Created exclusively (written aside, then hard-linked, which fails if the file exists): of two shards
    starting together one pins, the other compares."""
    path = out / RUN_FILE
    tmp = out / f".{RUN_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(run, indent=2) + "\n")
    try:
        os.link(tmp, path)
        return
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    try:
        old = json.loads(path.read_text())
    except ValueError:
        old = None
    if old != run:
        old = old if isinstance(old, dict) else {}
        keys = sorted(k for k in set(run) | set(old) if old.get(k) != run.get(k))
        raise RequestError(f"--out {out} holds a cohort made with other settings ({', '.join(keys)}); "
                           f"use the same settings to extend or resume it, or another --out")


def find_segmenter(*roots: Path | None) -> tuple[Path | None, str]:
    """The QC segmenter bundle: ROOT/segmenter of the first root holding one, else the default models folder's
    ($VENTRICLESYNTH_MODELS or the bundled); (None, why) when there is none. The one search order of the
    CLI and `train.py synthesize`."""
    from VentricleSynthLib.bundles.store import SEGMENTER, find_bundle

    folder, searched = find_bundle(SEGMENTER, *roots)
    return folder, "" if folder else f"no segmenter bundle in {', '.join(map(str, searched))}"


def _segmenter_folder(request: CohortRequest) -> tuple[Path | None, str]:
    if request.segmenter is not None:
        folder = Path(request.segmenter)
        if not folder.is_dir():
            raise RequestError(f"segmenter bundle {folder} not found")
        return folder, ""
    return find_segmenter(request.models)


def row(record: dict, included: bool, min_dice: float | None) -> dict:
    """A cases.csv row: the record's values, its QC flags ('ok' when none) and whether it is in the dataset."""
    from VentricleSynthLib.cohorts.qc import flags

    qc = flags(record, min_dice)
    model = record.get("qc_model")
    return {**{k: record.get(k) for k in CASE_FIELDS}, "steps": record["steps"]["mask"],
            "qc_model": f"{model['name']} {model['sha256'][:12]}" if model else "",
            "image_steps": record["steps"]["image"], "qc": ";".join(qc) or "ok", "included": included,
            "qc_dice": "" if record.get("qc_dice") is None else record["qc_dice"],
            "qc_seg_ml": "" if record.get("qc_seg_ml") is None else record["qc_seg_ml"],
            "warnings": "; ".join(record.get("warnings") or [])}


def assemble(out: Path, layout, run: dict, min_dice: float | None = None, report: bool = True) -> dict:
    """cases.csv, dataset.json (nnunet) and the report from every record present; returns the summary."""
    from VentricleSynthLib.cohorts.report import summary, write_report

    for _ in range(3):  # a shard finishing meanwhile adds records: go again until nothing changed
        records = layout.records()
        rows = [row(r, layout.included(r["index"]), min_dice) for r in records]
        layout.finish(rows, CASE_FIELDS, extra={
            "name": "VentricleSynth synthetic cohort", "synthetic": True, "distribution": run["distribution"],
            "seed": run["seed"], "guidance": run["guidance"],
            "description": "SYNTHETIC labelled brain MRI (VentricleSynth latent diffusion generators); "
                           "labels are consecutive indices, see freesurfer_labels"})
        result = write_report(out, rows, run, layout.load, min_dice) if report and rows else summary(rows)
        if len(layout.records()) == len(records):
            return result
    return result


def synthesize(request: CohortRequest, log: Callable[[str], None] = print) -> dict:
    """Generate (or finish) this process's share of the cohort, then assemble it. Returns the summary."""
    from VentricleSynthLib.bundles.store import IMAGE, MASK, bundle_path
    from VentricleSynthLib.command_line import print_warning
    from VentricleSynthLib.generation.generators import ImageGenerator, MaskGenerator
    from VentricleSynthLib.generation.pairs import generate_pairs, settings_for
    from VentricleSynthLib.io.atomic import writable_dir

    started = time.perf_counter()
    if request.format not in FORMATS:
        raise RequestError(f"--format must be one of {', '.join(FORMATS)}, got {request.format!r}")
    min_dice = check_min_dice(request.qc_min_dice)
    seed = check_seed(request.seed)
    shard, shards = parse_shard(request.shard)
    dist = request.distribution if isinstance(request.distribution, Distribution) else parse(request.distribution)
    count = request.count if request.count is not None else dist.natural_count
    if count is None:
        raise RequestError("--count is needed with this --distribution")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise RequestError(f"--count must be >= 1, got {count!r}")
    out = Path(request.out)
    _check_out(out)
    seg_folder, seg_note = _segmenter_folder(request)
    if min_dice is not None and seg_folder is None:
        raise RequestError(f"--qc-min-dice needs a segmenter bundle for label fidelity ({seg_note})")
    device = shard_device(request.device)

    mask = MaskGenerator(bundle_path(MASK, request.models), device)
    image = ImageGenerator(bundle_path(IMAGE, request.models), device)
    batch = request.batch_size if request.batch_size is not None else (8 if mask.device.type == "cuda" else 1)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise RequestError(f"--batch-size must be >= 1, got {batch!r}")
    dist = dist.bind(mask.trained_range_ml)
    blocks = -(-count // batch)
    volumes = np.round(dist.volumes(blocks * batch, seed), 3)  # whole blocks: see the module docstring
    for v in np.unique(volumes):
        mask.check_volume(float(v))  # one out of bounds refuses the cohort before anything is written
    _warn_outside_range(mask, volumes[:count])
    settings = settings_for(mask, image, request.guidance, request.steps, request.candidates, request.image_steps,
                            request.refine)
    # batch size and device type decide the values (batched kernels) and the batch size which shard owns what
    run = {"format": request.format, "distribution": dist.spec, "seed": seed, "guidance": settings.guidance,
           "steps": settings.steps, "candidates": settings.candidates,
           "refine": settings.refine, "models": {"mask": mask.id, "image": image.id},
           "batch_size": batch, "device_type": mask.device.type, "qc_min_dice": min_dice}

    out = writable_dir(out)
    _pin_settings(out, run)
    layout = make_layout(request.format, out)
    mine = owned(count, batch, shard, shards)
    done = {i for i in mine if layout.is_complete(i)}
    for i in mine:  # what a killed run left: staging, and dataset files without their record
        if i in done:
            layout.clear_staging(i)
        else:
            layout.clear(i)

    from VentricleSynthLib.cohorts.qc import FidelityCheck, measure, passes_filter

    check = None
    bar = _bar(len(mine), len(done), f"synthesize {shard}/{shards}" if shards > 1 else "synthesize",
               request.progress)
    generated, failures, gen_seconds = 0, 0, 0.0
    for b in sorted({i // batch for i in mine if i not in done}):
        block = list(range(b * batch, (b + 1) * batch))
        todo = [i for i in block if i < count and i not in done]
        if check is None:  # loaded once there is work: a complete cohort needs no model but the generators
            check = FidelityCheck(seg_folder, device, note=seg_note)
        t0 = time.perf_counter()
        try:
            pairs = generate_pairs(mask, image, [float(volumes[i]) for i in block],
                                   [sample_seed(seed, i) for i in block], settings)
            for i in todo:
                pair = pairs[i - b * batch]
                q0 = time.perf_counter()
                qc = measure(pair.image, pair.label, pair.affine, pair.record["asked_ml"], pair.record["got_ml"],
                             check)
                record = {"case": layout.case(i), "index": i, **pair.record, "batch_size": batch,
                          "generation_seconds": pair.record["seconds"],
                          "qc_seconds": round(time.perf_counter() - q0, 3), "qc_model": check.model, **qc}
                record["seconds"] = round(record["generation_seconds"] + record["qc_seconds"], 3)
                layout.write(i, pair.image, pair.label, pair.affine, record, keep=passes_filter(record, min_dice))
                generated += 1
                log(json.dumps({key: record[key] for key in (
                    "case", "asked_ml", "got_ml", "got_ml_before_refinement", "max_displacement_mm", "qc_dice", "seed",
                    "seconds")}))
                for warning in pair.record["warnings"][len(mask.check_volume(pair.record["asked_ml"])):]:
                    print_warning(f"{record['case']}: {warning}")  # the refinement's
                if bar:
                    bar.update(1)
        except (VentricleSynthError, RuntimeError) as exc:  # RuntimeError: CUDA out of memory among others
            lost = [i for i in todo if not layout.is_complete(i)]
            for i in lost:
                layout.clear(i)
            failures += len(lost)
            log(f"synthesize: {', '.join(layout.case(i) for i in lost)} failed (no record; a rerun retries them): "
                f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
            if mask.device.type == "cuda":
                import torch

                torch.cuda.empty_cache()
            continue
        gen_seconds += time.perf_counter() - t0
    if bar:
        bar.close()

    result = assemble(out, layout, {**run, "distribution_description": dist.describe()}, min_dice, request.report)
    complete = sum(1 for i in range(count) if layout.is_complete(i))  # records beyond --count not counted
    per_sample = gen_seconds / generated if generated else float("nan")
    result.update({"out": str(out), "count": count, "complete": complete, "shard": [shard, shards],
                   "generated": generated, "failures": failures, "skipped": len(done),
                   "seconds": round(time.perf_counter() - started, 1),
                   "seconds_per_generated": None if not generated else round(per_sample, 3)})
    log(f"synthesize: {complete} of {count} samples complete ({generated} generated now, {len(done)} already "
        f"complete{f', shard {shard}/{shards}' if shards > 1 else ''}), {failures} failed"
        f"{' (rerun to retry them)' if failures else ''}, {result['flagged']} flagged by QC, "
        f"{result['samples'] - result['included']} rejected, "
        f"{'%.2f s per sample' % per_sample if generated else 'nothing generated'}, median Dice "
        f"{'n/a' if result['median_dice'] is None else format(result['median_dice'], '.3f')} -> {out}")
    return result


def _warn_outside_range(mask, volumes: np.ndarray) -> None:
    """One `warning:` line on stderr for the cohort's volumes outside the trained range (each record says so)."""
    from VentricleSynthLib.command_line import print_warning

    warned = sorted({float(v) for v in volumes if mask.check_volume(float(v))})
    if len(warned) == 1:
        print_warning(mask.check_volume(warned[0])[0])
    elif warned:
        lo, hi = mask.trained_range_ml
        print_warning(f"{sum(1 for v in volumes if float(v) in warned)} of the cohort's volumes ({warned[0]:g}-"
                      f"{warned[-1]:g} mL) lie outside the trained range {lo:.1f}-{hi:.1f} mL: the model "
                      f"extrapolates there; their records carry a warning")


def _bar(total: int, initial: int, desc: str, enabled: bool):
    if not enabled or initial >= total:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="sample", file=sys.stderr, mininterval=2,
                dynamic_ncols=True)
