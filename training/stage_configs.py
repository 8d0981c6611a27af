"""Each stage's config section as a frozen dataclass: `from_config` fills in the defaults and checks every
value through `training.config.Section` (one style, one error message form).

Settings written into bundles as given (network architectures, the scheduler, the nnU-Net schedule and
network sizes) stay plain mappings in the order of the file, so that the bundles' JSON is what it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from training.config import MISSING, Config, Section, is_integer, is_number


# --- data ----------------------------------------------------------------------------------------------

TEMPLATE_DATASETS = ("natural", "enlarged", "uniform")


@dataclass(frozen=True)
class TemplateDatasetConfig:
    """One template-cohort dataset (`data.natural`, ...): how many cases and their volume range."""

    count: int = 0
    val_fraction: float = 0.1  # natural only: the validation split
    low_ml: float | None = None  # default: the distribution's own (template_cohort.sample_targets)
    high_ml: float | None = None


@dataclass(frozen=True)
class DataConfig:
    """The `data` section: the template cohort's seed, workers, skull fraction and datasets."""

    seed: int = 0
    workers: int = 1
    skull_fraction: float = 0.5
    datasets: dict = field(default_factory=dict)  # name -> TemplateDatasetConfig

    @classmethod
    def from_config(cls, config: Config) -> "DataConfig":
        s = Section(config.path, "data", config.section("data"),
                    ("seed", "workers", "skull_fraction", *TEMPLATE_DATASETS))
        datasets = {}
        for name in TEMPLATE_DATASETS:
            d = s.sub(name, ("count", "val_fraction", "low_ml", "high_ml"))
            datasets[name] = TemplateDatasetConfig(
                d.integer("count", 0, minimum=0), d.number("val_fraction", 0.1, 0, 1),
                d.number("low_ml", None, low=0, optional=True), d.number("high_ml", None, low=0, optional=True))
        return cls(s.integer("seed", 0), s.integer("workers", 1), s.number("skull_fraction", 0.5, 0, 1), datasets)


# --- generators ----------------------------------------------------------------------------------------

_TRAIN_COMMON = ("steps", "batch_size", "lr", "checkpoint_every", "amp")
_TRAIN_KEYS = {
    "mask_autoencoder": (*_TRAIN_COMMON, "patch", "kl_weight"),
    "image_autoencoder": (*_TRAIN_COMMON, "patch", "kl_weight", "adv_weight", "adv_start", "disc_channels",
                          "perceptual_weight", "perceptual_weights"),
    "mask_ldm": (*_TRAIN_COMMON, "ema_decay", "cond_drop"),
    "image_ldm": (*_TRAIN_COMMON, "ema_decay"),
}


@dataclass(frozen=True)
class TrainSettings:
    """`generators.<network>.train`: the optimisation of one network."""

    steps: int
    batch_size: int
    lr: float
    checkpoint_every: int
    amp: bool = False  # bf16 autocast on CUDA
    patch: tuple | None = None  # autoencoders: training patch (voxels)
    kl_weight: float | None = None  # autoencoders
    adv_weight: float = 0.0  # image autoencoder: adversarial loss weight, from step `adv_start`
    adv_start: int = 0
    disc_channels: int = 16
    perceptual_weight: float = 1e-3
    perceptual_weights: str | None = None  # a local LPIPS weights file (nothing is downloaded)
    ema_decay: float | None = None  # LDMs
    cond_drop: float = 0.2  # mask LDM: share of samples trained with the null condition

    @classmethod
    def read(cls, s: Section, autoencoder: bool) -> "TrainSettings":
        needed = MISSING if autoencoder else None  # patch and kl_weight: autoencoders only
        patch = s.value("patch", needed, lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(
            is_integer(p) and p >= 1 for p in v), "three sizes >= 1", optional=not autoencoder)
        return cls(
            steps=s.integer("steps", minimum=0), batch_size=s.integer("batch_size", minimum=1), lr=s.number("lr"),
            checkpoint_every=s.integer("checkpoint_every", minimum=1), amp=s.boolean("amp", False),
            patch=tuple(patch) if patch is not None else None,
            kl_weight=s.number("kl_weight", needed, low=0, optional=not autoencoder),
            adv_weight=s.number("adv_weight", 0.0, low=0), adv_start=s.integer("adv_start", 0, minimum=0),
            disc_channels=s.integer("disc_channels", 16, minimum=1),
            perceptual_weight=s.number("perceptual_weight", 1e-3, low=0),
            perceptual_weights=s.text("perceptual_weights", None, "a weights file", optional=True),
            ema_decay=s.number("ema_decay", None, 0, 1, optional=True), cond_drop=s.number("cond_drop", 0.2, 0, 1))


@dataclass(frozen=True)
class NetworkConfig:
    """One of `generators.{mask,image}_{autoencoder,ldm}`: its MONAI architecture (as given) and training."""

    arch: dict
    train: TrainSettings
    latent_channels: int | None = None  # autoencoders: the latent size (default generators.latent_channels)
    sampling: dict | None = None  # LDMs: the bundle's sampling defaults


@dataclass(frozen=True)
class GeneratorsConfig:
    """The `generators` section: training data, latent size, noise schedule and the four networks."""

    datasets: list
    latent_channels: int | None
    scheduler: dict
    networks: dict  # name -> NetworkConfig, for the networks the section sets
    where: str = "config"

    @classmethod
    def from_config(cls, config: Config) -> "GeneratorsConfig":
        """The section; an LDM without `sampling` records the library's sampling fallbacks in its bundle."""
        from VentricleSynthLib.bundles.store import IMAGE, MASK
        from VentricleSynthLib.generation.settings import FALLBACK

        bundle_of = {"mask_ldm": MASK, "image_ldm": IMAGE}
        where = config.path
        if config.section("generators") is None:
            raise Section(where, "generators", {}, ()).error("", "a mapping", MISSING)
        s = Section(where, "generators", config.section("generators"),
                    ("datasets", "latent_channels", "scheduler", *_TRAIN_KEYS))
        latent_channels = s.integer("latent_channels", None, minimum=1, optional=True)
        networks = {}
        for name, train_keys in _TRAIN_KEYS.items():
            if s.mapping.get(name) is None:
                continue
            autoencoder = name.endswith("autoencoder")
            n = s.sub(name, ("arch", "train", "latent_channels") if autoencoder else ("arch", "train", "sampling"))
            own = n.integer("latent_channels", None, minimum=1, optional=True) if autoencoder else None
            if autoencoder and own is None and latent_channels is None:
                raise s.error("latent_channels", "an integer >= 1", MISSING)
            networks[name] = NetworkConfig(
                n.mapping_of("arch"), TrainSettings.read(n.sub("train", train_keys), autoencoder),
                (own if own is not None else latent_channels) if autoencoder else None,
                None if autoencoder else n.mapping_of("sampling", dict(FALLBACK[bundle_of[name]])))
        return cls(s.names("datasets"), latent_channels, s.mapping_of("scheduler"), networks, where)

    def network(self, name: str) -> NetworkConfig:
        """A network the stage needs: the one ConfigError when the section does not set it."""
        if name not in self.networks:
            raise Section(self.where, "generators", {}, ()).error(name, "a mapping", MISSING)
        return self.networks[name]


# --- segmenter -----------------------------------------------------------------------------------------

# What the network is trained to output. `labels`: nnU-Net's default, softmax over background + six labels.
# `union+labels`: nnU-Net's region-based training (sigmoid heads, Dice + BCE per region) with the ventricular
# system itself as the first region, then each label as its own region. Trained so, the cpu model learned all six
# labels (with `labels` it never learned the four small ones: -8.5 mL on enlarged cases); at inference the label
# regions decide (VentricleSynthLib.segmentation.decision.union_and_scores: the union head measured worse on
# validation).
TARGETS = ("labels", "union+labels")
# nnU-Net's reader/writer for the raw dataset's .nii.gz files (dataset.json `overwrite_image_reader_writer`). null:
# nnU-Net's own choice, SimpleITKIO. NibabelIO gives the same arrays in the same (z, y, x) order and spacing and
# needs no SimpleITK at run time (benchmarks/gpu_check.py: the device machine has no room for SimpleITK).
READER_WRITERS = ("SimpleITKIO", "NibabelIO")
_SCHEDULE_KEYS = ("epochs", "iterations_per_epoch", "val_iterations_per_epoch", "checkpoint_every", "initial_lr",
                  "max_seconds")
_NETWORK_KEYS = ("base_features", "max_features", "max_stages", "convs_per_stage")
_SEGMENTER_DEFAULTS = {
    "network": {"base_features": 16, "max_features": 128, "max_stages": 5, "convs_per_stage": 2},
    "trainer": {"epochs": 10, "iterations_per_epoch": 50, "val_iterations_per_epoch": 5, "checkpoint_every": 1},
}
_SEGMENTER_KEYS = ("datasets", "dataset_id", "plan", "targets", "union_threshold", "patch_size", "batch_size",
                   "network", "trainer", "fold", "final_validation", "num_gpus", "device", "image_reader_writer",
                   "appearance", "initial_weights")
# `appearance`: the probability that a training sample's image is painted from its label map in a random contrast
# (training/segmenter/appearance.py; null: the T1 images only). `initial_weights`: a segmenter bundle folder (or
# `bundled`, the shipped one) whose network starts the training (fine-tuning; the same plan is needed).


@dataclass(frozen=True)
class SegmenterConfig:
    """The `segmenter` section: what the nnU-Net segmenter trains on, its plan, targets, schedule and decision."""

    datasets: list = field(default_factory=lambda: ["natural"])
    dataset_id: int = 501
    plan: str = "slim"  # or "default": nnU-Net's own 3d_fullres plan
    targets: str = "labels"  # see TARGETS
    union_threshold: float | str = 0.5  # or "val": chosen on the validation split after training
    patch_size: list | None = None  # default: the profile shape
    batch_size: int = 2
    network: dict = field(default_factory=lambda: dict(_SEGMENTER_DEFAULTS["network"]))  # the slim plan's sizes
    trainer: dict = field(default_factory=lambda: dict(_SEGMENTER_DEFAULTS["trainer"]))  # the schedule
    fold: int | str = 0
    final_validation: bool = False
    num_gpus: int = 1
    device: str = "auto"
    image_reader_writer: str | None = None  # see READER_WRITERS
    appearance: float | None = None  # see _SEGMENTER_KEYS
    initial_weights: str | None = None

    @classmethod
    def from_config(cls, config: Config, overrides: dict | None = None) -> "SegmenterConfig":
        """The section with defaults filled in and `overrides` on top (mappings merged key by key)."""
        from VentricleSynthLib.segmentation.decision import MIN_THRESHOLD

        where = config.path
        section = config.section("segmenter")
        Section(where, "segmenter", section, _SEGMENTER_KEYS)  # a mapping of known keys
        merged = {**(section or {})}
        for key in ("network", "trainer"):
            merged[key] = {**_SEGMENTER_DEFAULTS[key], **(merged.get(key) or {})}
        for key, value in (overrides or {}).items():
            merged[key] = {**merged[key], **value} if isinstance(value, dict) and isinstance(merged.get(key), dict) \
                else value
        s = Section(where, "segmenter", merged, _SEGMENTER_KEYS)
        network, trainer = s.sub("network", _NETWORK_KEYS), s.sub("trainer", _SCHEDULE_KEYS)
        for key in _NETWORK_KEYS:
            network.integer(key, minimum=1)
        for key in _SCHEDULE_KEYS[:4]:
            trainer.integer(key, minimum=1)
        trainer.number("initial_lr", None, low=0, optional=True)
        trainer.number("max_seconds", None, low=1, optional=True)  # training.segmenter.trainer.TimeBoxedPolyLR
        return cls(
            datasets=s.names("datasets", ["natural"]), dataset_id=s.integer("dataset_id", 501, minimum=0),
            plan=s.choice("plan", "slim", ("slim", "default")), targets=s.choice("targets", "labels", TARGETS),
            union_threshold=s.value("union_threshold", 0.5, lambda v: v == "val" or (
                is_number(v) and not isinstance(v, str) and MIN_THRESHOLD < v < 1),
                f"a number in ({MIN_THRESHOLD:g}, 1) or 'val'"),
            patch_size=s.value("patch_size", None, lambda v: v is None or (
                isinstance(v, (list, tuple)) and len(v) == 3 and all(is_integer(p) for p in v) and min(v) >= 8),
                "three sizes >= 8 (or null)"),
            batch_size=s.integer("batch_size", 2, minimum=1), network=network.mapping, trainer=trainer.mapping,
            fold=s.value("fold", 0, lambda v: v == "all" or is_integer(v), "an integer or 'all'"),
            final_validation=s.boolean("final_validation", False), num_gpus=s.integer("num_gpus", 1, minimum=1),
            device=s.text("device", "auto", "a device name: auto, cpu, cuda, cuda:N or mps"),
            image_reader_writer=s.value("image_reader_writer", None, lambda v: v in READER_WRITERS,
                                        f"one of {', '.join(READER_WRITERS)}", "nnU-Net's choice"),
            appearance=s.number("appearance", None, low=0, high=1, optional=True),
            initial_weights=s.text("initial_weights", None, "a segmenter bundle folder or 'bundled'", optional=True))


# --- synthesize ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SynthesizeConfig:
    """The `synthesize` section (train.py options on top): a synthetic cohort like `VentricleSynthLib generate`."""

    count: int = 12
    distribution: str = "uniform"  # the mask bundle's trained range
    seed: int = 6000
    guidance: float | None = None  # the bundle's
    candidates: int | None = None  # the bundle's
    steps: int | None = None  # each bundle's
    batch_size: int | None = None  # 8 on CUDA, else 1
    format: str = "nnunet"
    qc_min_dice: float | None = None
    device: str = "auto"

    @classmethod
    def from_config(cls, config: Config, overrides: dict | None = None) -> "SynthesizeConfig":
        from VentricleSynthLib.cohorts.layout import FORMATS

        keys = ("count", "distribution", "seed", "guidance", "candidates", "steps", "batch_size", "format",
                "qc_min_dice", "device")
        s = Section(config.path, "synthesize", config.section("synthesize"), keys)
        s.mapping = {**s.mapping, **{k: v for k, v in (overrides or {}).items() if v is not None}}
        return cls(
            count=s.integer("count", 12, minimum=1),
            distribution=s.value("distribution", "uniform", lambda v: isinstance(v, str) or is_number(v),
                                 "a distribution spec such as uniform:20-140"),
            seed=s.integer("seed", 6000, minimum=0),
            guidance=s.number("guidance", None, low=0, optional="the bundle's"),
            candidates=s.integer("candidates", None, minimum=1, optional="the bundle's"),
            steps=s.integer("steps", None, minimum=1, optional="each bundle's"),
            batch_size=s.integer("batch_size", None, minimum=1, optional="8 on CUDA, else 1"),
            format=s.choice("format", "nnunet", FORMATS),
            qc_min_dice=s.number("qc_min_dice", None, 0, 1, optional="no filter"),
            device=s.text("device", "auto", "a device name: auto, cpu, cuda, cuda:N or mps"))


# --- experiment ----------------------------------------------------------------------------------------

ARMS = ("real", "augmented", "synthetic")


@dataclass(frozen=True)
class RegistrationConfig:
    """`experiment.registration`: the atlas baseline's SimpleITK affine + demons registration."""

    affine_iterations: int = 100
    demons_iterations: int = 100
    demons_levels: list = field(default_factory=lambda: [2, 1])
    demons_sigma: float = 1.0
    sampling: float = 0.2  # share of voxels the affine metric samples
    seed: int = 0


@dataclass(frozen=True)
class ExperimentConfig:
    """The `experiment` section: the paper's arms, its hold-out, the synthetic pairs and the atlas baseline."""

    arms: list = field(default_factory=lambda: list(ARMS))
    atlas: bool = True
    holdout: str = "enlarged"
    real_datasets: list = field(default_factory=lambda: ["natural"])
    synthetic_count: int = 20
    augment_count: int | None = None  # synthetic pairs added to the real set in the augmented arm (default: all)
    synthetic_guidance: float | None = None  # default: the mask bundle's (the paper's final set used w = 1)
    synthetic_candidates: int | None = None  # default: the mask bundle's
    synthetic_steps: int | None = None  # default: the generator bundles' own
    synthetic_seed: int = 7000
    dataset_ids: dict = field(default_factory=lambda: {"real": 511, "augmented": 512, "synthetic": 513})
    segmenter: dict = field(default_factory=dict)  # overrides of the `segmenter` section for the arms
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)

    # The arms compare training data: each starts from scratch on its T1 images, whatever the bundled segmenter's
    # own section says (fine-tuning, random appearance); `segmenter` overrides may still set them.
    ARM_BASE = {"initial_weights": None, "appearance": None}

    def arm_segmenter(self, config: Config, arm: str) -> SegmenterConfig:
        """The segmenter settings of one arm: the `segmenter` section, ARM_BASE, this section's overrides."""
        return SegmenterConfig.from_config(config, {**self.ARM_BASE, **self.segmenter,
                                                    "dataset_id": int(self.dataset_ids[arm])})

    @classmethod
    def from_config(cls, config: Config) -> "ExperimentConfig":
        where = config.path
        s = Section(where, "experiment", config.section("experiment"),
                    ("arms", "atlas", "holdout", "real_datasets", "synthetic_count", "augment_count",
                     "synthetic_guidance", "synthetic_candidates", "synthetic_steps", "synthetic_seed",
                     "dataset_ids", "segmenter", "registration"))
        ids = s.sub("dataset_ids", ARMS)
        r = s.sub("registration", ("affine_iterations", "demons_iterations", "demons_levels", "demons_sigma",
                                   "sampling", "seed"))
        default = RegistrationConfig()
        registration = RegistrationConfig(
            r.integer("affine_iterations", default.affine_iterations, minimum=0),
            r.integer("demons_iterations", default.demons_iterations, minimum=0),
            r.value("demons_levels", default.demons_levels, lambda v: isinstance(v, list) and all(
                is_integer(f) and f >= 1 for f in v), "a list of shrink factors >= 1"),
            r.number("demons_sigma", default.demons_sigma, low=0), r.number("sampling", default.sampling, 0, 1),
            r.integer("seed", default.seed, minimum=0))
        return cls(
            arms=s.names("arms", list(ARMS), ARMS), atlas=s.boolean("atlas", True),
            holdout=s.text("holdout", "enlarged"), real_datasets=s.names("real_datasets", ["natural"]),
            synthetic_count=s.integer("synthetic_count", 20, minimum=1),
            augment_count=s.integer("augment_count", None, minimum=0, optional=True),
            synthetic_guidance=s.number("synthetic_guidance", None, low=0, optional=True),
            synthetic_candidates=s.integer("synthetic_candidates", None, minimum=1, optional=True),
            synthetic_steps=s.integer("synthetic_steps", None, minimum=1, optional=True),
            synthetic_seed=s.integer("synthetic_seed", 7000, minimum=0),
            dataset_ids={**cls().dataset_ids, **{k: ids.integer(k, minimum=0) for k in ids.mapping}},
            segmenter=s.mapping_of("segmenter", {}), registration=registration)
