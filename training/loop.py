"""The training loop every network stage shares: checkpoints, exact resume, EMA, metrics, DDP.

A checkpoint (written atomically every `checkpoint_every` steps) holds the step, every module and
optimiser, the EMA weights and all RNG states, so `--resume` continues exactly and a SIGKILL loses
at most `checkpoint_every` steps. Under `torchrun` each rank draws its own batches (seeded by rank),
gradients are averaged by DDP, and only rank 0 writes.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from VentricleSynthLib.errors import VentricleSynthError
from VentricleSynthLib.io.figures import png_figure
from VentricleSynthLib.io.atomic import atomic_write, write_text

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


class TrainingError(VentricleSynthError):
    """A training run cannot start or continue as asked (e.g. a checkpoint exists without --resume)."""


def init_distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def seed_all(seed: int) -> None:
    """Seed torch, numpy's legacy RNG and random before networks are built (identical initial weights)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def wrap_ddp(module: torch.nn.Module) -> torch.nn.Module:
    if not dist.is_initialized():
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [torch.cuda.current_device()] if torch.cuda.is_available() else None
    return DistributedDataParallel(module, device_ids=device_ids)


def training_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@dataclass
class Run:
    """One stage's training state. `step_fn(step, rng)` does one optimisation step, returns losses."""

    folder: Path
    modules: dict[str, torch.nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    step_fn: Callable[[int, np.random.Generator], dict]
    total_steps: int
    checkpoint_every: int
    seed: int
    ema: dict[str, torch.optim.swa_utils.AveragedModel] = field(default_factory=dict)
    log_every: int = 10
    scalers: dict = field(default_factory=dict)

    def __post_init__(self):
        self.folder = Path(self.folder)
        self.step = 0
        self.elapsed = 0.0  # training seconds over all sessions of this run (kept across resumes)
        rank = dist.get_rank() if dist.is_initialized() else 0
        self.rng = np.random.default_rng([self.seed, rank])
        torch.manual_seed(self.seed * 1000 + rank)
        random.seed(self.seed * 1000 + rank)

    # --- checkpoints -------------------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "step": self.step,
            "elapsed": self.elapsed,
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "ema": {k: e.state_dict() for k, e in self.ema.items()},
            "scalers": {k: s.state_dict() for k, s in self.scalers.items()},
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": self.rng.bit_generator.state,
            "python_rng": random.getstate(),
        }

    def save_checkpoint(self) -> None:
        if is_main():
            state = self._state()
            atomic_write(self.folder / CHECKPOINT, lambda tmp: torch.save(state, tmp))
        barrier()

    def load_checkpoint(self) -> None:
        state = torch.load(self.folder / CHECKPOINT, map_location="cpu", weights_only=False)
        self.step = int(state["step"])
        self.elapsed = float(state.get("elapsed", 0.0))
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for k, e in self.ema.items():
            e.load_state_dict(state["ema"][k])
        for k, s in self.scalers.items():
            s.load_state_dict(state["scalers"][k])
        torch.set_rng_state(state["torch_rng"])
        if dist.is_initialized():  # each rank keeps its own stream: offset by rank
            torch.manual_seed(int(torch.randint(0, 2**31, (1,))) + dist.get_rank())
        self.rng.bit_generator.state = state["numpy_rng"]
        random.setstate(state["python_rng"])

    # --- metrics -----------------------------------------------------------------------------
    def _trim_metrics(self) -> None:
        """Drop metric lines logged after the checkpoint we resume from (they will be redone)."""
        path = self.folder / METRICS
        if not path.is_file():
            return
        keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= self.step]
        text = "".join(line + "\n" for line in keep)
        write_text(path, text)

    def _log(self, record: dict) -> None:
        if is_main():
            with open(self.folder / METRICS, "a") as fh:
                fh.write(json.dumps(record) + "\n")

    # --- the loop ----------------------------------------------------------------------------
    def run(self, resume: bool = False, progress: bool = True) -> dict:
        self.folder.mkdir(parents=True, exist_ok=True)
        has_checkpoint = (self.folder / CHECKPOINT).is_file()
        if has_checkpoint and not resume:
            raise TrainingError(f"{self.folder} already holds a checkpoint: pass --resume to continue it, "
                                f"or use another --work folder")
        if has_checkpoint:
            self.load_checkpoint()
            if is_main():
                self._trim_metrics()
        elif is_main():
            (self.folder / METRICS).unlink(missing_ok=True)
        barrier()
        bar = None
        if progress and is_main():
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, desc=self.folder.name, mininterval=5,
                       dynamic_ncols=True)
        start = time.time()
        elapsed_before = self.elapsed
        totals: dict[str, float] = {}
        count = 0
        while self.step < self.total_steps:
            losses = self.step_fn(self.step, self.rng)
            for e_name, e in self.ema.items():
                e.update_parameters(self.modules[e_name])
            self.step += 1
            self.elapsed = elapsed_before + time.time() - start
            for k, v in losses.items():
                totals[k] = totals.get(k, 0.0) + float(v)
            count += 1
            if self.step % self.log_every == 0 or self.step == self.total_steps:
                self._log({"step": self.step, "seconds": round(self.elapsed, 2),
                           **{k: v / count for k, v in totals.items()}})
                if bar:
                    bar.set_postfix({k: f"{v / count:.4g}" for k, v in totals.items()})
                totals, count = {}, 0
            if bar:
                bar.update(1)
            if self.step % self.checkpoint_every == 0 or self.step == self.total_steps:
                self.save_checkpoint()
                if is_main():
                    plot_metrics(self.folder)
        if bar:
            bar.close()
        return {"steps": self.step, "seconds": round(self.elapsed, 1)}


def read_metrics(folder: Path) -> list[dict]:
    path = Path(folder) / METRICS
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []


def plot_metrics(folder: Path) -> None:
    """loss_curves.png: every logged loss against the step."""
    records = read_metrics(folder)
    if not records:
        return
    keys = [k for k in records[-1] if k not in ("step", "seconds")]
    steps = [r["step"] for r in records]
    with png_figure(Path(folder) / "loss_curves.png", dpi=70, ncols=len(keys), figsize=(3.5 * len(keys), 3),
                    squeeze=False) as (fig, axes):
        for ax, key in zip(axes[0], keys):
            ax.plot(steps, [r.get(key, np.nan) for r in records])
            ax.set_title(key, fontsize=9)
            ax.set_xlabel("step")
            if all(r.get(key, 1) > 0 for r in records):
                ax.set_yscale("log")
