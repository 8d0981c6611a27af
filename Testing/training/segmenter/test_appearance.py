"""The segmenter's random appearance (training/segmenter/appearance.py) and fine-tuning from a bundle's network.

The painting is checked on a synthetic label map (fast); the fine-tuning runs the tiny segmenter stage again with
the appearance on and the session's tiny bundle as initial weights, at a near-zero learning rate, so the trained
network must still be (almost) the initial one.
"""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch
from testing_helpers import run_train, tiny_segmenter_config

from training.segmenter.appearance import (
    BRIGHT_FLUID, FIRST_TISSUE, TRAINING_LABELS, RandomAppearance, training_labels)
from VentricleSynthLib.labels import CSF_LABEL
from VentricleSynthLib.segmentation.decision import SEGMENTER_LABELS


def _phantom() -> tuple[np.ndarray, np.ndarray]:
    """(training indices, a T1-like z-scored image): a head ring, white matter, cortex, ventricles, CSF."""
    z, y, x = np.mgrid[:40, :48, :40]
    r = np.sqrt(((z - 20) / 18) ** 2 + ((y - 24) / 22) ** 2 + ((x - 20) / 18) ** 2)
    fs = np.zeros(r.shape, dtype=np.int64)
    fs[r < 0.85] = 3
    fs[r < 0.75] = 2
    fs[(r < 0.75) & (x >= 20)] = 41
    fs[(r < 0.25) & (x < 20)] = 4
    fs[(r < 0.25) & (x >= 20)] = 43
    fs[(r >= 0.85) & (r < 0.88)] = CSF_LABEL
    t1 = np.where(r < 1.0, 0.6, 0.0) + np.where((fs == 2) | (fs == 41), 0.3, 0.0)
    return training_labels(fs), ((t1 - t1.mean()) / t1.std()).astype(np.float32)


def test_training_labels_keep_every_structure_after_the_ventricles():
    fs = np.array([0, 4, 43, 5, 44, 14, 15, 2, 41, 24, 999])
    idx = training_labels(fs)
    assert list(idx[:7]) == list(range(7))  # the segmenter's own indices, unchanged
    assert len(set(idx[7:10])) == 3 and min(idx[7:10]) >= FIRST_TISSUE
    assert idx[10] == 0  # unknown -> background
    assert TRAINING_LABELS[:FIRST_TISSUE] == SEGMENTER_LABELS and len(set(TRAINING_LABELS)) == len(TRAINING_LABELS)


def _call(transform, labels, image):
    return transform(image=torch.from_numpy(image[None].copy()),
                     segmentation=torch.from_numpy(labels[None].astype(np.int16)))


def test_painted_images_are_normalised_random_contrasts_with_csf_like_ventricles():
    labels, image = _phantom()
    transform = RandomAppearance(1.0, seed=0)
    vent = (labels >= 1) & (labels < FIRST_TISSUE)
    images, ventricle_spread = [], []
    for _ in range(8):
        out = _call(transform, labels, image)
        painted = out["image"][0].numpy()
        assert painted.shape == image.shape and abs(painted.mean()) < 1e-3 and abs(painted.std() - 1) < 1e-3
        seg = out["segmentation"][0].numpy()
        assert seg.max() < FIRST_TISSUE and np.array_equal(seg > 0, vent)  # the targets stay, the rest is cleared
        left, right = painted[labels == 1].mean(), painted[labels == 2].mean()
        ventricle_spread.append(abs(left - right))
        images.append(painted)
    # contrast differs from draw to draw: the white matter-to-ventricle difference changes sign across draws
    wm = np.isin(labels, [TRAINING_LABELS.index(2), TRAINING_LABELS.index(41)])
    signs = {np.sign(im[wm].mean() - im[vent].mean()) for im in images}
    assert signs == {-1.0, 1.0}
    assert np.median(ventricle_spread) < 0.5  # left and right ventricles read alike (both CSF)


def test_fluid_is_brightest_in_a_share_of_paintings_as_in_t2_weighted_images():
    """Uniform means alone make the ventricles brighter than white matter and cortex in a third of paintings;
    BRIGHT_FLUID adds its share on top (about 0.35 + 0.65 / 3 = 0.57)."""
    labels, image = _phantom()
    transform = RandomAppearance(1.0, seed=1)
    vent = (labels >= 1) & (labels < FIRST_TISSUE)
    tissues = [np.isin(labels, [TRAINING_LABELS.index(a), TRAINING_LABELS.index(b)]) for a, b in ((2, 41), (3, 42))]
    draws = 120
    brightest = 0
    for _ in range(draws):
        painted = transform.paint(labels, image)
        brightest += all(painted[vent].mean() > painted[t].mean() for t in tissues)
    assert BRIGHT_FLUID >= 0.3 and brightest / draws > 0.47


def test_probability_zero_keeps_the_real_image_and_still_clears_the_tissue_labels():
    labels, image = _phantom()
    out = _call(RandomAppearance(0.0, seed=0), labels, image)
    assert np.array_equal(out["image"][0].numpy(), image)
    assert out["segmentation"].max() < FIRST_TISSUE


def test_each_process_draws_its_own_appearances():
    """nnU-Net's augmentation workers get copies: a copy re-seeds when it finds itself in a new process."""
    import multiprocessing

    transform = RandomAppearance(1.0, seed=5)
    first = transform.rng.random()
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        drawn = pool.map(_first_draw, [pickle.dumps(transform)] * 2, chunksize=1)
    assert first not in drawn
    assert pickle.loads(pickle.dumps(transform)).rng.random() != first  # same process: the stream goes on


def _first_draw(pickled: bytes) -> float:
    return pickle.loads(pickled).rng.random()


def test_trainer_with_appearance_paints_first():
    from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import (
        nnUNetTrainerNoMirroring)

    from training.segmenter.trainer import trainer_class

    cls = trainer_class({"epochs": 3, "iterations_per_epoch": 7, "val_iterations_per_epoch": 2}, 0.5, (1.0, 99.0))
    assert issubclass(cls, nnUNetTrainerNoMirroring) and cls.SCHEDULE["epochs"] == 3
    composed = cls.get_training_transforms((40, 48, 40), (0, 0), None, (), False, regions=[(1, 2), 1, 2])
    first = composed.transforms[0]
    assert isinstance(first, RandomAppearance) and first.probability == 0.5 and first.percentiles == (1.0, 99.0)


@pytest.mark.slow
def test_fine_tuning_starts_from_the_bundle_and_trains_on_all_structure_labels(tiny_segmenter, tmp_path):
    import nibabel as nib

    from VentricleSynthLib.bundles import format as bundles

    work = tmp_path / "work"
    shutil.copytree(tiny_segmenter["work"] / "data", work / "data")
    config = tiny_segmenter_config(tmp_path / "tuned.yaml", appearance=1.0,
                                   initial_weights=str(tiny_segmenter["bundle"]), trainer={
                                       "epochs": 1, "iterations_per_epoch": 2, "val_iterations_per_epoch": 1,
                                       "checkpoint_every": 1, "initial_lr": 1.0e-9})
    done = run_train("segmenter", "--config", config, "--work", work)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    assert "network initialised from" in done.stdout
    raw = next((work / "nnunet" / "raw").glob("Dataset*"))
    found = set()
    for label_file in sorted((raw / "labelsTr").glob("*.nii.gz"))[:3]:
        found |= set(np.unique(np.asarray(nib.load(label_file).dataobj)).astype(int))
    assert max(found) >= FIRST_TISSUE and set(range(1, 3)) <= found  # every structure, ventricles as 1..6

    def weights(bundle):
        model = bundle / bundles.read_config(bundle)["nnunet"]["model_folder"]
        return torch.load(model / "fold_0" / "checkpoint_final.pth", weights_only=True)["network_weights"]

    before, after = weights(tiny_segmenter["bundle"]), weights(work / "bundles" / "segmenter")
    assert before.keys() == after.keys()
    assert all(torch.allclose(before[k].float(), after[k].float(), atol=1e-2) for k in before)
    config_json = bundles.read_config(work / "bundles" / "segmenter")
    assert config_json["training"]["appearance"] == 1.0
    assert config_json["training"]["initial_weights"]["bundle"] == str(tiny_segmenter["bundle"])
    assert config_json["nnunet"]["trainer_trained_with"] == "VentricleSynthAppearanceTrainer"


def test_config_checks_appearance_and_initial_weights(tmp_path):
    from training.config import Config
    from training.stage_configs import SegmenterConfig
    from VentricleSynthLib.errors import VentricleSynthError

    def section(**values):
        return SegmenterConfig.from_config(Config("x", None, {"segmenter": values}))

    assert section().appearance is None and section().initial_weights is None
    assert section(appearance=0.6).appearance == 0.6
    for bad in (1.5, -0.1, "often"):
        with pytest.raises(VentricleSynthError, match="appearance"):
            section(appearance=bad)
    from training.segmenter.trainer import initial_checkpoint

    with pytest.raises(VentricleSynthError, match="initial_weights"):
        initial_checkpoint(str(tmp_path))
    assert initial_checkpoint("bundled").is_file()
