"""Random appearance for the segmenter's training (SynthSeg-style domain randomisation), so that it reads any contrast.

The exported training labels keep every structure (`training_labels`: 1..6 the six ventricles as the segmenter
predicts them, 7.. every other FreeSurfer label); the network's targets are only the ventricle regions (nnU-Net's
region conversion ignores the rest). `RandomAppearance` runs first in nnU-Net's training pipeline, before its
spatial transform: with probability `probability` it replaces the case's T1 image by one painted from the label
map — a random intensity and texture per structure (left/right homologues alike, ventricles always CSF-like), the
head outside the brain (non-zero image, background label) in two random layers, then blur, a smooth bias field,
gamma and noise — and normalises it as `segment` and nnU-Net do (profile percentiles to [0, 1], z-score over the
image). Otherwise the real image passes unchanged. Either way the non-ventricle labels leave the segmentation.
"""

from __future__ import annotations

import numpy as np

from VentricleSynthLib.imaging.profile import Profile
from VentricleSynthLib.labels import CSF_LABEL, LABELS, label_name
from VentricleSynthLib.segmentation.decision import SEGMENTER_LABELS, to_segmenter_indices

# training label index -> FreeSurfer label: 0..6 as the segmenter predicts them, then every other structure
TRAINING_LABELS: tuple[int, ...] = SEGMENTER_LABELS + tuple(lab for lab in LABELS if lab not in SEGMENTER_LABELS)
FIRST_TISSUE = len(SEGMENTER_LABELS)  # indices from here on are not ventricles: cleared after the painting


def training_labels(label_map: np.ndarray) -> np.ndarray:
    """FreeSurfer numbers -> training indices (TRAINING_LABELS; unknown labels become background 0)."""
    return to_segmenter_indices(label_map, TRAINING_LABELS)


VENTRICLE_GROUP = 1  # the intensity group of every ventricle label (CSF in every contrast)


def _intensity_groups() -> np.ndarray:
    """Group id per training index: left/right homologues share one (their names differ only in the side);
    the ventricles share VENTRICLE_GROUP; background is group 0."""
    groups, names = np.zeros(len(TRAINING_LABELS), dtype=np.int64), {}
    for i, lab in enumerate(TRAINING_LABELS):
        if lab == 0:
            continue
        if 1 <= i < FIRST_TISSUE:
            groups[i] = VENTRICLE_GROUP
            continue
        key = label_name(lab).replace("Left-", "").replace("Right-", "")
        groups[i] = names.setdefault(key, len(names) + 2)
    return groups


GROUPS = _intensity_groups()
CSF_INDEX = TRAINING_LABELS.index(CSF_LABEL)
HEAD_LAYERS = 2  # the non-brain head (scalp, skull, eyes...) painted as two intensity layers of the real image
# Share of paintings in which fluid is brighter than every tissue, as in T2- and PD-weighted images. Uniform
# means alone made that ordering rare (about 1 in 6 paintings, those whose fluid mean happened to be the highest),
# and a fine-tune on them still took bright sulcal CSF beside small ventricles for ventricle (session 11: T2 Dice
# 0.70). Dark fluid needs no such share: 1 - probability of the samples are the real T1 images.
BRIGHT_FLUID = 0.35


class RandomAppearance:
    """A batchgeneratorsv2 transform (called with image= (C, X, Y, Z) float, segmentation= (1, X, Y, Z) int16)."""

    def __init__(self, probability: float, percentiles: tuple[float, float] = Profile.percentiles,
                 seed: int | None = None):
        self.probability = float(probability)
        self.percentiles = tuple(float(p) for p in percentiles)
        self.seed = seed
        self._rng, self._pid = None, None

    @property
    def rng(self) -> np.random.Generator:
        """Seeded once per process from (seed, process id): nnU-Net's augmentation workers each get a copy of the
        transform, and each must draw its own stream."""
        import os

        if self._rng is None or self._pid != os.getpid():
            self._pid = os.getpid()
            self._rng = np.random.default_rng(None if self.seed is None else (self.seed, self._pid))
        return self._rng

    def __call__(self, **data_dict) -> dict:
        import torch

        seg = data_dict["segmentation"]
        if self.rng.random() < self.probability:
            image = data_dict["image"]
            painted = self.paint(seg[0].numpy().astype(np.int64), image[0].numpy())
            data_dict["image"] = torch.from_numpy(painted[None].astype(np.float32)).expand_as(image).clone()
        cleared = seg.clone()
        cleared[cleared >= FIRST_TISSUE] = 0
        data_dict["segmentation"] = cleared
        return data_dict

    def paint(self, labels: np.ndarray, real: np.ndarray) -> np.ndarray:
        """An image of `labels` (training indices, -1 outside the case) in a random contrast, normalised."""
        from scipy import ndimage

        rng = self.rng
        n_groups = int(GROUPS.max()) + 1
        group_mean = rng.uniform(0.0, 1.0, n_groups)
        if rng.random() < BRIGHT_FLUID:
            top = rng.uniform(0.4, 0.85)
            group_mean = group_mean * top
            group_mean[VENTRICLE_GROUP] = rng.uniform(top + 0.05, 1.0)
        mean = group_mean[GROUPS] + rng.normal(0.0, 0.03, len(GROUPS))  # homologues alike, not identical
        if rng.random() < 0.7:  # sulcal CSF reads like the ventricles in most contrasts
            mean[CSF_INDEX] = group_mean[VENTRICLE_GROUP] + rng.normal(0.0, 0.03)
        std = rng.uniform(0.0, 0.06, len(GROUPS))
        head_mean, head_std = rng.uniform(0.0, 1.0, HEAD_LAYERS), rng.uniform(0.0, 0.08, HEAD_LAYERS)
        background = 0.0 if rng.random() < 0.6 else rng.uniform(0.0, 0.3)

        index = np.where(labels < 0, 0, labels)
        image = mean[index] + std[index] * rng.standard_normal(labels.shape)
        outside_brain = index == 0
        head = outside_brain & (real > np.percentile(real, 25) + 0.1 * np.ptp(real))
        if head.any():
            layer = (real > np.median(real[head])).astype(np.int64)
            image[head] = head_mean[layer[head]] + head_std[layer[head]] * rng.standard_normal(int(head.sum()))
        image[outside_brain & ~head] = background

        image = ndimage.gaussian_filter(image, rng.uniform(0.0, 1.0, 3))  # partial volume, resolution
        coarse = rng.normal(0.0, rng.uniform(0.0, 0.3), (4, 5, 4))
        zoom = [s / c for s, c in zip(image.shape, coarse.shape)]
        image = image * np.exp(ndimage.zoom(coarse, zoom, order=3)[tuple(slice(0, s) for s in image.shape)])
        image = np.clip(image, 0.0, None)
        image = (image / max(float(image.max()), 1e-6)) ** np.exp(rng.normal(0.0, 0.25))
        image = image + rng.normal(0.0, rng.uniform(0.0, 0.04), image.shape)
        lo, hi = np.percentile(image, self.percentiles)
        image = np.clip((image - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
        return (image - image.mean()) / max(float(image.std()), 1e-8)
