"""Ventricle segmentation with the bundled nnU-Net v2 model: any reasonable T1 in, label map on its own grid out.

Path of one image: sanity checks (CT-like values, label maps, thick slices, small field of view) ->
`preprocess.to_profile` (image only: RAS, the bundle's spacing and shape, [0, 1]) -> nnU-Net's
`nnUNetPredictor.predict_single_npy_array` (no test-time mirroring unless asked) -> class
probabilities brought back with `preprocess.to_input_grid` (linear, inside the ventricles' box)
-> argmax -> FreeSurfer label numbers -> written atomically on the input's own grid.

nnU-Net is used as a library: the network is built by `nnUNetTrainer.build_network_architecture`
from the bundle's plans, the weights are read with `torch.load(weights_only=True)` after the
manifest's checksums pass, and `nnUNetPredictor.manual_initialization` wires them up. One predictor
is built per (bundle, device) and process and reused.

A segmenter bundle (`model_store.bundle_path("segmenter")`) holds nnU-Net's results layout plus
`config.json` (profile, label table, nnU-Net model folder), `card.md` and `manifest.json`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from VentricleSynthLib.bundles import format as bundles
from VentricleSynthLib.devices import resolve_device
from VentricleSynthLib.errors import InvalidImageError, OutputError
from VentricleSynthLib.imaging.geometry import Grid
from VentricleSynthLib.labels import VENTRICLE_LABELS, label_name
from VentricleSynthLib.io.nifti import Volume, is_nifti_path, load_image, save_volume
from VentricleSynthLib.imaging.profile import Profile, to_input_grid, to_profile
from VentricleSynthLib.volumes import label_volumes_ml, voxel_volume_ml

Progress = Callable[[str, int, int], None]

# nnU-Net needs consecutive labels: index i of the network <-> FreeSurfer label SEGMENTER_LABELS[i].
SEGMENTER_LABELS: tuple[int, ...] = (0, *VENTRICLE_LABELS)  # 0, 4, 43, 5, 44, 14, 15
# Region-trained bundles (`targets: union+labels`) declare the ventricular system as this nnU-Net region first
# (a training target; at inference the label regions decide, see `union_and_scores`).
UNION_REGION = "Ventricular-System"
# Voxels whose union probability is at most this are never resampled onto the input grid (`Segmenter.to_input`),
# so a decision threshold must lie above it.
MIN_THRESHOLD = 0.02

THICK_SLICE_MM = 5.0  # at or above: refused unless allow_thick_slices (then a warning)
WARN_SLICE_MM = 3.0  # at or above: a warning
MIN_FOV_MM = 80.0  # every axis must cover at least this much (a whole brain is ~140-170 mm)
MAX_PLAUSIBLE_ML = 400.0


class UnsuitableImageError(InvalidImageError):
    """A readable image that the segmenter cannot measure reliably (CT, a label map, thick slices, a slab)."""


def to_segmenter_indices(label_map: np.ndarray) -> np.ndarray:
    """FreeSurfer numbers -> 0..6 (the six ventricle labels; every other label becomes background 0)."""
    lut = np.zeros(max(max(SEGMENTER_LABELS), int(np.max(label_map, initial=0))) + 1, dtype=np.uint8)
    for i, lab in enumerate(SEGMENTER_LABELS):
        lut[lab] = i
    arr = np.asarray(label_map, dtype=np.int64)
    if arr.size and arr.min() < 0:
        raise InvalidImageError("label map has negative values")
    return lut[arr]


def from_segmenter_indices(indices: np.ndarray, table: dict[int, int] | None = None) -> np.ndarray:
    """Network indices -> FreeSurfer numbers (int16), by `table` (index -> label) or SEGMENTER_LABELS."""
    table = table or dict(enumerate(SEGMENTER_LABELS))
    lut = np.zeros(max(table) + 1, dtype=np.int16)
    for i, lab in table.items():
        lut[int(i)] = int(lab)
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= lut.size):
        raise ValueError(f"class index out of range 0..{lut.size - 1}")
    return lut[idx]


def union_and_scores(outputs: np.ndarray, union_head: bool) -> tuple[np.ndarray, np.ndarray]:
    """The ventricles' union probability and the six label scores from the network's outputs (C, ...).

    Softmax models (background + six labels): the union is the sum of the six label probabilities.
    Region models (union region + six label regions, sigmoid): the union is the most likely label region;
    the union head is a training target only. Measured on the cpu bundle's validation split (23 natural
    cases): union head > 0.5 gave Dice 0.806 and volume MAE 4.5 mL (under-segmentation and stray distant
    voxels), the most likely label region 0.863 and 1.2 mL. Either way a voxel is ventricle where the union
    exceeds the decision threshold (0.5 unless the bundle's config sets `decision.union_threshold`) and is
    named by the highest label score.
    """
    outputs = np.asarray(outputs)
    return (outputs[1:].max(axis=0) if union_head else outputs[1:].sum(axis=0)), outputs[1:]


def labels_from_outputs(outputs: np.ndarray, union_head: bool, table: dict[int, int] | None = None,
                        threshold: float = 0.5) -> np.ndarray:
    """FreeSurfer ventricle labels from the network's outputs on their own grid (see `union_and_scores`)."""
    union, scores = union_and_scores(outputs, union_head)
    return from_segmenter_indices(np.where(union > threshold, scores.argmax(axis=0) + 1, 0), table)


# --- input sanity --------------------------------------------------------------------------------

def check_input(volume: Volume, allow_thick_slices: bool = False) -> list[str]:
    """Refuse images the segmenter cannot measure; return warnings for doubtful ones."""
    warnings: list[str] = []
    arr = volume.array
    sample = arr[:: max(1, arr.shape[0] // 96), :: max(1, arr.shape[1] // 96), :: max(1, arr.shape[2] // 96)]
    low = float(np.percentile(sample, 1))
    if float(arr.min()) <= -500 and (low <= -500 or float(np.mean(sample <= -500)) >= 0.02):
        raise UnsuitableImageError(
            f"intensities look like CT Hounsfield units (minimum {float(arr.min()):.0f}, 1st percentile {low:.0f}); "
            f"the segmenter needs a T1-weighted MRI")
    if sample.dtype.kind in "iu" or np.all(sample == np.round(sample)):
        values = np.unique(sample)
        if values.size <= 40:
            raise UnsuitableImageError(
                f"image holds only {values.size} distinct integer values ({', '.join(str(int(v)) for v in values[:8])}"
                f"{' ...' if values.size > 8 else ''}): it looks like a label map or mask, not a T1-weighted MRI")
    spacing = volume.spacing
    thickest = float(spacing.max())
    if thickest >= THICK_SLICE_MM:
        message = (f"voxels are {thickest:.1f} mm thick along axis {int(spacing.argmax())} "
                   f"(spacing {' x '.join(f'{s:.2f}' for s in spacing)} mm); ventricle volumes need slices "
                   f"thinner than {THICK_SLICE_MM:g} mm")
        if not allow_thick_slices:
            raise UnsuitableImageError(message + " (allow_thick_slices / --allow-thick-slices to segment anyway)")
        warnings.append(message + ": segmented anyway on request; the volume is unreliable")
    elif thickest >= WARN_SLICE_MM:
        warnings.append(f"voxels are {thickest:.1f} mm thick along axis {int(spacing.argmax())}: "
                        f"partial-volume effects make the ventricle volume less accurate")
    extent = np.asarray(volume.shape) * spacing
    if extent.min() < MIN_FOV_MM:
        raise UnsuitableImageError(
            f"the image covers only {extent.min():.0f} mm along axis {int(extent.argmin())} "
            f"(field of view {' x '.join(f'{e:.0f}' for e in extent)} mm); a whole-brain image is needed")
    return warnings


def _output_checks(image: np.ndarray, label_profile: np.ndarray, fg_mask: np.ndarray, total_ml: float) -> list[str]:
    warnings = []
    vent = label_profile > 0
    if not vent.any():
        warnings.append("no ventricles found: is this a T1-weighted brain MRI?")
        return warnings
    brain = fg_mask & ~vent
    if brain.any() and float(image[vent].mean()) > float(np.median(image[brain])):
        warnings.append("the segmented ventricles are brighter than the surrounding tissue: the image does not look "
                        "T1-weighted (T2/FLAIR/CT?); the volume is unreliable")
    border = np.zeros_like(vent)
    border[[0, -1], :, :] = border[:, [0, -1], :] = border[:, :, [0, -1]] = True
    if (vent & border).any():
        warnings.append("ventricle voxels touch the edge of the analysed field of view; part of the ventricles "
                        "may be cut off")
    if total_ml > MAX_PLAUSIBLE_ML:
        warnings.append(f"ventricle volume {total_ml:.0f} mL is implausibly large; check the input")
    return warnings


# --- the model ---------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet():
    """nnU-Net prints to stdout; keep stdout for our one JSON line."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


class Segmenter:
    """The bundled nnU-Net ventricle model, loaded once; `segment(volume)` for any T1 volume."""

    def __init__(self, folder: str | os.PathLike | None = None, device: str | None = "auto", tta: bool = False,
                 models: str | os.PathLike | None = None):
        from VentricleSynthLib.bundles.store import SEGMENTER, bundle_path

        self.folder = Path(folder) if folder is not None else bundle_path(SEGMENTER, models)
        bundles.verify(self.folder)
        self.config = bundles.read_config(self.folder)
        self.id = bundles.model_id(self.folder)
        try:
            self.profile = Profile.from_dict(self.config["profile"]["name"], self.config["profile"])
            self.label_table = {int(k): int(v) for k, v in self.config["labels"].items()}
            nn = self.config["nnunet"]
            self.model_folder = self.folder / nn["model_folder"]
            self.folds = list(nn["folds"])
            checkpoint_name = nn.get("checkpoint", "checkpoint_final.pth")
        except (KeyError, TypeError, ValueError) as exc:
            raise bundles.BundleError(
                f"model bundle {self.folder}: config.json is not a segmenter config ({exc})") from None
        self.device = resolve_device(device)
        self.tta = bool(tta)
        # the union probability above which a voxel is ventricle: 0.5 unless the bundle's training stage chose
        # another on its validation split (config "decision"; training/segmenter_stage.choose_threshold)
        self.threshold = float((self.config.get("decision") or {}).get("union_threshold", 0.5))
        if not MIN_THRESHOLD < self.threshold < 1.0:
            raise bundles.BundleError(f"model bundle {self.folder}: decision.union_threshold must lie in "
                                      f"({MIN_THRESHOLD:g}, 1)")
        self._lock = threading.Lock()
        with _quiet():
            self.predictor = self._build(checkpoint_name)

    def _build(self, checkpoint_name: str):
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        try:
            plans = json.loads((self.model_folder / "plans.json").read_text())
            dataset_json = json.loads((self.model_folder / "dataset.json").read_text())
        except (OSError, ValueError) as exc:
            raise bundles.BundleError(f"model bundle {self.folder}: cannot read nnU-Net plans ({exc})") from None
        parameters, configuration, mirror_axes = [], None, None
        for fold in self.folds:
            path = self.model_folder / f"fold_{fold}" / checkpoint_name
            try:
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is a bundle problem
                raise bundles.BundleError(f"model bundle {self.folder}: cannot read {path.name} ({exc})") from None
            configuration = checkpoint["init_args"]["configuration"]
            mirror_axes = checkpoint.get("inference_allowed_mirroring_axes")
            parameters.append({k: v.float() if v.is_floating_point() else v
                               for k, v in checkpoint["network_weights"].items()})
        plans_manager = PlansManager(plans)
        configuration_manager = plans_manager.get_configuration(configuration)
        num_inputs = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
        label_manager = plans_manager.get_label_manager(dataset_json)
        num_outputs = label_manager.num_segmentation_heads
        self.union_head = label_manager.has_regions
        foreground = list(range(1, len(self.label_table)))
        if self.union_head and label_manager.foreground_regions != [tuple(foreground), *foreground]:
            raise bundles.BundleError(f"model bundle {self.folder}: nnU-Net regions {label_manager.foreground_regions}"
                                      f" are not the ventricular system followed by labels {foreground}")
        if num_outputs != len(self.label_table):
            raise bundles.BundleError(f"model bundle {self.folder}: network has {num_outputs} outputs but the "
                                      f"label table has {len(self.label_table)} entries")
        network = nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_inputs,
                                                           num_outputs, enable_deep_supervision=False)
        try:
            network.load_state_dict(parameters[0])
        except RuntimeError as exc:
            raise bundles.BundleError(f"model bundle {self.folder}: weights do not fit the plans ({exc})") from None
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=self.tta,
                                    perform_everything_on_device=self.device.type == "cuda", device=self.device,
                                    verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        predictor.manual_initialization(network.to(self.device), plans_manager, configuration_manager, parameters,
                                        dataset_json, "nnUNetTrainer", mirror_axes)
        return predictor

    @property
    def can_mirror(self) -> bool:
        """Whether the model allows test-time mirroring (models trained without flips allow none)."""
        return bool(self.predictor.allowed_mirroring_axes)

    # --- prediction on the profile grid ----------------------------------------------------------
    def predict_probabilities(self, image: np.ndarray) -> np.ndarray:
        """Network outputs (C, *profile shape) for a profile-grid image (RAS array, [0, 1]): class
        probabilities, or region probabilities for a union-region model (`union_and_scores`).

        nnU-Net's arrays are in SimpleITK order (z, y, x) with the spacing reversed; our arrays are
        nibabel (x, y, z), so the image is transposed on the way in and the result on the way out.
        """
        image = np.asarray(image, dtype=np.float32)
        if image.shape != tuple(self.profile.shape):
            raise ValueError(f"image shape {image.shape} is not the profile shape {self.profile.shape}")
        data = np.ascontiguousarray(image.transpose(2, 1, 0))[None]
        properties = {"spacing": [float(s) for s in self.profile.spacing[::-1]]}
        with self._lock, _quiet():
            self.predictor.use_mirroring = self.tta
            _, probabilities = self.predictor.predict_single_npy_array(data, properties, None, None, True)
        return np.ascontiguousarray(np.asarray(probabilities, dtype=np.float32).transpose(0, 3, 2, 1))

    def predict_profile(self, image: np.ndarray) -> np.ndarray:
        """FreeSurfer ventricle labels (int16) on the profile grid for a profile-grid image."""
        return labels_from_outputs(self.predict_probabilities(image), self.union_head, self.label_table,
                                   self.threshold)

    # --- any input ---------------------------------------------------------------------------------
    def segment(self, volume: Volume, allow_thick_slices: bool = False,
                progress: Progress | None = None) -> tuple[Volume, dict]:
        """Label map (FreeSurfer ventricle labels) on `volume`'s own grid, and the JSON-ready report."""
        start = time.perf_counter()
        steps = 4

        def report(i):
            if progress:
                progress("segment", i, steps)

        warnings = check_input(volume, allow_thick_slices)
        if self.tta and not self.can_mirror:
            warnings.append("test-time mirroring was asked for, but this model was trained without flips "
                            "(left/right labels): not applied")
        pre = to_profile(self.profile, image=volume)
        report(1)
        probabilities = self.predict_probabilities(pre.image)
        report(2)
        label_profile = labels_from_outputs(probabilities, self.union_head, self.label_table, self.threshold)
        label = self.to_input(probabilities, pre.grid, pre.source)
        report(3)
        per_label = label_volumes_ml(label, volume.affine)
        total = float(np.count_nonzero(label)) * voxel_volume_ml(volume.affine)
        warnings += _output_checks(pre.image, label_profile, pre.image > 0.05, total)
        result = {
            "ventricle_ml": round(total, 3),
            "per_label_ml": {label_name(k): round(v, 3) for k, v in per_label.items()},
            "seconds": round(time.perf_counter() - start, 3),
            "warnings": warnings,
            "device": str(self.device),
            "tta": self.tta and self.can_mirror,
            "model": self.id,
        }
        report(4)
        return Volume(label, volume.affine.copy()), result

    def to_input(self, probabilities: np.ndarray, grid: Grid, source: Grid,
                 threshold: float | None = None) -> np.ndarray:
        """Probabilities on the profile grid -> labels on the input grid (linear, only where ventricles may be)."""
        threshold = self.threshold if threshold is None else float(threshold)
        out = np.zeros(source.shape, dtype=np.int16)
        union, scores = union_and_scores(probabilities, self.union_head)
        candidate = union > MIN_THRESHOLD
        if not candidate.any():
            return out
        idx = np.argwhere(candidate)
        lo = np.maximum(idx.min(axis=0) - 2, 0)
        hi = np.minimum(idx.max(axis=0) + 3, np.asarray(grid.shape))
        box_affine = grid.affine.copy()
        box_affine[:3, 3] = grid.affine[:3, :3] @ lo + grid.affine[:3, 3]
        box = Grid(tuple(int(v) for v in hi - lo), box_affine)
        # the box's corners in input voxel coordinates -> the sub-grid of the input to fill
        corners = np.array([[a, b, c] for a in (lo[0] - 1, hi[0]) for b in (lo[1] - 1, hi[1])
                            for c in (lo[2] - 1, hi[2])], float)
        world = corners @ grid.affine[:3, :3].T + grid.affine[:3, 3]
        ijk = (world - source.affine[:3, 3]) @ np.linalg.inv(source.affine[:3, :3]).T
        s_lo = np.clip(np.floor(ijk.min(axis=0)).astype(int), 0, np.asarray(source.shape))
        s_hi = np.clip(np.ceil(ijk.max(axis=0)).astype(int) + 1, 0, np.asarray(source.shape))
        if np.any(s_hi <= s_lo):
            return out
        sub_affine = source.affine.copy()
        sub_affine[:3, 3] = source.affine[:3, :3] @ s_lo + source.affine[:3, 3]
        sub = Grid(tuple(int(v) for v in s_hi - s_lo), sub_affine)
        box_slices = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
        # two passes instead of one per class: the ventricles' union probability (linear) decides
        # ventricle vs background, the most likely ventricle class (nearest) names each voxel
        inside = to_input_grid(np.ascontiguousarray(union[box_slices]), box, sub, order=1) > threshold  # 0 off-FOV
        which = (scores[(slice(None), *box_slices)].argmax(axis=0) + 1).astype(np.int16)
        names = to_input_grid(which, box, sub, order=0)
        labels = from_segmenter_indices(np.where(inside, names, 0), self.label_table)
        out[s_lo[0]:s_hi[0], s_lo[1]:s_hi[1], s_lo[2]:s_hi[2]] = labels
        return out


_CACHE: dict[tuple, Segmenter] = {}
_CACHE_LOCK = threading.Lock()


def get_segmenter(models=None, device: str | None = "auto", tta: bool = False, folder=None) -> Segmenter:
    """The process-wide Segmenter for this bundle and device (built on first use)."""
    from VentricleSynthLib.bundles.store import SEGMENTER, bundle_path

    folder = Path(folder) if folder is not None else bundle_path(SEGMENTER, models)
    manifest = folder / bundles.MANIFEST
    stamp = manifest.stat().st_mtime_ns if manifest.is_file() else None
    key = (str(folder.resolve()), str(resolve_device(device)), stamp)
    with _CACHE_LOCK:
        seg = _CACHE.get(key)
        if seg is None:
            seg = Segmenter(folder, device=device, tta=tta)
            _CACHE.clear()  # one model in memory at a time
            _CACHE[key] = seg
    seg.tta = bool(tta)
    return seg


def _check_out_path(out_path: str | os.PathLike) -> Path:
    out = Path(out_path)
    if not is_nifti_path(out):
        raise OutputError(f"--out {out}: the segmentation is written as NIfTI; use a .nii.gz or .nii file name")
    if out.is_dir():
        raise OutputError(f"--out {out} is a folder; give a file name such as seg.nii.gz")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=".write-test."):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write to --out {out}: {exc.strerror or exc}") from None
    return out


def segment_file(image_path, out_path, device: str | None = "auto", tta: bool = False, models=None,
                 progress: Progress | None = None, allow_thick_slices: bool = False) -> dict:
    """Segment the ventricles of a T1 file; write the label map on the input's grid; return the JSON report."""
    start = time.perf_counter()
    out = _check_out_path(out_path)
    volume = load_image(image_path)
    check_input(volume, allow_thick_slices)  # refuse bad inputs before loading the model
    segmenter = get_segmenter(models, device, tta)
    label, result = segmenter.segment(volume, allow_thick_slices=allow_thick_slices, progress=progress)
    save_volume(label, out, dtype=np.int16)
    result["seconds"] = round(time.perf_counter() - start, 3)
    return {"image": str(image_path), "out": str(out), **result}


def segment_command(args) -> int:
    """`python -m VentricleSynthLib segment IMAGE --out SEG.nii.gz [--device D] [--tta] [--models DIR]`."""
    def progress(stage, i, n):
        print(f"PROGRESS stage={stage} step={i}/{n}", file=sys.stderr, flush=True)

    result = segment_file(args.image, args.out, device=getattr(args, "device", "auto"),
                          tta=bool(getattr(args, "tta", False)), models=getattr(args, "models", None),
                          progress=progress if getattr(args, "progress", False) else None,
                          allow_thick_slices=bool(getattr(args, "allow_thick_slices", False)))
    print(json.dumps(result), flush=True)
    return 0
