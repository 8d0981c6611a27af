"""Training the segmenter with nnU-Net's trainer: the schedule the config asks for, resume and its extensions.

`nnUNetTrainerNoMirroring` (the labels are lateralised), subclassed when the config's epochs and iterations
differ from nnU-Net's defaults. The class is handed to nnU-Net directly (no trainer lookup by name); resume uses
nnU-Net's own checkpoints and `run_training.maybe_load_checkpoint`. With `num_gpus > 1` (CUDA, default
schedule only) nnU-Net's `run_training` does DDP. nnunetv2 is imported inside the functions.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from VentricleSynthLib.errors import ConfigError
from VentricleSynthLib.imaging.profile import Profile
from VentricleSynthLib.io.atomic import write_text

from training.loop import TrainingError
from training.segmenter.planning import CONFIGURATION, PLANS
from training.stage_configs import SegmenterConfig

EXTENSIONS_FILE = "schedule_extensions.json"  # beside nnU-Net's checkpoints: --resume runs that added epochs
NNUNET_DEFAULT_SCHEDULE = {"epochs": 1000, "iterations_per_epoch": 250, "val_iterations_per_epoch": 50}


def is_default_schedule(schedule: dict) -> bool:
    return (all(int(schedule[k]) == v for k, v in NNUNET_DEFAULT_SCHEDULE.items())
            and not {"initial_lr", "max_seconds"} & set(schedule))


class TimeBoxedPolyLR:
    """nnU-Net's poly decay (exponent 0.9) over a time budget instead of a number of epochs:
    lr = initial_lr * (1 - elapsed / seconds) ** 0.9, the clock starting at the first epoch. Why: a lent GPU comes
    for minutes, at a speed (augmentation workers, GPU) nobody measured before; a time box anneals the learning
    rate fully whatever the speed, where an epoch count guessed too high would stop mid-schedule."""

    EXPONENT = 0.9  # nnU-Net's PolyLRScheduler

    def __init__(self, optimizer, initial_lr: float, seconds: float):
        self.optimizer, self.initial_lr, self.seconds = optimizer, float(initial_lr), float(seconds)
        self.started: float | None = None

    def elapsed(self) -> float:
        return 0.0 if self.started is None else time.monotonic() - self.started

    def step(self, current_step=None) -> None:
        if self.started is None:
            self.started = time.monotonic()
        fraction = min(self.elapsed() / self.seconds, 1.0)
        for group in self.optimizer.param_groups:
            group["lr"] = self.initial_lr * (1.0 - fraction) ** self.EXPONENT


class TimeBoxReached(Exception):
    """Raised at an epoch's end when a time-boxed schedule has no time left for another epoch like the last ones;
    `train` then ends the training as nnU-Net does after its last epoch (checkpoint_final)."""


def trainer_class(schedule: dict, appearance: float | None = None, percentiles: tuple = Profile.percentiles):
    """nnU-Net's trainer for this schedule: `nnUNetTrainerNoMirroring` for the defaults, else a subclass of it;
    with `appearance` (a probability) a further subclass paints random-contrast images first in its training
    pipeline (training/segmenter/appearance.py; `percentiles`: the profile's, for the painted images).

    Mirroring is off because the labels are lateralised: nnU-Net's default flips along every axis turn a
    left lateral ventricle into a right one, so the network learns the two as one blurred class (the first
    cpu segmenter split its union probability between them and under-segmented by 5.7 mL). Inputs always
    reach the network in the profile's RAS orientation, so flips buy no invariance worth that.
    """
    from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import (
        nnUNetTrainerNoMirroring)

    base = nnUNetTrainerNoMirroring if is_default_schedule(schedule) else _scheduled(schedule)
    if appearance is None:
        return base

    from training.segmenter.appearance import RandomAppearance

    class VentricleSynthAppearanceTrainer(base):
        """The trainer above with a random appearance before nnU-Net's own augmentation."""

        @staticmethod
        def get_training_transforms(*args, **kwargs):
            composed = base.get_training_transforms(*args, **kwargs)
            composed.transforms.insert(0, RandomAppearance(appearance, percentiles))
            return composed

    return VentricleSynthAppearanceTrainer


def _scheduled(schedule: dict):
    import torch
    from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import (
        nnUNetTrainerNoMirroring)

    class VentricleSynthTrainer(nnUNetTrainerNoMirroring):
        """nnUNetTrainerNoMirroring with epochs, iterations, checkpoint interval (and lr) from the config; with
        `max_seconds` the learning rate decays over that time (TimeBoxedPolyLR) and `epochs` is only a cap."""

        SCHEDULE = dict(schedule)

        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            s = self.SCHEDULE
            self.num_epochs = int(s["epochs"])
            self.num_iterations_per_epoch = int(s["iterations_per_epoch"])
            self.num_val_iterations_per_epoch = int(s["val_iterations_per_epoch"])
            self.save_every = int(s.get("checkpoint_every", 1))
            if "initial_lr" in s:
                self.initial_lr = float(s["initial_lr"])
            self.max_seconds = float(s["max_seconds"]) if "max_seconds" in s else None
            self.first_epoch = None

        def configure_optimizers(self):
            optimizer, scheduler = super().configure_optimizers()
            if self.max_seconds is not None:
                scheduler = TimeBoxedPolyLR(optimizer, self.initial_lr, self.max_seconds)
            return optimizer, scheduler

        def on_train_start(self):
            super().on_train_start()
            self.first_epoch = self.current_epoch

        def on_epoch_end(self):
            super().on_epoch_end()  # current_epoch now counts the epochs done
            if self.max_seconds is None:
                return
            elapsed = self.lr_scheduler.elapsed()
            per_epoch = elapsed / max(1, self.current_epoch - self.first_epoch)
            if self.current_epoch < self.num_epochs and elapsed + per_epoch > self.max_seconds:
                self.print_to_log_file(f"time box: {elapsed:.0f} of {self.max_seconds:.0f} s used at "
                                       f"{per_epoch:.1f} s per epoch: training ends after {self.current_epoch} epochs")
                raise TimeBoxReached

    return VentricleSynthTrainer


def nnunet_device(name: str):
    """The torch device nnU-Net trains on for a device name (CUDA: the first visible GPU)."""
    import torch

    from VentricleSynthLib.devices import resolve_device

    device = resolve_device(name)
    return torch.device("cuda", 0) if device.type == "cuda" else device


def initial_checkpoint(initial_weights: str) -> Path:
    """The nnU-Net checkpoint of a segmenter bundle folder (`bundled`: the shipped segmenter)."""
    from VentricleSynthLib.bundles.format import read_config
    from VentricleSynthLib.bundles.store import BUNDLED, SEGMENTER

    folder = BUNDLED / SEGMENTER if initial_weights == "bundled" else Path(initial_weights)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"segmenter.initial_weights: {folder} is not a segmenter bundle (no config.json)")
    nn = read_config(folder)["nnunet"]
    checkpoint = folder / nn["model_folder"] / f"fold_{nn['folds'][0]}" / nn["checkpoint"]
    if not checkpoint.is_file():
        raise ConfigError(f"segmenter.initial_weights: {checkpoint} is missing")
    return checkpoint


def initial_weights_provenance(initial_weights: str) -> dict:
    """What the card says about the network a fine-tuning started from: its checkpoint's sha256, epochs and
    training seconds (from the bundle's own config)."""
    import hashlib

    from VentricleSynthLib.bundles.format import read_config

    checkpoint = initial_checkpoint(initial_weights)
    bundle = checkpoint.parents[4]
    training = read_config(bundle).get("training", {})
    return {"bundle": initial_weights, "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
            "seconds": training.get("seconds"), "schedule": training.get("schedule"),
            "git_commit": training.get("git_commit")}


def _load_initial_weights(trainer, initial_weights: str, progress=print) -> None:
    """Start from a bundle's network: the same plan gives the same layers (a mismatch is an error)."""
    import torch

    checkpoint = initial_checkpoint(initial_weights)
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["network_weights"]
    trainer.initialize()
    network = trainer.network.module if hasattr(trainer.network, "module") else trainer.network
    network = getattr(network, "_orig_mod", network)
    try:
        network.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as exc:
        raise ConfigError(f"segmenter.initial_weights: {checkpoint} does not fit this plan's network: "
                          f"{str(exc).splitlines()[0]}") from None
    progress(f"segmenter: network initialised from {checkpoint}")


def train(dataset_id: int, settings: SegmenterConfig, profile: Profile, resume: bool = False,
          progress=print) -> tuple[Path, float]:
    """Train (or continue) fold `settings.fold`; returns the trainer's output folder base and training seconds.
    `profile` gives the random appearance its intensity percentiles."""
    import torch
    from nnunetv2.run.run_training import maybe_load_checkpoint, run_training
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    name = convert_id_to_dataset_name(dataset_id)
    pre = Path(os.environ["nnUNet_preprocessed"]) / name
    cls = trainer_class(settings.trainer, settings.appearance, tuple(profile.percentiles))
    fold = settings.fold
    base = Path(os.environ["nnUNet_results"]) / name / f"{cls.__name__}__{PLANS}__{CONFIGURATION}"
    fold_dir = base / f"fold_{fold}"
    existing = sorted(fold_dir.glob("checkpoint_*.pth")) if fold_dir.is_dir() else []
    if existing and not resume:
        raise TrainingError(f"{fold_dir} already holds nnU-Net checkpoints ({', '.join(p.name for p in existing)}): "
                            f"pass --resume to continue, or use another --work folder")
    if resume and "max_seconds" in settings.trainer:
        raise ConfigError("segmenter.trainer.max_seconds: a time-boxed training cannot be resumed (its learning "
                          "rate follows its own clock); train anew in another --work folder")
    start = time.time()
    final = fold_dir / "checkpoint_final.pth"
    if resume and final.is_file():
        done, wanted = trained_epochs(final), int(settings.trainer["epochs"])
        if done >= wanted:
            progress(f"segmenter: {name} already trained ({final}, {done} epochs)")
            return base, 0.0
        progress(f"segmenter: {name} trained {done} epochs; continuing to {wanted} "
                 f"(nnU-Net's poly learning rate picks up at epoch {done} of {wanted})")
        latest = fold_dir / "checkpoint_latest.pth"  # an interrupted extension: nnU-Net itself would reload final
        continued_from = latest if latest.is_file() and trained_epochs(latest) > done else final
        extensions = schedule_extensions(fold_dir)
        if {"from_epoch": done, "to_epoch": wanted} not in extensions:
            text = json.dumps(extensions + [{"from_epoch": done, "to_epoch": wanted}])
            write_text(fold_dir / EXTENSIONS_FILE, text)
    else:
        continued_from = None
    device = nnunet_device(settings.device)
    num_gpus = int(settings.num_gpus)
    if num_gpus > 1:
        if device.type != "cuda" or cls.__name__ != "nnUNetTrainerNoMirroring" or settings.initial_weights:
            raise ConfigError("segmenter.num_gpus > 1 needs CUDA and nnU-Net's default schedule, without "
                              "appearance or initial_weights")
        run_training(str(dataset_id), CONFIGURATION, fold, cls.__name__, PLANS, num_gpus=num_gpus,
                     continue_training=resume, device=device)
        return base, time.time() - start
    plans = json.loads((pre / f"{PLANS}.json").read_text())
    plans["continue_training"] = bool(resume)
    dataset_json = json.loads((pre / "dataset.json").read_text())
    trainer = cls(plans=plans, configuration=CONFIGURATION, fold=fold, dataset_json=dataset_json, device=device)
    if continued_from is not None:
        trainer.load_checkpoint(str(continued_from))
    elif resume and existing:
        maybe_load_checkpoint(trainer, resume, False)
    elif settings.initial_weights is not None:
        _load_initial_weights(trainer, settings.initial_weights, progress)
    if torch.cuda.is_available() and device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        trainer.run_training()
    except TimeBoxReached:
        trainer.on_train_end()
    if settings.final_validation:
        trainer.perform_actual_validation()
    return base, time.time() - start


def schedule_extensions(fold_dir: Path) -> list[dict]:
    """The --resume extensions of a finished training ([{"from_epoch", "to_epoch"}], oldest first), for the card."""
    history = Path(fold_dir) / EXTENSIONS_FILE
    return json.loads(history.read_text()) if history.is_file() else []


def trained_epochs(checkpoint: Path) -> int:
    """Epochs a finished nnU-Net checkpoint has trained (a larger `epochs` in the config extends it on --resume)."""
    import torch

    return int(torch.load(checkpoint, map_location="cpu", weights_only=False)["current_epoch"])


def training_seconds(checkpoint: Path) -> float:
    """Seconds of training over all sessions, from nnU-Net's own per-epoch timestamps in the checkpoint."""
    import torch

    if not Path(checkpoint).is_file():
        return 0.0
    log = torch.load(checkpoint, map_location="cpu", weights_only=False).get("logging", {})
    starts, ends = log.get("epoch_start_timestamps", []), log.get("epoch_end_timestamps", [])
    return float(sum(e - s for s, e in zip(starts, ends)))
