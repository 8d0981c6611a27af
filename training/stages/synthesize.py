"""Stage `synthesize`: a synthetic cohort from the profile's generator bundles -> WORK/synthetic/.

The `synthesize:` section of the config sets count, distribution, seed, guidance, candidates, steps, batch size,
format and the QC filter; train.py options override it. The work is VentricleSynthLib.cohorts.synthesize
(the same as `python -m VentricleSynthLib generate --distribution …`), so the CLI and this stage write
identical cohorts. Generators: `--models DIR`, else WORK/bundles, else the bundled models, whichever
matches the profile. QC segmenter: the first of MODELS/segmenter, WORK/bundles/segmenter and the default
models folder's that exists (cohort_synthesis.find_segmenter; none: the label-fidelity Dice is not
measured). The result is an nnU-Net raw dataset that `train.py segmenter --synthetic WORK/synthetic` takes
as is.
"""

from __future__ import annotations

import math
from pathlib import Path

from VentricleSynthLib.cohorts.layout import FORMATS
from VentricleSynthLib.cohorts.synthesize import CohortRequest, find_segmenter, synthesize
from VentricleSynthLib.errors import ConfigError, RequestError

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


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# key -> (accepts the value, what it must be); None is the default for the optional ones
_TYPES = {
    "count": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "distribution": (lambda v: isinstance(v, str) or _number(v), "a distribution spec such as uniform:20-140"),
    "seed": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "guidance": (lambda v: v is None or (_number(v) and v >= 0), "a number >= 0 (or null: the bundle's)"),
    "candidates": (lambda v: v is None or (_int(v) and v >= 1), "an integer >= 1 (or null: the bundle's)"),
    "steps": (lambda v: v is None or (_int(v) and v >= 1), "an integer >= 1 (or null: each bundle's)"),
    "batch_size": (lambda v: v is None or (_int(v) and v >= 1), "an integer >= 1 (or null: 8 on CUDA, else 1)"),
    "format": (lambda v: v in FORMATS, f"one of {', '.join(FORMATS)}"),
    "qc_min_dice": (lambda v: v is None or (_number(v) and 0 <= v <= 1), "a number in 0..1 (or null: no filter)"),
    "device": (lambda v: isinstance(v, str) and v.strip() != "", "a device name: auto, cpu, cuda, cuda:N or mps"),
}


def synth_config(config: dict, overrides: dict | None = None) -> dict:
    """The config's synthesize: section over DEFAULTS, then train.py's options; each value type-checked."""
    where = config.get("path", "config")
    section = config.get("synthesize") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: synthesize must be a mapping")
    unknown = sorted(set(section) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"{where}: unknown synthesize keys: {', '.join(unknown)}")
    out = {**DEFAULTS, **section}
    out.update({k: v for k, v in (overrides or {}).items() if v is not None})
    for key, (ok, what) in _TYPES.items():
        if not ok(out[key]):
            raise ConfigError(f"{where}: synthesize.{key} must be {what}, got {out[key]!r}")
    return out


def run(config: dict, work: Path, models: Path | None = None, out: Path | None = None, shard: str | None = None,
        overrides: dict | None = None, log=print) -> dict:
    from training.stages.experiment import find_generators

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
        segmenter=find_segmenter(models, work / "bundles")[0]), log=log)
