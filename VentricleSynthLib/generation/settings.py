"""Sampling settings of a labelled pair: the bundles' defaults, overridden by what a request names, checked once.

Every caller resolves them here: the CLI, the worker, cohorts, calibration and (torch-free, from config.json
alone) the Slicer panel. A bundle's config.json may carry a "sampling" section (guidance, steps, candidates);
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
FALLBACK = {MASK: {"guidance": 4.0, "steps": 50}, IMAGE: {"steps": 50}}


def bundle_sampling(config: dict, kind: str) -> dict:
    """The sampling defaults of a mask or image bundle's config."""
    return {**FALLBACK[kind], **(config.get("sampling") or {})}


def check_steps(steps, maximum: int = MAX_STEPS) -> None:
    if not isinstance(steps, int) or steps < 1 or steps > maximum:
        raise RequestError(f"steps must be an integer in 1..{maximum}, got {steps!r}")


@dataclass(frozen=True)
class SamplingSettings:
    """How one labelled pair is sampled: guidance and DDIM steps of the mask LDM, K volume-matched candidates,
    DDIM steps of the image LDM."""

    guidance: float
    mask_steps: int
    image_steps: int | None  # None: settings of the mask stage alone
    candidates: int

    @property
    def steps(self) -> dict:
        return {"mask": self.mask_steps, "image": self.image_steps}


def resolve(mask_sampling: dict, image_sampling: dict | None, guidance=None, steps=None,
            candidates=None) -> SamplingSettings:
    """Request ⊕ bundle defaults (`steps` given applies to both stages), checked: guidance finite and >= 0,
    steps integers in 1..MAX_STEPS, candidates an integer in 1..MAX_CANDIDATES. Without `image_sampling`,
    the settings of the mask stage alone."""
    guidance = float(mask_sampling["guidance"] if guidance is None else guidance)
    mask_steps = int(mask_sampling["steps"] if steps is None else steps)
    image_steps = None if image_sampling is None else int(image_sampling["steps"] if steps is None else steps)
    candidates = int(mask_sampling.get("candidates", 1)) if candidates is None else candidates
    if not math.isfinite(guidance) or guidance < 0:
        raise RequestError(f"guidance must be >= 0, got {guidance}")
    check_steps(mask_steps)
    if image_steps is not None:
        check_steps(image_steps)
    if isinstance(candidates, bool) or not isinstance(candidates, int) or not 1 <= candidates <= MAX_CANDIDATES:
        raise RequestError(f"candidates must be an integer in 1..{MAX_CANDIDATES}, got {candidates!r}")
    return SamplingSettings(guidance, mask_steps, image_steps, candidates)


def _config(models_dir, kind: str) -> dict | None:
    try:
        return json.loads((Path(models_dir) / kind / "config.json").read_text())
    except (OSError, ValueError):
        return None


def panel_defaults(models_dir: str | os.PathLike) -> dict:
    """What the Generate panel needs, from the bundles' config.json alone (no torch, no checksums): trained
    volume range, default guidance, steps and candidates, profile. Empty when there is no mask bundle."""
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
        out.update({"guidance": settings.guidance, "steps": settings.mask_steps, "candidates": settings.candidates})
        if image is not None:
            out["image_steps"] = settings.image_steps
    profile = mask.get("profile") or {}
    if profile:
        out.update({"profile": profile.get("name"), "shape": profile.get("shape"), "spacing": profile.get("spacing")})
    return out
