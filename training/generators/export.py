"""Generator bundles: what an LDM stage exports to WORK/bundles/{mask,image}_generator/, and which bundles
fit a profile (for the synthesize and experiment stages)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from VentricleSynthLib.bundles import format as bundles
from VentricleSynthLib.bundles.store import IMAGE, MASK, bundle_path, models_dir
from VentricleSynthLib.imaging.profile import Profile
from VentricleSynthLib.labels import LABELS, SCHEMA

from training.cards import generator_card, write_card
from training.data.training_arrays import TrainingArrays
from training.loop import read_metrics
from training.provenance import git_commit
from training.stage_configs import GeneratorsConfig

BUNDLE_VERSION = "0.1.0"
TITLES = {
    MASK: "Mask generator: volume-conditioned label-map latent diffusion model (classifier-free guidance)",
    IMAGE: "Image generator: SPADE latent diffusion model, label map -> T1-like MRI",
}


def stage_steps(folder: Path) -> dict:
    """Steps and training seconds (summed over resumes) of a finished stage, from its metrics."""
    records = read_metrics(folder)
    return {"steps": records[-1]["step"], "seconds": records[-1]["seconds"]} if records else {}


def bundle_config(name: str, profile: Profile, config_file: str, generators: GeneratorsConfig, arch: dict,
                  scale_factor: float, shift: list[float], latent_shape, arrays: TrainingArrays,
                  stage_seconds: dict, extra: dict) -> dict:
    """config.json of a generator bundle: networks, latent scaling, grid, labels and provenance."""
    return {
        "name": name,
        "version": BUNDLE_VERSION,
        "architecture": arch,
        "scheduler": generators.scheduler,
        "scale_factor": scale_factor,
        "latent_shift": shift,
        "latent_shape": list(latent_shape),
        "profile": {"name": profile.name, "spacing": list(profile.spacing), "shape": list(profile.shape)},
        "affine": np.asarray(arrays.affine).tolist(),
        "labels": {"freesurfer": list(LABELS), "names": [SCHEMA[v][0] for v in LABELS]},
        "provenance": {
            "data": {"datasets": generators.datasets, "cases": len(arrays), "config": Path(config_file).name},
            "steps": stage_seconds,
            "git_commit": git_commit(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        **extra,
    }


def export_bundle(work: Path, bundle: dict, modules: dict) -> Path:
    """A verified bundle WORK/bundles/<name>/ from its config.json (`bundle`) and networks, with its card (the
    calibrate stage adds the measured sections)."""
    out = bundles.save_bundle(work / "bundles" / bundle["name"], bundle, modules)
    write_card(out, generator_card(bundles.read_config(out), TITLES[bundle["name"]]))
    return out


def find_generators(profile: Profile, work: Path, models: Path | None) -> tuple[Path | None, str]:
    """(folder holding mask_generator + image_generator for this profile, or None; why not).

    Looked for in `models`, else in WORK/bundles and then the default models folder."""
    candidates = [Path(models)] if models else [work / "bundles", models_dir(None)]
    reasons = []
    for root in candidates:
        try:
            mask = bundle_path(MASK, root)
            bundle_path(IMAGE, root)
        except bundles.BundleError:
            reasons.append(f"{root}: no {MASK}/{IMAGE} bundles")
            continue
        try:
            prof = bundles.read_config(mask).get("profile", {})
        except bundles.BundleError as exc:
            reasons.append(str(exc))
            continue
        if prof.get("name") != profile.name or list(prof.get("shape", [])) != list(profile.shape):
            reasons.append(f"{root}: generators are for profile {prof.get('name')!r} {prof.get('shape')}, "
                           f"not {profile.name!r} {list(profile.shape)}")
            continue
        return root, ""
    return None, "; ".join(reasons)
