"""Sampling settings of a labelled pair: the bundles' defaults, overridden by what a request names, checked once.

Every caller resolves them here: the CLI, the worker, cohorts, calibration and (torch-free, from config.json
alone) the Slicer panel. A bundle's config.json may carry a "sampling" section (guidance, steps, candidates,
refine);
what it leaves out falls back to the values below.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from VentricleSynthLib.bundles.store import IMAGE, MASK
from VentricleSynthLib.errors import RequestError

MAX_STEPS = 1000
MAX_CANDIDATES = 16
# A seed whose candidates all lack a main class or have fragmented ventricles draws up to this many more, one at a
# time (bundled model, defaults, 10 volumes x 6 seeds: 8 of 60 samples redrawn, none more than twice)
MAX_REDRAWS = 3
MAX_GUIDANCE = 20.0  # the panel's slider range too; beyond it the mask LDM leaves its trained distribution
VOLUME_FLOOR_FRACTION = 0.5  # below this fraction of the trained minimum a volume is refused
VOLUME_MARGIN_FRACTION = 0.25  # above the trained maximum by up to this fraction of the span: a warning
# refine: exact-volume refinement of the label map (generation/refinement.py); False gives the paper's method
FALLBACK = {MASK: {"guidance": 4.0, "steps": 50, "refine": True}, IMAGE: {"steps": 50}}


def bundle_sampling(config: dict, kind: str) -> dict:
    """The sampling defaults of a mask or image bundle's config."""
    return {**FALLBACK[kind], **(config.get("sampling") or {})}


def check_steps(steps, maximum: int = MAX_STEPS) -> None:
    if not isinstance(steps, int) or steps < 1 or steps > maximum:
        raise RequestError(f"steps must be an integer in 1..{maximum}, got {steps!r}")


@dataclass(frozen=True)
class SamplingSettings:
    """How one labelled pair is sampled: guidance and DDIM steps of the mask LDM, K volume-matched candidates,
    exact-volume refinement of the label map or not, DDIM steps of the image LDM."""

    guidance: float
    mask_steps: int
    image_steps: int | None  # None: settings of the mask stage alone
    candidates: int
    refine: bool = FALLBACK[MASK]["refine"]

    @property
    def steps(self) -> dict:
        return {"mask": self.mask_steps, "image": self.image_steps}


def resolve(mask_sampling: dict, image_sampling: dict | None, guidance=None, steps=None,
            candidates=None, image_steps=None, refine=None) -> SamplingSettings:
    """Request ⊕ bundle defaults (`steps` given applies to both stages, `image_steps` to the image stage, over
    `steps`), checked: guidance in 0..MAX_GUIDANCE, steps integers in 1..MAX_STEPS, candidates an integer in
    1..MAX_CANDIDATES, refine a bool. Without `image_sampling`, the settings of the mask stage alone."""
    guidance = float(mask_sampling["guidance"] if guidance is None else guidance)
    mask_steps = int(mask_sampling["steps"] if steps is None else steps)
    if image_sampling is not None:
        image_steps = int(next(s for s in (image_steps, steps, image_sampling["steps"]) if s is not None))
    candidates = int(mask_sampling.get("candidates", 1)) if candidates is None else candidates
    refine = mask_sampling.get("refine", FALLBACK[MASK]["refine"]) if refine is None else refine
    if not math.isfinite(guidance) or not 0 <= guidance <= MAX_GUIDANCE:
        raise RequestError(f"guidance must be a number in 0..{MAX_GUIDANCE:g}, got {guidance:g}")
    check_steps(mask_steps)
    if image_steps is not None:
        check_steps(image_steps)
    if isinstance(candidates, bool) or not isinstance(candidates, int) or not 1 <= candidates <= MAX_CANDIDATES:
        raise RequestError(f"candidates must be an integer in 1..{MAX_CANDIDATES}, got {candidates!r}")
    if not isinstance(refine, bool):
        raise RequestError(f"refine must be true or false, got {refine!r}")
    return SamplingSettings(guidance, mask_steps, image_steps, candidates, refine)


def volume_limits(trained_range: tuple[float, float]) -> tuple[float, float]:
    """(lowest, highest) volume a mask bundle trained on `trained_range` (mL) may be asked: half the trained
    minimum, and the trained maximum plus a quarter of the span."""
    v_min, v_max = (float(v) for v in trained_range)
    return VOLUME_FLOOR_FRACTION * v_min, v_max + VOLUME_MARGIN_FRACTION * (v_max - v_min)


def check_volume(volume_ml, trained_range: tuple[float, float]) -> list[str]:
    """The one volume rule of single samples and cohorts: a volume inside the trained range V_MIN..V_MAX is
    fine ([]); between half of V_MIN and V_MIN, or between V_MAX and V_MAX + 25 % of the span, it is generated
    with a warning (returned, for the record and stderr); anything else (not a positive number, below half
    of V_MIN, beyond the margin) is a RequestError."""
    v_min, v_max = (float(v) for v in trained_range)
    try:
        volume = float(volume_ml)
    except (TypeError, ValueError):
        volume = math.nan
    if isinstance(volume_ml, bool) or not math.isfinite(volume) or volume <= 0:
        raise RequestError(f"ventricle volume must be a positive number of mL, got {volume_ml!r}")
    low, high = volume_limits((v_min, v_max))
    if not low <= volume <= high:
        raise RequestError(f"ventricle volume {volume:g} mL is far outside the trained range {v_min:.1f}-"
                           f"{v_max:.1f} mL (this model accepts {low:.1f}-{high:.1f} mL, with a warning outside "
                           f"the trained range)")
    if v_min <= volume <= v_max:
        return []
    side = "below" if volume < v_min else "above"
    return [f"ventricle volume {volume:g} mL is {side} the trained range {v_min:.1f}-{v_max:.1f} mL: the model "
            f"extrapolates, the volume obtained may differ more from the one asked"]


def _config(models_dir, kind: str) -> dict | None:
    try:
        return json.loads((Path(models_dir) / kind / "config.json").read_text())
    except (OSError, ValueError):
        return None


def panel_defaults(models_dir: str | os.PathLike) -> dict:
    """What the Generate panel needs, from the bundles' config.json alone (no torch, no checksums): trained
    volume range, default guidance, steps, candidates and refine, profile. Empty when there is no mask bundle."""
    mask = _config(models_dir, MASK)
    if mask is None:
        return {}
    out: dict = {"models_dir": str(models_dir)}
    norm = mask.get("volume_normalisation") or {}
    if "min_ml" in norm and "max_ml" in norm:
        out["trained_range_ml"] = (float(norm["min_ml"]), float(norm["max_ml"]))
    image = _config(models_dir, IMAGE)
    try:
        settings = resolve(bundle_sampling(mask, MASK), bundle_sampling(image or {}, IMAGE))
    except (RequestError, TypeError, ValueError, KeyError):  # a broken config: the worker will say what is wrong
        settings = None
    if settings is not None:
        out.update({"guidance": settings.guidance, "steps": settings.mask_steps, "candidates": settings.candidates,
                    "refine": settings.refine})
        if image is not None:
            out["image_steps"] = settings.image_steps
    profile = mask.get("profile") or {}
    if profile:
        out.update({"profile": profile.get("name"), "shape": profile.get("shape"), "spacing": profile.get("spacing")})
    return out
