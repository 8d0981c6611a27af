"""What a synthetic cohort is asked for (`CohortRequest`), and how it is split among processes (shards).

Block b of `batch_size` indices belongs to shard b mod N (`owned`; `--shard i/N`, or RANK/WORLD_SIZE under
torchrun), so a sample's values depend on the settings only, never on the shard.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from VentricleSynthLib.cohorts.distributions import Distribution
from VentricleSynthLib.errors import RequestError


@dataclass
class CohortRequest:
    out: Path
    distribution: str | Distribution
    count: int | None = None  # default: a list's length
    seed: int = 0
    guidance: float | None = None  # default: the mask bundle's
    candidates: int | None = None  # label maps denoised per sample, the closest kept (default: the mask bundle's)
    steps: int | None = None  # default: each bundle's
    image_steps: int | None = None  # image stage, over `steps` (default: the image bundle's)
    refine: bool | None = None  # exact-volume refinement of each label map (default: the mask bundle's, on)
    format: str = "samples"  # the CLI's default too; train.py synthesize's config says nnunet
    shard: str | None = None  # "i/N"; default RANK/WORLD_SIZE (torchrun) or the whole cohort
    batch_size: int | None = None  # default 8 on CUDA, else 1
    qc_min_dice: float | None = None  # keep samples below this label-fidelity Dice out of the dataset (pinned)
    device: str = "auto"
    models: Path | None = None  # folder holding mask_generator/ and image_generator/ (bundles.store's search)
    segmenter: Path | None = None  # segmenter bundle for label fidelity (default: find_segmenter(models))
    report: bool = True
    progress: bool = True


def check_min_dice(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        raise RequestError(f"--qc-min-dice must be a number in 0..1, got {value!r}")
    return float(value)


def _env_int(name: str) -> int | None:
    """An integer environment variable (torchrun's), None when unset or empty."""
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise RequestError(f"environment variable {name} must be an integer, got {text!r}") from None


def parse_shard(text: str | None) -> tuple[int, int]:
    """(shard index, shard count) from `--shard i/N`, else torchrun's RANK/WORLD_SIZE, else (0, 1)."""
    world = _env_int("WORLD_SIZE")
    world = 1 if world is None else world
    if world < 1:
        raise RequestError(f"environment variable WORLD_SIZE must be >= 1, got {world}")
    if text is None:
        if world == 1:
            return 0, 1
        rank = _env_int("RANK")
        if rank is None:
            raise RequestError(f"WORLD_SIZE={world} is set but RANK is not; launch with torchrun, or use --shard i/N")
        if not 0 <= rank < world:
            raise RequestError(f"environment variable RANK must be in 0..{world - 1}, got {rank}")
        return rank, world
    if world > 1:
        raise RequestError("--shard and torchrun both split the cohort; use one of them")
    i, slash, n = str(text).partition("/")
    try:
        i, n = int(i), int(n)
    except ValueError:
        raise RequestError(f"--shard must be i/N with 0 <= i < N, got {text!r}") from None
    if not slash or n < 1 or not 0 <= i < n:
        raise RequestError(f"--shard must be i/N with 0 <= i < N, got {text!r}")
    return i, n


def owned(count: int, batch: int, shard: int, shards: int) -> list[int]:
    """The indices shard `shard` of `shards` generates: block b (indices b*batch .. b*batch+batch-1) is shard
    b mod shards's, so each block is sampled whole by one process."""
    return [i for i in range(count) if (i // batch) % shards == shard]


def shard_device(name: str) -> str:
    """Under torchrun each process takes the GPU of its LOCAL_RANK."""
    import torch

    local = _env_int("LOCAL_RANK")
    if local is not None and (name or "auto").lower() in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{local}"
    return name
