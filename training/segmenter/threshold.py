"""The segmenter's decision threshold (fixed in the config, or chosen on the validation split) and the
metrics its card reports, both measured on the exported bundle the way `segment` uses it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from VentricleSynthLib.imaging.profile import to_profile
from VentricleSynthLib.volumes import ventricle_volume_ml

from training.evaluation.report import summarize
from training.evaluation.scoring import compare
from training.segmenter.raw_export import Case
from training.stage_configs import SegmenterConfig

THRESHOLDS = (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)


def fixed_decision(settings: SegmenterConfig) -> dict | None:
    """The bundle's `decision` for a threshold set in the config; None for 0.5 (the default) and for "val"
    without validation cases to choose on (the experiment's arms)."""
    t = settings.union_threshold
    return None if t == "val" or float(t) == 0.5 else {"union_threshold": float(t), "chosen_on": "the config"}


def choose_threshold(bundle: Path, cases: list[Case], device: str = "cpu") -> dict:
    """The union probability threshold with the smallest volume MAE on `cases` (the validation split).

    Each case goes the way `segment` takes it (to the profile grid, predicted, back onto its own grid), once;
    only the threshold varies. Ties go to the threshold nearest 0.5."""
    from VentricleSynthLib.segmentation.predictor import Segmenter

    segmenter = Segmenter(bundle, device=device)
    errors: dict[float, list[float]] = {t: [] for t in THRESHOLDS}
    for case in cases:
        image, label = case.load()
        pre = to_profile(segmenter.profile, image=image)
        probabilities = segmenter.read(pre.image)  # as `segment` reads it (a mirrored view where that reads better)
        truth_ml = ventricle_volume_ml(label.array, image.affine)
        for t in THRESHOLDS:
            found = segmenter.to_input(probabilities, pre.grid, pre.source, t)
            errors[t].append(ventricle_volume_ml(found, image.affine) - truth_ml)
    mae = {t: float(np.mean(np.abs(e))) for t, e in errors.items()}
    best = min(THRESHOLDS, key=lambda t: (round(mae[t], 3), abs(t - 0.5)))
    return {"union_threshold": best, "chosen_on": f"validation split ({len(cases)} cases), smallest volume MAE",
            "volume_mae_ml": {f"{t:g}": round(mae[t], 3) for t in THRESHOLDS},
            "volume_bias_ml": {f"{t:g}": round(float(np.mean(errors[t])), 3) for t in THRESHOLDS}}


def measure(bundle: Path, sets: dict[str, list[Case]], device: str = "cpu") -> dict:
    """Dice/volume metrics of the exported bundle on profile-grid cases (predicted on their own grid)."""
    from VentricleSynthLib.segmentation.predictor import Segmenter

    segmenter = Segmenter(bundle, device=device)
    out = {}
    for name, cases in sets.items():
        rows = []
        for case in cases:
            image, label = case.load()
            pred, _ = segmenter.segment(image)
            rows.append(compare(pred, label, case.origin))
        if rows:
            s = summarize(rows)
            out[name] = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in s.items()}
    return out
