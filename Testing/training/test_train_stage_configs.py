"""Stage configs (training/config.py, training/stage_configs.py): every committed profile reads into every
section's dataclass with the defaults it always had, and every bad value is one ConfigError of one form."""

from __future__ import annotations

import pytest

from training.config import PROFILES, Config, load_config
from training.stage_configs import (
    DataConfig,
    ExperimentConfig,
    GeneratorsConfig,
    RegistrationConfig,
    SegmenterConfig,
    SynthesizeConfig,
)
from VentricleSynthLib.errors import ConfigError


def _config(**sections) -> Config:
    return Config("c.yaml", None, sections)


@pytest.mark.parametrize("name", PROFILES)
def test_every_committed_profile_reads_into_every_section(name):
    config = load_config(name)
    data = DataConfig.from_config(config)
    assert data.seed > 0 and data.datasets["natural"].count > 0 and data.skull_fraction == 0.5
    generators = GeneratorsConfig.from_config(config)
    assert set(generators.networks) == {"mask_autoencoder", "mask_ldm", "image_autoencoder", "image_ldm"}
    assert generators.network("mask_ldm").sampling == config.section("generators")["mask_ldm"]["sampling"]
    segmenter = SegmenterConfig.from_config(config)
    assert segmenter.trainer == {**{"checkpoint_every": 1}, **config.section("segmenter")["trainer"]}
    SynthesizeConfig.from_config(config)
    experiment = ExperimentConfig.from_config(config)
    assert experiment.arms == ["real", "augmented", "synthetic"] and experiment.holdout == "enlarged"


def test_the_gpu_fine_tune_of_the_bundled_segmenter_trains_on_the_cpu_profiles_cohort():
    """cpu-segmenter-gpu.yaml fine-tunes the bundled (cpu) segmenter: the same grid and template cohort (only the
    worker count differs), the bundle's plan, a time box and random appearance."""
    cpu, gpu = load_config("cpu"), load_config("cpu-segmenter-gpu")
    assert gpu.profile == cpu.profile
    same = {k: v for k, v in cpu.section("data").items() if k != "workers"}
    assert {k: v for k, v in gpu.section("data").items() if k != "workers"} == same
    tuned, bundled = SegmenterConfig.from_config(gpu), SegmenterConfig.from_config(cpu)
    for key in ("datasets", "plan", "targets", "patch_size", "batch_size", "network", "dataset_id"):
        assert getattr(tuned, key) == getattr(bundled, key), key
    assert tuned.initial_weights == "bundled" and tuned.trainer["max_seconds"] > 0 and 0 < tuned.appearance < 1


def test_defaults_of_an_empty_config():
    config = _config()
    assert DataConfig.from_config(config).workers == 1
    assert DataConfig.from_config(config).datasets["natural"].val_fraction == 0.1
    segmenter = SegmenterConfig.from_config(config)
    assert (segmenter.datasets, segmenter.dataset_id, segmenter.plan, segmenter.targets) == (
        ["natural"], 501, "slim", "labels")
    assert (segmenter.union_threshold, segmenter.patch_size, segmenter.batch_size, segmenter.fold) == (0.5, None, 2, 0)
    assert segmenter.network == {"base_features": 16, "max_features": 128, "max_stages": 5, "convs_per_stage": 2}
    assert segmenter.trainer == {"epochs": 10, "iterations_per_epoch": 50, "val_iterations_per_epoch": 5,
                                 "checkpoint_every": 1}
    assert (segmenter.final_validation, segmenter.num_gpus, segmenter.device) == (False, 1, "auto")
    assert segmenter.image_reader_writer is None  # nnU-Net's own choice (SimpleITKIO for .nii.gz)
    synth = SynthesizeConfig.from_config(config)
    assert (synth.count, synth.distribution, synth.seed, synth.format, synth.device) == (
        12, "uniform", 6000, "nnunet", "auto")
    assert synth.guidance is synth.candidates is synth.steps is synth.batch_size is synth.qc_min_dice is None
    experiment = ExperimentConfig.from_config(config)
    assert (experiment.synthetic_count, experiment.synthetic_seed, experiment.augment_count) == (20, 7000, None)
    assert experiment.dataset_ids == {"real": 511, "augmented": 512, "synthetic": 513}
    assert experiment.registration == RegistrationConfig(100, 100, [2, 1], 1.0, 0.2, 0)
    with pytest.raises(ConfigError, match=r"^c.yaml: generators must be a mapping, got nothing$"):
        GeneratorsConfig.from_config(config)


def test_overrides_merge_into_the_segmenter_section():
    config = _config(segmenter={"trainer": {"epochs": 3, "initial_lr": 1e-4}, "dataset_id": 9})
    merged = SegmenterConfig.from_config(config, {"trainer": {"epochs": 2}, "dataset_id": 511})
    assert merged.trainer == {"epochs": 2, "iterations_per_epoch": 50, "val_iterations_per_epoch": 5,
                              "checkpoint_every": 1, "initial_lr": 1e-4}
    assert merged.dataset_id == 511
    assert SegmenterConfig.from_config(_config(segmenter={"image_reader_writer": "NibabelIO"})).image_reader_writer \
        == "NibabelIO"


def test_experiment_arms_train_from_scratch_on_t1_whatever_the_bundled_segmenter_did():
    config = _config(segmenter={"appearance": 0.6, "initial_weights": "bundled", "trainer": {"epochs": 12}},
                     experiment={"segmenter": {"trainer": {"epochs": 2}}})
    assert SegmenterConfig.from_config(config).initial_weights == "bundled"
    arm = ExperimentConfig.from_config(config).arm_segmenter(config, "synthetic")
    assert (arm.initial_weights, arm.appearance, arm.trainer["epochs"], arm.dataset_id) == (None, None, 2, 513)
    opted_in = _config(segmenter={"appearance": 0.6}, experiment={"segmenter": {"appearance": 0.3}})
    assert ExperimentConfig.from_config(opted_in).arm_segmenter(opted_in, "real").appearance == 0.3


def test_synthesize_config_values_are_type_checked():
    assert SynthesizeConfig.from_config(_config(synthesize={"count": 4}), {"qc_min_dice": 0.5}).qc_min_dice == 0.5
    for key, value, message in [("count", "12", "synthesize.count must be an integer >= 1"),
                                ("seed", 1.5, "synthesize.seed must be an integer >= 0"),
                                ("qc_min_dice", 2, "synthesize.qc_min_dice must be a number in 0..1"),
                                ("format", "png", "synthesize.format must be one of"),
                                ("batch_size", True, "synthesize.batch_size must be an integer >= 1")]:
        with pytest.raises(ConfigError, match=message):
            SynthesizeConfig.from_config(_config(synthesize={key: value}))


@pytest.mark.parametrize("read, sections, message", [
    (DataConfig, {"data": {"natural": {"count": -1}}}, "data.natural.count must be an integer >= 0, got -1"),
    (DataConfig, {"data": {"seed": "x"}}, "data.seed must be an integer, got 'x'"),
    (SegmenterConfig, {"segmenter": {"fold": 1.5}}, "segmenter.fold must be an integer or 'all', got 1.5"),
    (SegmenterConfig, {"segmenter": {"trainer": {"epochs": 0}}},
     "segmenter.trainer.epochs must be an integer >= 1, got 0"),
    (SegmenterConfig, {"segmenter": {"image_reader_writer": "NibabelIOWithReorient"}},
     "segmenter.image_reader_writer must be one of SimpleITKIO, NibabelIO (or null: nnU-Net's choice), "
     "got 'NibabelIOWithReorient'"),
    (ExperimentConfig, {"experiment": {"arms": ["real", "atlas"]}},
     "experiment.arms must be a list of real, augmented, synthetic, got ['real', 'atlas']"),
    (ExperimentConfig, {"experiment": {"registration": {"demons_sigma": -1}}},
     "experiment.registration.demons_sigma must be a number >= 0, got -1"),
    (GeneratorsConfig, {"generators": {"datasets": ["natural"], "scheduler": {}, "latent_channels": 3,
                                       "mask_autoencoder": {"arch": {}, "train": {"steps": 1, "patch": [8, 8, 8]}}}},
     "generators.mask_autoencoder.train.batch_size must be an integer >= 1, got nothing"),
    (SynthesizeConfig, {"synthesize": {"colour": "red"}}, r"synthesize.colour is not a setting \(known: count, "),
])
def test_one_error_form_for_every_section(read, sections, message):
    with pytest.raises(ConfigError, match=r"^c\.yaml: " + (message if "known" in message else _escaped(message))):
        read.from_config(_config(**sections))


def _escaped(text: str) -> str:
    import re

    return re.escape(text) + "$"


def test_yaml_reads_1e_3_as_text_and_a_learning_rate_still_accepts_it():
    generators = {"datasets": ["natural"], "scheduler": {}, "latent_channels": 3,
                  "mask_ldm": {"arch": {}, "train": {"steps": 1, "batch_size": 1, "lr": "1e-3", "checkpoint_every": 1}}}
    spec = GeneratorsConfig.from_config(_config(generators=generators)).network("mask_ldm")
    assert spec.train.lr == 0.001 and spec.sampling == {"guidance": 4.0, "steps": 50, "refine": True}
