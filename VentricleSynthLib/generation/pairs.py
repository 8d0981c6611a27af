"""Labelled pairs: a label map from the mask LDM with the asked ventricle volume, refined to exactly that volume
(unless `settings.refine` is off: the paper's method), then its image from the SPADE LDM, synthesised from the
refined map, with a record of what was asked, obtained and how.

Several pairs are sampled in one batched DDIM loop per stage (a GPU is idle with one sample). Sample j's
latents come from its own generator seeded with seeds[j], exactly as a single sample draws them; batched
kernels may reassociate floating-point sums, so a batch's samples equal single samples only up to rounding,
and a cohort is reproducible for a fixed batch size (cohorts put fixed blocks of indices in each batch).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from VentricleSynthLib.generation.generators import ImageGenerator, MaskGenerator
from VentricleSynthLib.generation.refinement import RECORD_FIELDS, refine, unrefined
from VentricleSynthLib.generation.settings import SamplingSettings, resolve
from VentricleSynthLib.progress import ProgressCallback
from VentricleSynthLib.volumes import tiv_ml, ventricle_volume_ml


@dataclass
class Pair:
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    record: dict


def settings_for(mask: MaskGenerator, image: ImageGenerator, guidance: float | None = None,
                 steps: int | None = None, candidates: int | None = None,
                 image_steps: int | None = None, refine: bool | None = None) -> SamplingSettings:
    """Both bundles' sampling defaults ⊕ the request, checked."""
    return resolve(mask.sampling, image.sampling, guidance=guidance, steps=steps, candidates=candidates,
                   image_steps=image_steps, refine=refine)


def _refined(label: np.ndarray, affine: np.ndarray, asked_ml: float, on: bool) -> tuple[np.ndarray, dict]:
    """The label map refined to `asked_ml` (on) or as sampled (off), and the record's refinement fields."""
    out, record = refine(label, affine, asked_ml) if on else (label, unrefined(label, affine))
    return out, {"refine": on, **{key: record[key] for key in RECORD_FIELDS}, "warnings": record["warnings"]}


def generate_pairs(mask: MaskGenerator, image: ImageGenerator, volumes: list[float], seeds: list[int],
                   settings: SamplingSettings, progress: ProgressCallback | None = None) -> list[Pair]:
    """A labelled pair for each (volume, seed), in one batch (seconds shared out among them); a record's
    `warnings` lists what `settings.check_volume` said of its volume (outside the trained range) and what the
    refinement said (displacement bound reached, a plausibility check failed)."""
    if len(volumes) != len(seeds) or not volumes:
        raise ValueError("generate_pairs needs one seed per volume, and at least one volume")
    start = time.perf_counter()
    volumes = [float(v) for v in volumes]
    warnings = [mask.check_volume(v) for v in volumes]
    masks = mask.sample_many(volumes, seeds, settings, progress)
    refined = [_refined(label, mask.affine, v, settings.refine) for (label, _), v in zip(masks, volumes)]
    masks = [(label, {**sampled, **how}) for (label, how), (_, sampled) in zip(refined, masks)]
    images = image.sample_many([label for label, _ in masks], seeds, settings.image_steps, progress)
    seconds = (time.perf_counter() - start) / len(volumes)
    return [Pair(img, label, mask.affine, {**pair_record(mask, image, v, label, sampled, settings.image_steps, s,
                                                         seconds), "warnings": w + sampled["warnings"]})
            for img, (label, sampled), v, s, w in zip(images, masks, volumes, seeds, warnings)]


def generate_pair(mask: MaskGenerator, image: ImageGenerator, volume_ml: float, guidance: float | None = None,
                  steps: int | None = None, seed: int = 0, progress: ProgressCallback | None = None,
                  candidates: int | None = None, refine: bool | None = None) -> Pair:
    """A labelled pair with `volume_ml` of ventricles asked; settings not given are the bundles' defaults."""
    mask.check_volume(volume_ml)
    settings = settings_for(mask, image, guidance, steps, candidates, refine=refine)
    return generate_pairs(mask, image, [volume_ml], [seed], settings, progress)[0]


def pair_record(mask: MaskGenerator, image: ImageGenerator, volume_ml: float, label: np.ndarray, sampled: dict,
                image_steps: int, seed: int, seconds: float) -> dict:
    """A generated pair's record: what was asked, what was obtained, how (`sampled`: the mask sampling's)."""
    affine = mask.affine
    return {
        "asked_ml": float(volume_ml),
        "got_ml": round(ventricle_volume_ml(label, affine), 3),
        "tiv_ml": round(tiv_ml(label, affine), 2),
        "seed": int(seed),
        "steps": {"mask": sampled["steps"], "image": image_steps},
        "guidance": sampled["guidance"],
        "candidates": sampled["candidates"],
        "candidates_ml": sampled["candidates_ml"],
        "redrawn": sampled["redrawn"],
        "condition_ml": sampled["condition_ml"],
        "refine": sampled["refine"],
        **{key: sampled[key] for key in RECORD_FIELDS},
        "seconds": round(seconds, 3),
        "device": str(mask.device),
        "models": {"mask": mask.id, "image": image.id},
    }
