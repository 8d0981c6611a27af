"""The profile round trip (acceptance test): input geometry -> profile grid -> back onto the input grid.

The acceptance test puts a labelled object on an LPS, oblique (20 degrees), anisotropic
(0.9 x 1.2 x 3 mm) grid, sends image + label map to a 2 mm RAS profile grid with
`imaging.profile.to_profile`, brings the label map back with `imaging.profile.to_input_grid`, and requires
every blob to come back within one voxel of where it was.
"""

from __future__ import annotations

import numpy as np
import pytest
from testing_helpers import voxel_world

from VentricleSynthLib.errors import GeometryMismatchError
from VentricleSynthLib.imaging.profile import Preprocessed, Profile, to_input_grid, to_profile
from VentricleSynthLib.io.nifti import Volume
from VentricleSynthLib.metrics import dice
from VentricleSynthLib.volumes import ventricle_volume_ml

SRC_SHAPE = (60, 48, 18)
SRC_SPACING = (0.9, 1.2, 3.0)
CENTRE = np.array([10.0, -15.0, 20.0])
# label -> (world centre offset from CENTRE in mm, radius mm); 2 is the large "brain" blob
BLOBS = {
    2: ((0.0, 0.0, 0.0), 22.0),
    4: ((-9.0, 3.0, 2.0), 5.0),  # left lateral ventricle: x < centre (RAS: left is -x)
    43: ((9.0, 3.0, 2.0), 5.0),  # right lateral ventricle
    14: ((0.0, -8.0, -6.0), 5.0),
    15: ((0.0, -12.0, 10.0), 5.0),
}
PROFILE = Profile("test", (2.0, 2.0, 2.0), (40, 40, 40))


def world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    idx = np.argwhere(mask).astype(float)
    assert len(idx), "empty mask"
    return affine[:3, :3] @ idx.mean(axis=0) + affine[:3, 3]


def synthetic_head(affine: np.ndarray, shape=SRC_SHAPE):
    """(image Volume, label Volume) with the BLOBS drawn in world space on the given grid."""
    world = voxel_world(shape, affine)
    label = np.zeros(shape, np.int16)
    for lab, (offset, radius) in BLOBS.items():
        centre = CENTRE + np.asarray(offset)
        label[((world - centre[:, None, None, None]) ** 2).sum(axis=0) < radius**2] = lab
    rng = np.random.default_rng(1)
    image = np.where(label > 0, 100.0, 10.0) - 60.0 * np.isin(label, (4, 43, 14, 15))
    image = (image + rng.normal(0, 3, shape)).astype(np.float32)
    return Volume(image, affine), Volume(label, affine)


GEOMETRIES = {
    "LPS-oblique-x": dict(rotation_deg=20.0, axis="x", lps=True),
    "LPS-oblique-y": dict(rotation_deg=-20.0, axis="y", lps=True),
    "LPS-oblique-z": dict(rotation_deg=20.0, axis="z", lps=True),
    "RAS-oblique-z": dict(rotation_deg=25.0, axis="z", lps=False),
}


@pytest.fixture(params=list(GEOMETRIES), ids=list(GEOMETRIES))
def oblique_head(request, make_affine):
    affine = make_affine(SRC_SPACING, shape=SRC_SHAPE, centre=CENTRE, **GEOMETRIES[request.param])
    image, label = synthetic_head(affine)
    # the input really is what the test claims
    np.testing.assert_allclose(image.spacing, SRC_SPACING)
    assert np.count_nonzero(np.abs(affine[:3, :3]) > 1e-6) > 3  # oblique
    assert image.axcodes == ("LPS" if GEOMETRIES[request.param]["lps"] else "RAS")
    for lab in BLOBS:
        assert (label.array == lab).sum() > 100
    return image, label


def _max_source_voxel_displacement(d_world: np.ndarray, affine: np.ndarray) -> float:
    """A world displacement expressed in source voxels (largest component along the source axes)."""
    return float(np.abs(np.linalg.solve(affine[:3, :3], d_world)).max())


# --- acceptance: input grid -> profile grid -> input grid --------------------------------------------

def test_profile_round_trip_keeps_blobs_within_one_voxel(oblique_head):
    image, label = oblique_head
    pre = to_profile(PROFILE, image=image, label=label)
    assert isinstance(pre, Preprocessed)

    # the profile grid: RAS, axis-aligned, profile spacing and shape, arrays on it
    assert pre.label.shape == PROFILE.shape and pre.image.shape == PROFILE.shape
    np.testing.assert_allclose(pre.grid.affine[:3, :3], np.diag(PROFILE.spacing))
    assert pre.source.shape == SRC_SHAPE
    np.testing.assert_allclose(pre.source.affine, label.affine)
    assert set(np.unique(pre.label).tolist()) == {0, *BLOBS}
    assert pre.image.dtype == np.float32 and pre.image.min() >= 0 and pre.image.max() <= 1

    # on the profile grid each blob sits where it was in the world (within one profile voxel)
    for lab in BLOBS:
        c_src = world_centroid(label.array == lab, label.affine)
        c_prof = world_centroid(pre.label == lab, pre.grid.affine)
        assert np.linalg.norm(c_prof - c_src) <= min(PROFILE.spacing), (lab, c_src, c_prof)
    # left stays left in RAS: the right lateral ventricle has the larger i index
    i_left = np.argwhere(pre.label == 4)[:, 0].mean()
    i_right = np.argwhere(pre.label == 43)[:, 0].mean()
    assert i_right > i_left + 5
    # the image went along: ventricles dark, brain bright, background dark on the profile grid
    assert pre.image[pre.label == 2].mean() > 0.8
    assert pre.image[np.isin(pre.label, (4, 43))].mean() < 0.55
    assert pre.image[pre.label == 0].mean() < 0.2
    # the object's volume is kept (large blob to within 5 %)
    v_src = (label.array > 0).sum() * np.prod(SRC_SPACING)
    v_prof = (pre.label > 0).sum() * np.prod(PROFILE.spacing)
    assert v_prof == pytest.approx(v_src, rel=0.05)

    # back onto the input's own grid
    back = to_input_grid(pre.label, pre.grid, pre.source)
    assert back.shape == label.shape
    assert back.dtype.kind in "iu"
    assert set(np.unique(back).tolist()) <= {0, *BLOBS}
    for lab in BLOBS:
        c_src = world_centroid(label.array == lab, label.affine)
        c_back = world_centroid(back == lab, label.affine)
        d = c_back - c_src
        # <= 1 voxel: along every source axis, and in mm against the finest source spacing
        assert _max_source_voxel_displacement(d, label.affine) <= 1.0, (lab, d)
        assert np.linalg.norm(d) <= min(SRC_SPACING), (lab, d)
        assert dice(back == lab, label.array == lab) > 0.75, lab
    assert dice(back == 2, label.array == 2) > 0.93
    assert dice(back > 0, label.array > 0) > 0.95
    # and the ventricle volume reported on the input grid is close to the original
    v0 = ventricle_volume_ml(label.array, label.affine)
    assert ventricle_volume_ml(back, label.affine) == pytest.approx(v0, rel=0.15)


def test_image_only_round_trip_segments_back_onto_input(oblique_head):
    """The segmenter's path: image only -> profile grid -> (a 'segmentation' there) -> input grid."""
    image, label = oblique_head
    pre = to_profile(PROFILE, image=image)
    assert pre.label is None
    seg = (pre.image > 0.5).astype(np.int16) * 2  # bright = brain tissue (ventricles are dark)
    back = to_input_grid(seg, pre.grid, pre.source)
    assert back.shape == SRC_SHAPE
    truth = label.array == 2
    assert dice(back == 2, truth) > 0.9
    d = world_centroid(back == 2, image.affine) - world_centroid(truth, image.affine)
    assert _max_source_voxel_displacement(d, image.affine) <= 1.0


def test_to_profile_refuses_mismatched_grids_and_nothing(make_affine):
    image, label = synthetic_head(make_affine(SRC_SPACING, shape=SRC_SHAPE, centre=CENTRE))
    shifted = Volume(label.array, label.affine + np.array([[0, 0, 0, 5.0]] * 3 + [[0, 0, 0, 0]]))
    with pytest.raises(GeometryMismatchError):
        to_profile(PROFILE, image=image, label=shifted)
    with pytest.raises(ValueError):
        to_profile(PROFILE)


def test_profile_from_dict():
    p = Profile.from_dict("cpu", {"spacing": 2, "shape": [80, 96, 80]})
    assert p.spacing == (2.0, 2.0, 2.0) and p.shape == (80, 96, 80) and p.percentiles == (0.5, 99.5)
    p = Profile.from_dict("paper", {"spacing": [1.667, 1.75, 1.667], "shape": [96, 128, 96],
                                    "percentiles": [1, 99]})
    assert p.spacing == (1.667, 1.75, 1.667) and p.percentiles == (1.0, 99.0)


# --- resample -----------------------------------------------------------------------------------------
