"""Ventricle segmentation with the bundled nnU-Net v2 model: any reasonable T1 in, label map on its own grid out.

Path of one image (`Segmenter.segment`): sanity checks (`input_checks`: CT-like values, label maps, thick
slices, small field of view) -> `imaging.profile.to_profile` (image only: RAS, the bundle's spacing and shape,
[0, 1]) -> nnU-Net's `nnUNetPredictor.predict_single_npy_array` (no test-time mirroring unless asked; a dark-CSF
model also reads the image with mirrored intensities and keeps the clearer reading: `contrast`, T2/PD) ->
probabilities brought back with `imaging.profile.to_input_grid` (linear, inside the ventricles' box) -> the
decision rule (`decision`) -> FreeSurfer label numbers on the input's own grid (`files` writes them).

nnU-Net is used as a library: the network is built by `nnUNetTrainer.build_network_architecture`
from the bundle's plans, the weights are read with `torch.load(weights_only=True)` after the
manifest's checksums pass, and `nnUNetPredictor.manual_initialization` wires them up. One predictor
is built per (bundle, device) and process and reused.

A segmenter bundle (`bundles.store.bundle_path(SEGMENTER)`) holds nnU-Net's results layout plus
`config.json` (profile, label table, nnU-Net model folder), `card.md` and `manifest.json`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
from nibabel.orientations import apply_orientation

from VentricleSynthLib.bundles import format as bundles
from VentricleSynthLib.devices import resolve_device
from VentricleSynthLib.imaging.geometry import Grid, canonical_grid
from VentricleSynthLib.imaging.profile import Profile, to_input_grid, to_profile
from VentricleSynthLib.io.nifti import Volume
from VentricleSynthLib.labels import VENTRICLE_LABELS, label_name
from VentricleSynthLib.progress import ProgressCallback
from VentricleSynthLib.segmentation import contrast, partial_volume
from VentricleSynthLib.segmentation.decision import (
    MIN_THRESHOLD,
    from_segmenter_indices,
    labels_from_outputs,
    union_and_scores,
)
from VentricleSynthLib.segmentation.input_checks import check_input, output_checks
from VentricleSynthLib.volumes import label_volumes_ml, voxel_volume_ml


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
        # another on its validation split (config "decision"; training/segmenter/threshold.choose_threshold)
        self.threshold = float((self.config.get("decision") or {}).get("union_threshold", 0.5))
        if not MIN_THRESHOLD < self.threshold < 1.0:
            raise bundles.BundleError(f"model bundle {self.folder}: decision.union_threshold must lie in "
                                      f"({MIN_THRESHOLD:g}, 1)")
        # which voxels count: "network" keeps the network's boundary (a model trained on labels drawn by another
        # rule, e.g. the template cohort's generous atlas labels, is measured against them); "half" re-decides the
        # rim by the half-voxel convention (segmentation/partial_volume.py). Soft volumes are reported either way.
        self.boundary = (self.config.get("decision") or {}).get("boundary", "network")
        if self.boundary not in partial_volume.BOUNDARIES:
            raise bundles.BundleError(f"model bundle {self.folder}: decision.boundary must be one of "
                                      f"{', '.join(partial_volume.BOUNDARIES)}")
        # trained with the random appearance (training/segmenter/appearance.py): any MRI contrast, else T1 only
        self.t1_only = not (self.config.get("training") or {}).get("appearance")
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
        with contextlib.redirect_stdout(io.StringIO()):  # off CUDA it prints a note that we honour already
            predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=self.tta,
                                        perform_everything_on_device=self.device.type == "cuda",
                                        device=self.device, verbose=False, verbose_preprocessing=False,
                                        allow_tqdm=False)
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

    # --- any input ---------------------------------------------------------------------------------
    def read(self, image: np.ndarray, warnings: list[str] | None = None) -> np.ndarray:
        """Network outputs for a profile-grid image, as `segment` reads it. A dark-CSF model (trained on T1 alone)
        also reads the image with mirrored intensities, unless the reading as given is already sure, and keeps the
        reading whose ventricles show the clearer dark edge (`contrast`: T2/PD-like images; the ventricles judged at
        contrast.READING_THRESHOLD, so the choice does not depend on the decision threshold); `warnings` gets a
        note when the mirrored view is used or even the chosen edge is unclear."""
        warnings = [] if warnings is None else warnings
        probabilities = self.predict_probabilities(image)
        if not self.t1_only:
            return probabilities
        edge = contrast.dark_csf_edge(image, self._found(probabilities))
        if edge >= contrast.SURE_EDGE:
            return probabilities
        view = contrast.mirrored(image, self.profile.percentiles)
        view_probabilities = self.predict_probabilities(view)
        view_edge = contrast.dark_csf_edge(view, self._found(view_probabilities))
        if view_edge > edge:
            probabilities, edge = view_probabilities, view_edge
            warnings.append(contrast.MIRRORED_NOTE)
        if np.isfinite(edge) and edge < contrast.CLEAR_EDGE:
            warnings.append(contrast.UNCLEAR_NOTE)
        return probabilities

    def _found(self, probabilities: np.ndarray) -> np.ndarray:
        return labels_from_outputs(probabilities, self.union_head, self.label_table, contrast.READING_THRESHOLD) > 0

    def segment(self, volume: Volume, allow_thick_slices: bool = False,
                progress: ProgressCallback | None = None) -> tuple[Volume, dict]:
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
        probabilities = self.read(pre.image, warnings)
        label_profile = labels_from_outputs(probabilities, self.union_head, self.label_table, self.threshold)
        report(2)
        label = self.to_input(probabilities, pre.grid, pre.source)
        # the boundary (the bundle's: the network's, or the half-voxel convention) and the soft volumes
        label, pv, soft, soft_per_label = partial_volume.apply(volume.array, label, volume.affine,
                                                               VENTRICLE_LABELS, half=self.boundary == "half")
        report(3)
        per_label = label_volumes_ml(label, volume.affine)
        total = float(np.count_nonzero(label)) * voxel_volume_ml(volume.affine)
        warnings += output_checks(label_profile, total)
        if not pv.usable and total > 0:
            warnings.append(f"no partial-volume estimate ({pv.note}): the network's boundary is kept")
        result = {
            "ventricle_ml": round(total, 3),
            "per_label_ml": {label_name(k): round(v, 3) for k, v in per_label.items()},
            "ventricle_soft_ml": None if soft is None else round(soft, 3),
            "per_label_soft_ml": None if soft_per_label is None
            else {label_name(k): round(v, 3) for k, v in soft_per_label.items()},
            "boundary": partial_volume.BOUNDARIES[self.boundary],
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
        """Probabilities on the profile grid -> labels on the input grid (linear, only where ventricles may be).

        The labels are computed on the input grid's RAS-canonical storage (axes permuted and flipped, no
        interpolation) and brought back: nearest-neighbour ties between the model grid and the input grid then
        fall the same way however the input is stored (RAS, LPS, ...), so left/right volumes do not depend on
        storage order; an input stored RAS is computed exactly as before.
        """
        canonical, back = canonical_grid(source)
        labels = self._to_canonical_input(probabilities, grid, canonical, threshold)
        return labels if back is None else np.ascontiguousarray(apply_orientation(labels, back))

    def _to_canonical_input(self, probabilities: np.ndarray, grid: Grid, source: Grid,
                            threshold: float | None = None) -> np.ndarray:
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

