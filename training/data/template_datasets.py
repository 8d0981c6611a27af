"""The template cohort's datasets (stage `data`): natural, the enlarged hold-out and uniform, built from the
committed template.

Writes `WORK/data/<distribution>/` as nnU-Net raw datasets with `cases.csv` and a montage PNG.
Cases are written atomically with a per-case record, so a killed run resumes where it stopped (and the
rewrite of its interrupted case removes that write's hidden partial file).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from VentricleSynthLib.io.montage import write_montage
from VentricleSynthLib.io.atomic import write_csv, write_json, write_text
from VentricleSynthLib.io.nifti import Volume
from VentricleSynthLib.io.nnunet_raw import image_path, label_path, load_case, schema_dataset_json, write_case
from VentricleSynthLib.imaging.profile import Profile

from training.config import Config
from training.data.template_cohort import TemplateCohort, TemplateCohortSettings, sample_targets
from training.data.templates import COMMITTED_DIR, load_template
from training.stage_configs import TEMPLATE_DATASETS, DataConfig

CASE_FIELDS = ["case", "target_ml", "ventricle_ml", "tiv_ml", "split", "skull", "strength_mm", "seed"]
DISTRIBUTION_IDS = {name: i for i, name in enumerate(TEMPLATE_DATASETS)}  # natural 0, enlarged 1, uniform 2

_COHORT: TemplateCohort | None = None


def _init_worker(profile: Profile, settings_kwargs: dict) -> None:
    global _COHORT
    template = load_template(min(profile.spacing))
    _COHORT = TemplateCohort(template, TemplateCohortSettings(profile.spacing, profile.shape, **settings_kwargs))


def _record_path(root: Path, case: str) -> Path:
    return root / "records" / f"{case}.json"


def _make_case(root: Path, case: str, target_ml: float, seed: tuple[int, ...], split: str) -> dict:
    record_file = _record_path(root, case)
    if record_file.is_file() and image_path(root, case).is_file() and label_path(root, case).is_file():
        return json.loads(record_file.read_text())
    result = _COHORT.make_case(target_ml, np.random.default_rng(seed))
    write_case(root, case, Volume(result["image"], result["affine"]), Volume(result["label"], result["affine"]))
    record = {
        "case": case, "target_ml": round(result["target_ml"], 3), "ventricle_ml": round(result["ventricle_ml"], 3),
        "tiv_ml": round(result["tiv_ml"], 2), "split": split, "skull": result["skull"],
        "strength_mm": result["strength_mm"], "seed": "-".join(str(s) for s in seed),
    }
    text = json.dumps(record)
    write_text(record_file, text)
    return record


def build_distribution(profile: Profile, data: DataConfig, distribution: str, out_root: Path,
                       progress=print) -> list[dict]:
    """Generate (or finish) one distribution's dataset; returns its case records."""
    spec = data.datasets[distribution]
    count = int(spec.count)
    seed = int(data.seed)
    dist_id = DISTRIBUTION_IDS[distribution]
    rng = np.random.default_rng([seed, dist_id])
    targets = sample_targets(distribution, count, rng, spec.low_ml, spec.high_ml)
    if distribution == "natural":
        n_val = int(round(count * float(spec.val_fraction)))
        splits = ["val" if i in set(rng.permutation(count)[:n_val].tolist()) else "train" for i in range(count)]
    elif distribution == "enlarged":
        splits = ["holdout"] * count
    else:
        splits = ["train"] * count
    root = out_root / distribution
    jobs = [(root, f"{distribution}_{i:04d}", float(targets[i]), (seed, dist_id, i), splits[i]) for i in range(count)]
    settings = {"skull_fraction": float(data.skull_fraction)}
    workers = max(1, int(data.workers))
    start = time.time()
    records = []
    with ProcessPoolExecutor(workers, initargs=(profile, settings), initializer=_init_worker) as pool:
        for i, record in enumerate(pool.map(_make_case, *zip(*jobs)) if jobs else [], start=1):
            records.append(record)
            progress(f"PROGRESS stage=data-{distribution} step={i}/{count} case={record['case']} "
                     f"target_ml={record['target_ml']} got_ml={record['ventricle_ml']}")
    write_json(root / "dataset.json", schema_dataset_json(count, extra={
        "name": f"VentricleSynth template cohort ({distribution})", "profile": profile.name,
        "licence": "derived from ICBM 2009c + CerebrA (McGill notice in COPYING)",
    }))
    write_csv(root / "cases.csv", records, CASE_FIELDS)
    _copy_notice(root)
    _montage(root, records, distribution)
    progress(f"data: {distribution}: {count} cases in {time.time() - start:.1f} s -> {root}")
    return records


def _copy_notice(root: Path) -> None:
    text = (COMMITTED_DIR / "COPYING").read_text()
    write_text(root / "COPYING", text)


def _montage(root: Path, records: list[dict], distribution: str, columns: int = 8) -> None:
    if not records:
        return
    ordered = sorted(records, key=lambda r: r["ventricle_ml"])
    picks = [ordered[i] for i in np.unique(np.linspace(0, len(ordered) - 1, min(columns, len(ordered))).astype(int))]
    dataset = json.loads((root / "dataset.json").read_text())
    cases = []
    for rec in picks:
        image, label = load_case(root, rec["case"], dataset)
        cases.append({"image": image.array, "label": label.array,
                      "caption": f"{rec['case']}\n{rec['ventricle_ml']:.1f} mL"})
    write_montage(cases, root / "montage.png", title=f"template cohort: {distribution}")


def build_template_datasets(config: Config, work: Path, distributions=None, progress=print) -> dict:
    """Build every distribution the config's `data` section asks for (or just `distributions`)."""
    data = DataConfig.from_config(config)
    out_root = work / "data"
    if not distributions:
        distributions = [d for d in DISTRIBUTION_IDS if int(data.datasets[d].count) > 0]
    return {d: build_distribution(config.profile, data, d, out_root, progress) for d in distributions}


