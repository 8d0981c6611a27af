"""Stage `synthesize`: a synthetic cohort from the profile's generator bundles -> WORK/synthetic/.

The `synthesize:` section of the config sets count, distribution, seed, guidance, candidates, steps, batch size,
format and the QC filter; train.py options override it. The work is VentricleSynthLib.cohort_synthesis
(the same as `python -m VentricleSynthLib generate --distribution …`), so the CLI and this stage write
identical cohorts. Generators: `--models DIR`, else WORK/bundles, else the bundled models, whichever
matches the profile. QC segmenter: the first of MODELS/segmenter, WORK/bundles/segmenter and the bundled
one that exists (none: the label-fidelity Dice is not measured). The result is an nnU-Net raw dataset
that `train.py segmenter --synthetic WORK/synthetic` takes as is.
"""

from __future__ import annotations

from pathlib import Path

from VentricleSynthLib.cohort_synthesis import CohortRequest, synthesize
from VentricleSynthLib.errors import ConfigError, RequestError
from VentricleSynthLib.model_store import SEGMENTER, models_dir

DEFAULTS = {
    "count": 12,
    "distribution": "uniform",  # the mask bundle's trained range
    "seed": 6000,
    "guidance": None,  # the bundle's
    "candidates": None,  # the bundle's
    "steps": None,  # each bundle's
    "batch_size": None,  # 8 on CUDA, else 1
    "format": "nnunet",
    "qc_min_dice": None,
    "device": "auto",
}


def synth_config(config: dict, overrides: dict | None = None) -> dict:
    section = config.get("synthesize") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{config.get('path', 'config')}: synthesize must be a mapping")
    unknown = sorted(set(section) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"{config.get('path', 'config')}: unknown synthesize keys: {', '.join(unknown)}")
    out = {**DEFAULTS, **section}
    out.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return out


def find_segmenter(work: Path, models: Path | None) -> Path | None:
    candidates = ([Path(models) / SEGMENTER] if models else []) + [Path(work) / "bundles" / SEGMENTER,
                                                                   models_dir(None) / SEGMENTER]
    return next((c for c in candidates if c.is_dir()), None)


def run(config: dict, work: Path, models: Path | None = None, out: Path | None = None, shard: str | None = None,
        overrides: dict | None = None, log=print) -> dict:
    from .experiment import find_generators

    s = synth_config(config, overrides)
    work = Path(work)
    generators, why = find_generators(config, work, models)
    if generators is None:
        raise RequestError(f"no generator bundles for profile {config['profile_obj'].name!r} ({why}); train them "
                           f"(train.py mask-ae, mask-ldm, image-ae, image-ldm) or pass --models DIR")
    return synthesize(CohortRequest(
        out=Path(out) if out else work / "synthetic", distribution=str(s["distribution"]), count=s["count"],
        seed=s["seed"], guidance=s["guidance"], candidates=s["candidates"], steps=s["steps"], format=s["format"],
        shard=shard,
        batch_size=s["batch_size"], qc_min_dice=s["qc_min_dice"], device=s["device"], models=generators,
        segmenter=find_segmenter(work, models)), log=log)
