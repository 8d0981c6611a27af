"""Quality control of a generated pair: obtained vs asked volume, label fidelity, connected components.

Label fidelity: the segmenter bundle segments the generated image and its ventricles are compared with
the generated label map's (Dice of the six-label union). A pair whose image does not show the ventricles
its label map claims teaches a segmenter the wrong thing, whatever the volumes say. The image goes through
`Segmenter.segment`, the path a user's image takes (intensity normalisation, centring, resampling), so the
Dice measures what a user gets. Without a segmenter bundle the Dice is not measured (None) and the record
says why.

The measurements are stored with each sample; the flags are derived from them and the thresholds below
(or `--qc-min-dice`) whenever the cohort is assembled.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from VentricleSynthLib.io.nifti import Volume
from VentricleSynthLib.labels import VENTRICLE_LABELS
from VentricleSynthLib.metrics import dice
from VentricleSynthLib.volumes import too_many_pieces, ventricle_pieces, ventricle_volume_ml

VOLUME_TOLERANCE_ML = 5.0  # flag `volume_off` when |got - asked| exceeds both this ...
VOLUME_TOLERANCE_REL = 0.2  # ... and this fraction of the asked volume
DEFAULT_MIN_DICE = 0.7  # flag `low_dice` below this unless --qc-min-dice sets the threshold


class FidelityCheck:
    """The segmenter bundle for label fidelity, or nothing (then every Dice is None, with `note`)."""

    def __init__(self, folder: Path | None, device: str | None = "auto", note: str = ""):
        self.segmenter = None
        self.note = note
        if folder is not None:
            from VentricleSynthLib.segmentation.predictor import get_segmenter

            self.segmenter = get_segmenter(device=device, folder=folder)
            self.note = ""

    @property
    def model(self) -> dict | None:
        return self.segmenter.id if self.segmenter is not None else None

    def segment(self, image: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray | None, str]:
        """Ventricle labels of the generated image on its own grid (None, why) when not measurable."""
        if self.segmenter is None:
            return None, self.note
        from VentricleSynthLib.segmentation.input_checks import UnsuitableImageError

        try:
            label, _ = self.segmenter.segment(Volume(image, affine), allow_thick_slices=True)
        except UnsuitableImageError as exc:
            return None, f"segmenter refused the image: {exc}"
        return label.array, ""


def measure(image: np.ndarray, label: np.ndarray, affine: np.ndarray, asked_ml: float, got_ml: float,
            check: FidelityCheck) -> dict:
    n, largest = ventricle_pieces(label)
    predicted, note = check.segment(image, affine)
    if predicted is None:
        qc_dice, seg_ml = math.nan, math.nan
    else:
        qc_dice = dice(np.isin(predicted, VENTRICLE_LABELS), np.isin(label, VENTRICLE_LABELS))
        seg_ml = ventricle_volume_ml(predicted, affine)
    return {"qc_dice": _round(qc_dice, 4), "qc_seg_ml": _round(seg_ml, 3),
            "volume_error_ml": round(float(got_ml) - float(asked_ml), 3), "components": n,
            "largest_component_fraction": round(largest, 4), "qc_note": note}


def _round(v: float, digits: int):
    return None if not math.isfinite(v) else round(float(v), digits)


def flags(record: dict, min_dice: float | None = None) -> list[str]:
    """The QC flags of a sample record (empty: nothing suspicious)."""
    out = []
    asked, error = float(record["asked_ml"]), float(record["volume_error_ml"])
    if abs(error) > VOLUME_TOLERANCE_ML and abs(error) > VOLUME_TOLERANCE_REL * asked:
        out.append("volume_off")
    if record["components"] == 0:
        out.append("no_ventricles")
    elif too_many_pieces(record["components"]):
        out.append("fragmented")
    d = record.get("qc_dice")  # None: not measured (no segmenter bundle); the report says so, no flag
    if d is not None and d < (DEFAULT_MIN_DICE if min_dice is None else min_dice):
        out.append("low_dice")
    return out


def passes_filter(record: dict, min_dice: float | None) -> bool:
    """Whether `--qc-min-dice` keeps the sample in the dataset (no threshold, or Dice not measured: kept)."""
    d = record.get("qc_dice")
    return min_dice is None or d is None or d >= min_dice
