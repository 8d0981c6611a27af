"""Import user data (image + label map pairs) into an nnU-Net v2 raw dataset on a profile's grid.

Two kinds of source:

* an **nnU-Net v2 raw dataset** (a folder with `dataset.json`, `imagesTr/CASE_0000.nii.gz`,
  `labelsTr/CASE.nii.gz`); its label values are read back as FreeSurfer numbers through
  dataset.json's `freesurfer_labels` table (or its label names), unless a `mapping` is given, which
  then applies to the label files' raw values;
* a **plain folder** described by two path patterns relative to it, each with exactly one `{case}`
  placeholder, e.g. `"{case}/mri/T1.nii.gz"` + `"{case}/mri/aseg.nii.gz"` or
  `"images/{case}_0000.nii.gz"` + `"labels/{case}.nii.gz"` (`*`, `?`, `[...]` and a whole-component
  `**` are allowed elsewhere). Labels are FreeSurfer/SynthSeg numbers unless a `mapping`
  (e.g. `labels.CEREBRA` or `LabelMapping.from_csv`) says otherwise.

Every pair is validated (readable, finite 3-D image that the segmenter would not refuse as CT or as a label map;
label map in the schema; same voxel grid). A
failing case is skipped and its reason recorded, never fatal; only "no valid case at all" raises
`DatasetError`. Valid cases are resampled with `imaging.profile.to_profile` and written with
`nnunet_raw.write_case`, plus `dataset.json`, `cases.csv` (volumes measured on the original
resolution) and `import_report.{json,md}`. The inputs are only ever read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from VentricleSynthLib.errors import ConfigError, DatasetError, VentricleSynthError
from VentricleSynthLib.imaging.profile import Profile, to_profile
from VentricleSynthLib.io import nnunet_raw
from VentricleSynthLib.io.atomic import (refuse_overwriting_inputs, remove_stale_temporaries, write_csv, write_json,
                                         write_text)
from VentricleSynthLib.io.nifti import Volume, check_same_grid, load_image, load_label_map
from VentricleSynthLib.labels import LabelMapping, mapping_from_spec
from VentricleSynthLib.segmentation.input_checks import MIN_FOV_MM, check_input
from VentricleSynthLib.volumes import tiv_ml, ventricle_volume_ml, voxel_volume_ml

from training.data.case_patterns import CASE, discover_pairs
from training.data.import_report import ImportReport
from training.outputs import missing_dirs, output_folder, remove_if_empty

CSV_COLUMNS = ["case", "target_ml", "ventricle_ml", "tiv_ml", "split"]
REPORT_JSON = "import_report.json"
REPORT_MD = "import_report.md"
# Written (atomically) before the first case and removed once dataset.json and the report are written: a folder
# holding it is an import of ours that was interrupted, which a rerun completes.
MARKER = "import_in_progress.json"
NNUNET_IMAGE_PATTERN = "imagesTr/{case}_0000"
NNUNET_LABEL_PATTERN = "labelsTr/{case}"
# A warning is recorded when resampling onto the profile grid loses more than this fraction of the
# labelled (intracranial) volume, i.e. when the brain does not fit the profile's field of view.
CROP_WARN_FRACTION = 0.02

ProgressFn = Callable[[int, int, str], None]


def sanitise_case_id(case: str) -> str:
    """Characters outside [A-Za-z0-9_-] -> '_' (an empty result becomes 'case')."""
    clean = re.sub(r"[^A-Za-z0-9_-]", "_", case)
    return clean or "case"


def _output_ids(cases: list[str]) -> dict[str, str]:
    """source id -> unique sanitised id (collisions get _2, _3, ... in sorted order)."""
    taken: set[str] = set()
    out: dict[str, str] = {}
    for case in sorted(cases):
        base = sanitise_case_id(case)
        new, k = base, 2
        while new in taken:
            new, k = f"{base}_{k}", k + 1
        taken.add(new)
        out[case] = new
    return out


def _is_within(path: Path, parent: Path) -> bool:
    try:
        path.relative_to(parent)
        return True
    except ValueError:
        return False


def _check_locations(source: Path, out_dir: Path) -> None:
    src, out = source.resolve(), out_dir.resolve()
    if out == src or _is_within(out, src):
        raise DatasetError(f"output folder {out_dir} is inside the source {source}; choose a folder outside it")
    if _is_within(src, out):
        first = src.relative_to(out).parts[0]
        if first in ("imagesTr", "labelsTr"):
            raise DatasetError(f"source {source} lies in the output's {first}/ folder and would be overwritten")


def _previous_import(out_dir: Path) -> list[str] | None:
    """Case ids that an earlier (finished or interrupted) import wrote into `out_dir`, None if there was none;
    refuses a dataset already there that no import of ours wrote."""
    ids, found = set(), False
    for name, key in ((REPORT_JSON, "imported"), (MARKER, "cases")):
        if (out_dir / name).is_file():
            found = True
            try:
                ids.update(str(c) for c in json.loads((out_dir / name).read_text()).get(key, []))
            except (ValueError, AttributeError, OSError, TypeError):
                pass
    if found:
        return sorted(ids)
    if any((out_dir / name).exists() for name in ("imagesTr", "labelsTr", "dataset.json")):
        raise DatasetError(f"{out_dir} already holds a dataset that was not written by a data import; "
                           "choose an empty output folder")
    return None


def _assign_splits(cases: list[str], seed: int, val_fraction: float) -> dict[str, str]:
    order = sorted(cases)
    n = len(order)
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, n - 1) if n >= 1 else 0
    perm = np.random.default_rng(seed).permutation(n)
    val = {order[i] for i in perm[:n_val]}
    return {c: ("val" if c in val else "train") for c in order}


def _refuse_what_segment_refuses(image: Volume) -> None:
    """The segmenter's content checks (CT-like intensities, a label map given as an image) refuse the case;
    its geometry checks (thick slices, a small field of view) do not: the pair is resampled onto the profile
    grid and a head that does not fit is warned about below. So the checks see the image on a neutral grid."""
    spacing = max(1.0, MIN_FOV_MM / min(image.shape))
    check_input(Volume(image.array, np.diag([spacing, spacing, spacing, 1.0])), allow_thick_slices=True)


def _prepare_case(profile: Profile, image_path: Path, label_path: Path, mapping):
    """Validate one pair and resample it. Returns (preprocessed, ventricle_ml, tiv_ml, warning)."""
    image = load_image(image_path)
    _refuse_what_segment_refuses(image)
    label = load_label_map(label_path, mapping=mapping)
    check_same_grid(image, label, what="image and label map")
    vent = ventricle_volume_ml(label.array, label.affine)
    tiv = tiv_ml(label.array, label.affine)
    pre = to_profile(profile, image=image, label=label)
    warning = None
    got_tiv = float(np.count_nonzero(pre.label)) * voxel_volume_ml(pre.grid.affine)
    if tiv > 0 and got_tiv < (1 - CROP_WARN_FRACTION) * tiv:
        fov = " x ".join(f"{s * n:g}" for s, n in zip(profile.spacing, profile.shape))
        warning = (f"the labelled head ({tiv:.0f} mL) does not fit the {profile.name} profile's field of view "
                   f"({fov} mm): {100 * (1 - got_tiv / tiv):.1f}% of it is cropped")
    return pre, vent, tiv, warning


def import_dataset(source: Path, out_dir: Path, profile: Profile, image_pattern: str | None = None,
                   label_pattern: str | None = None, mapping: LabelMapping | str | None = None,
                   split_seed: int = 0, val_fraction: float = 0.2,
                   progress: ProgressFn | None = None, shown: str | None = None) -> ImportReport:
    """Validate, resample and write user data as an nnU-Net v2 raw dataset in `out_dir`.

    `source` is an nnU-Net raw dataset (has dataset.json; the patterns then default to
    imagesTr/{case}_0000 + labelsTr/{case} with its file ending) or a plain folder (both patterns
    required). `mapping` (a LabelMapping, or 'cerebra' / 'freesurfer' / a CSV path) converts label
    values to schema labels; None means FreeSurfer numbers (plain folder) or dataset.json's table.
    Failing cases are skipped and recorded; `DatasetError` only if nothing valid remains, if
    `out_dir` is inside `source`, or if `out_dir` holds a dataset not written by an import.
    `progress(i, n, case)` is called after each case with i = 1..n. Returns the report, which is
    also written to out_dir/import_report.{json,md}. `out_dir` is proved writable (`shown` names it in the
    error) before the first case is read; an interrupted import (MARKER present) is completed by a rerun.
    """
    source, out_dir = Path(source), Path(out_dir)
    if not source.is_dir():
        raise DatasetError(f"{source}: no such folder")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    _check_locations(source, out_dir)
    if isinstance(mapping, (str, Path)) and Path(mapping).is_file():  # a mapping CSV is an input too
        for name in ("cases.csv", "dataset.json", REPORT_JSON, REPORT_MD, MARKER):
            refuse_overwriting_inputs(out_dir / name, mapping, option=shown or "output folder")
    mapping = mapping_from_spec(mapping)

    kind = "folder"
    if (source / "dataset.json").is_file():
        kind = "nnunet"
        dataset = nnunet_raw.read_dataset_json(source)
        ending = str(dataset.get("file_ending", nnunet_raw.FILE_ENDING))
        if not (source / "imagesTr").is_dir() and image_pattern is None:
            raise DatasetError(f"{source}: missing folder imagesTr/")
        image_pattern = image_pattern or NNUNET_IMAGE_PATTERN + ending
        label_pattern = label_pattern or NNUNET_LABEL_PATTERN + ending
        if mapping is None:
            mapping = LabelMapping("dataset.json", nnunet_raw.index_to_freesurfer(dataset))
    elif image_pattern is None or label_pattern is None:
        raise ConfigError(f"{source} is not an nnU-Net raw dataset (no dataset.json); give both an image "
                          f"and a label pattern with a {CASE} placeholder, e.g. '{CASE}/T1.nii.gz'")

    pairs, report = discover_pairs(source, image_pattern, label_pattern)
    report.kind, report.out_dir, report.profile = kind, str(out_dir), profile.name
    if not pairs:
        raise DatasetError(f"{source}: no image/label pairs match '{image_pattern}' + '{label_pattern}' "
                           f"({report.summary()})")
    previous = _previous_import(out_dir)
    new_dirs = missing_dirs(out_dir)
    output_folder(out_dir, shown or str(out_dir))

    ids = _output_ids(list(pairs))
    report.renamed = {a: b for a, b in ids.items() if a != b}
    volumes: dict[str, tuple[float, float]] = {}
    marked = False
    n = len(pairs)
    for i, (case, (img_path, lab_path)) in enumerate(pairs.items(), start=1):
        try:
            pre, vent, tiv, warning = _prepare_case(profile, img_path, lab_path, mapping)
        except VentricleSynthError as exc:
            report.skipped[case] = str(exc)
        except Exception as exc:  # a malformed file must not end a long import; record what happened
            report.skipped[case] = f"unexpected error reading the pair: {exc.__class__.__name__}: {exc}"
        else:
            out_id = ids[case]
            if not marked:  # every case this run may write, and those of an interrupted run before it
                planned = sorted({*ids.values(), *(previous or [])})
                write_json(out_dir / MARKER, {"source": str(source), "cases": planned})
                marked = True
            nnunet_raw.write_case(out_dir, out_id, Volume(pre.image, pre.grid.affine),
                                  Volume(pre.label, pre.grid.affine))
            volumes[out_id] = (vent, tiv)
            if warning:
                report.warnings[out_id] = warning
        if progress is not None:
            progress(i, n, case)

    if not volumes:
        remove_if_empty(new_dirs)
        reasons = "; ".join(f"{c}: {r}" for c, r in list(sorted(report.skipped.items()))[:5])
        more = " ..." if len(report.skipped) > 5 else ""
        exc = DatasetError(f"{source}: no valid case to import ({report.summary()}): {reasons}{more}")
        exc.report = report  # type: ignore[attr-defined]
        raise exc

    report.imported = sorted(volumes)
    splits = _assign_splits(report.imported, split_seed, val_fraction)
    report.cases = [{"case": c, "target_ml": "", "ventricle_ml": round(volumes[c][0], 3),
                     "tiv_ml": round(volumes[c][1], 3), "split": splits[c]} for c in report.imported]

    # Remove cases that an earlier import wrote here and this one did not, so the folder holds
    # exactly the cases of dataset.json.
    for stale in set(previous or []) - set(report.imported):
        if sanitise_case_id(stale) == stale:
            for path in (nnunet_raw.image_path(out_dir, stale), nnunet_raw.label_path(out_dir, stale)):
                path.unlink(missing_ok=True)
                remove_stale_temporaries(path)  # of a killed run's write of it

    write_csv(out_dir / "cases.csv", report.cases, CSV_COLUMNS)
    write_json(out_dir / "dataset.json", nnunet_raw.schema_dataset_json(
        len(report.imported), extra={"source": str(source), "profile": profile.name}))
    write_json(out_dir / REPORT_JSON, report.to_dict())
    markdown = report.to_markdown()
    write_text(out_dir / REPORT_MD, markdown)
    (out_dir / MARKER).unlink(missing_ok=True)
    return report
