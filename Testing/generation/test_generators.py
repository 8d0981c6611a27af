"""Generators at the tiny profile: sampling, candidates, the CLI, bad requests, corrupted bundles and networks
(the training stages' own tests: Testing/training/generators/)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from testing_helpers import TRAIN_ENV

from VentricleSynthLib.bundles import format as bundles
from VentricleSynthLib.generation.generators import ImageGenerator, MaskGenerator
from VentricleSynthLib.generation.networks import mask_unet
from VentricleSynthLib.generation.pairs import generate_pair
from VentricleSynthLib.io.nifti import load_image, load_label_map
from VentricleSynthLib.labels import LABELS
from VentricleSynthLib.volumes import ventricle_volume_ml

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "VentricleSynthLib"]
ENV = TRAIN_ENV



def _run(args, **kw):
    return subprocess.run([*map(str, args)], capture_output=True, text=True, cwd=REPO, env=kw.pop("env", ENV), **kw)


def test_generate_pair_is_reproducible_and_recorded(trained):
    mask = MaskGenerator(trained / "bundles" / "mask_generator", "cpu")
    image = ImageGenerator(trained / "bundles" / "image_generator", "cpu")
    a = generate_pair(mask, image, 50.0, guidance=2.0, steps=3, seed=7)
    b = generate_pair(mask, image, 50.0, guidance=2.0, steps=3, seed=7)
    c = generate_pair(mask, image, 50.0, guidance=2.0, steps=3, seed=8)
    assert np.array_equal(a.label, b.label) and np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)
    assert a.label.shape == (40, 48, 40) and set(np.unique(a.label).tolist()) <= set(LABELS)
    assert 0.0 <= a.image.min() and a.image.max() <= 1.0
    assert a.record["asked_ml"] == 50.0
    assert a.record["got_ml"] == pytest.approx(ventricle_volume_ml(a.label, a.affine), abs=1e-3)
    assert a.record["models"]["mask"]["sha256"] and a.record["steps"] == {"mask": 3, "image": 3}


def test_candidates_keep_the_decoding_closest_to_the_asked_volume(trained):
    mask = MaskGenerator(trained / "bundles" / "mask_generator", "cpu")
    label, record = mask.sample_with_record(60.0, guidance=2.0, steps=3, seed=5, candidates=3)
    vols = record["candidates_ml"]
    assert record["candidates"] == 3 and len(vols) == 3 + record["redrawn"]
    complete, split = record["candidates_complete"], record["candidates_fragmented"]
    assert len(complete) == len(split) == len(vols)
    # rank: all main classes and ventricles whole first, then all main classes, then the volume
    rank = {i: (not complete[i] or split[i], not complete[i], abs(vols[i] - 60.0)) for i in range(len(vols))}
    assert record["chosen"] == min(rank, key=rank.get)
    assert ventricle_volume_ml(label, mask.affine) == pytest.approx(vols[record["chosen"]], abs=1e-3)
    again, record_again = mask.sample_with_record(60.0, guidance=2.0, steps=3, seed=5, candidates=3)
    assert np.array_equal(label, again) and record_again == record
    single, one = mask.sample_with_record(60.0, guidance=2.0, steps=3, seed=5, candidates=1)
    assert one["candidates"] == 1 and (one["chosen"] == 0 or one["redrawn"] > 0)
    # candidate i starts from the same noise, drawn in a batch of K or redrawn after K = 1
    n = min(len(vols), len(one["candidates_ml"]))
    assert one["candidates_ml"][:n] == pytest.approx(vols[:n], abs=0.5)
    for bad in (0, 17, 2.5):
        with pytest.raises(Exception, match="candidates"):
            mask.sample(60.0, steps=2, candidates=bad)


def test_a_seed_whose_candidates_are_all_fragmented_draws_its_next_ones(trained, monkeypatch):
    """Every label map counted as fragmented (rule at -1 pieces): MAX_REDRAWS more candidates are drawn, one at a
    time, from the seed's own noise: the same label maps as that seed's next candidates in one batch."""
    from VentricleSynthLib import volumes
    from VentricleSynthLib.generation.settings import MAX_REDRAWS

    mask = MaskGenerator(trained / "bundles" / "mask_generator", "cpu")
    _, batch = mask.sample_with_record(40.0, guidance=2.0, steps=3, seed=3, candidates=1 + MAX_REDRAWS)
    monkeypatch.setattr(volumes, "MAX_VENTRICLE_PIECES", -1)
    label, record = mask.sample_with_record(40.0, guidance=2.0, steps=3, seed=3, candidates=1)
    assert record["redrawn"] == MAX_REDRAWS and all(record["candidates_fragmented"])
    assert record["candidates_ml"] == pytest.approx(batch["candidates_ml"][:1 + MAX_REDRAWS], abs=0.5)
    assert ventricle_volume_ml(label, mask.affine) == pytest.approx(record["candidates_ml"][record["chosen"]])
    again, record_again = mask.sample_with_record(40.0, guidance=2.0, steps=3, seed=3, candidates=1)
    assert np.array_equal(label, again) and record_again == record
    monkeypatch.setattr(volumes, "MAX_VENTRICLE_PIECES", 10 ** 6)  # nothing fragmented: redrawn for a lost class only
    _, whole = mask.sample_with_record(40.0, guidance=2.0, steps=3, seed=3, candidates=1)
    assert not any(whole["candidates_fragmented"]) and (whole["redrawn"] == 0) == whole["candidates_complete"][0]


def test_a_volume_calibration_maps_the_asked_volume_to_its_condition(trained, tmp_path):
    """With a calibration table the model is conditioned on the table's condition for the asked volume: the
    same candidates as asking that condition without the table; the record keeps the condition."""
    from training.generators.calibration import store_volume_calibration

    folder = tmp_path / "mask_generator"
    shutil.copytree(trained / "bundles" / "mask_generator", folder)
    plain = MaskGenerator(folder, "cpu")
    assert plain.condition_ml(60.0) == 60.0
    store_volume_calibration(folder, {"asked_ml": [20.0, 60.0, 140.0], "condition_ml": [12.0, 40.0, 120.0]})
    bundles.verify(folder)
    calibrated = MaskGenerator(folder, "cpu")
    assert calibrated.condition_ml(60.0) == 40.0 and calibrated.condition_ml(100.0) == 80.0
    assert calibrated.condition_ml(500.0) == 120.0  # the table's end beyond it
    label, record = calibrated.sample_with_record(60.0, guidance=2.0, steps=3, seed=3, candidates=1)
    reference, asked_40 = plain.sample_with_record(40.0, guidance=2.0, steps=3, seed=3, candidates=1)
    # the same condition, the same candidates (which one is kept depends on the asked volume when none is eligible)
    assert record["condition_ml"] == 40.0 and record["candidates_ml"] == asked_40["candidates_ml"]
    assert record["redrawn"] > 0 or np.array_equal(label, reference)
    store_volume_calibration(folder, None)
    assert MaskGenerator(folder, "cpu").calibration is None


def test_cli_generate_writes_the_sample_layout(trained, tmp_path):
    out = tmp_path / "out"
    done = _run(CLI + ["generate", "--ventricle-ml", "40", "--steps", "2", "--count", "2", "--seed", "3",
                       "--models", str(trained / "bundles"), "--out", str(out)], timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["sample_000", "sample_001"]
    for k, folder in enumerate(sorted(out.iterdir())):
        assert {p.name for p in folder.iterdir()} == {"image.nii.gz", "label.nii.gz", "preview.png", "sample.json"}
        record = json.loads((folder / "sample.json").read_text())
        assert record["seed"] == 3 + k and record["asked_ml"] == 40.0 and record["guidance"] == 2.0
        label = load_label_map(folder / "label.nii.gz")
        image = load_image(folder / "image.nii.gz")
        assert np.allclose(label.affine, image.affine)
        assert record["got_ml"] == pytest.approx(ventricle_volume_ml(label.array, label.affine), abs=1e-2)
    assert len(done.stdout.strip().splitlines()) == 2


@pytest.mark.parametrize("args, message", [
    (["--ventricle-ml", "0"], "positive"),
    (["--ventricle-ml", "-5"], "positive"),
    (["--ventricle-ml", "5000"], "far outside the trained range"),
    (["--ventricle-ml", "40", "--steps", "0"], "steps"),
    (["--ventricle-ml", "40", "--guidance", "-1"], "guidance"),
    (["--ventricle-ml", "40", "--count", "0"], "count"),
    (["--ventricle-ml", "40", "--device", "cuda:7"], "device"),
])
def test_bad_requests_fail_cleanly_without_output(trained, tmp_path, args, message):
    if "cuda:7" in args and torch.cuda.device_count() > 7:
        pytest.skip("machine has that device")
    out = tmp_path / "never"
    done = _run(CLI + ["generate", *args, "--models", str(trained / "bundles"), "--out", str(out)], timeout=120)
    assert done.returncode != 0 and not out.exists()
    assert done.stderr.startswith("error:") and message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_corrupted_bundle_and_unwritable_out_are_refused(trained, tmp_path):
    broken = tmp_path / "models"
    shutil.copytree(trained / "bundles", broken)
    weights = broken / "mask_generator" / "unet.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    out = tmp_path / "out"
    done = _run(CLI + ["generate", "--ventricle-ml", "40", "--models", str(broken), "--out", str(out)], timeout=120)
    assert done.returncode != 0 and "checksum mismatch" in done.stderr and not out.exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    done = _run(CLI + ["generate", "--ventricle-ml", "40", "--steps", "1", "--models", str(trained / "bundles"),
                       "--out", str(blocker / "sub")], timeout=120)
    assert done.returncode != 0 and done.stderr.startswith("error: cannot write to --out")
    with pytest.raises(bundles.BundleError):
        MaskGenerator(broken / "mask_generator", "cpu")


def test_bundle_weights_are_half_precision_on_disk_and_float_when_loaded(tmp_path):
    from safetensors.torch import load_file

    module = torch.nn.Linear(4, 3)
    folder = bundles.save_bundle(tmp_path / "b", {"name": "x"}, {"net": module})
    assert load_file(str(folder / "net.safetensors"))["weight"].dtype == torch.float16
    loaded = bundles.load_weights(folder, "net")
    assert loaded["weight"].dtype == torch.float32
    assert torch.allclose(loaded["weight"], module.weight.detach(), atol=1e-3)
    (folder / "config.json").write_text("{}")
    with pytest.raises(bundles.BundleError, match="checksum"):
        bundles.verify(folder)


def _unet_with_random_output(arch: dict):
    torch.manual_seed(0)
    unet = mask_unet(arch, 3).eval()
    for p in unet.parameters():  # MONAI zero-initialises the output and each residual branch's last convolution
        if not p.any():
            torch.nn.init.normal_(p, std=0.1)
    return unet


def _predictions(arch: dict, unet=None) -> torch.Tensor:
    """The mask UNet's noise predictions for one latent under [v 0.2], [v 0.9] and the null token."""
    from VentricleSynthLib.generation.networks import condition, mask_unet_forward

    unet = unet or _unet_with_random_output(arch)
    z = torch.randn(1, 3, 8, 8, 8, generator=torch.Generator().manual_seed(1)).repeat(3, 1, 1, 1, 1)
    context = condition(torch.tensor([0.2, 0.9, 0.9]), keep=torch.tensor([True, True, False]))
    with torch.no_grad():
        return mask_unet_forward(unet, z, torch.tensor([500, 500, 500]), context, arch)


BASE_ARCH = {"channels": [8, 16, 16], "num_res_blocks": 1, "attention_levels": [False, False, False],
             "norm_num_groups": 8, "num_head_channels": 8}


def test_volume_channels_carry_the_condition_into_every_voxel():
    """`volume_channels: 2`: [v, flag] as constant input channels; the UNet's prediction changes with the asked
    volume and with the null token."""
    from VentricleSynthLib.generation.networks import condition, mask_unet_forward

    arch = {**BASE_ARCH, "volume_channels": 2}
    assert _unet_with_random_output(arch).conv_in.conv.in_channels == 5
    seen = []
    unet = _unet_with_random_output(arch)
    unet.conv_in.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    context = condition(torch.tensor([0.2, 0.9]), keep=torch.tensor([True, False]))
    with torch.no_grad():
        mask_unet_forward(unet, torch.zeros(2, 3, 4, 4, 4), torch.tensor([1, 1]), context, arch)
    x = seen[0]
    assert x.shape == (2, 5, 4, 4, 4) and torch.all(x[0, 3] == 0.2) and torch.all(x[0, 4] == 1)
    assert torch.all(x[1, 3:] == 0)
    out = _predictions(arch)
    assert (out[0] - out[1]).abs().mean() > 1e-4 and (out[1] - out[2]).abs().mean() > 1e-4
    with pytest.raises(ValueError, match="volume_channels"):
        mask_unet({**arch, "volume_channels": 1}, 3)


def test_volume_embedding_modulates_the_unet_through_the_time_embedding():
    """`volume_embedding: true`: the context [v, flag] is embedded (differently for each volume and for the null
    token) and the prediction depends on that embedding; its weights live under MONAI's class_embedding."""
    from VentricleSynthLib.generation.networks import VolumeEmbedding, condition

    arch = {**BASE_ARCH, "volume_embedding": True}
    unet = _unet_with_random_output(arch)
    assert isinstance(unet.class_embedding, VolumeEmbedding)
    assert any(k.startswith("class_embedding.") for k in unet.state_dict())
    embedded = unet.class_embedding(condition(torch.tensor([0.2, 0.9, 0.9]), keep=torch.tensor([True, True, False])))
    assert embedded.shape == (3, 32)
    assert (embedded[0] - embedded[1]).abs().max() > 0 and (embedded[1] - embedded[2]).abs().max() > 0
    with_embedding = _predictions(arch, unet)
    torch.nn.init.zeros_(unet.class_embedding.net[-1].weight)
    torch.nn.init.zeros_(unet.class_embedding.net[-1].bias)
    assert (with_embedding - _predictions(arch, unet)).abs().mean() > 1e-4


def test_one_brain_keeps_the_largest_piece_and_its_labels():
    from scipy import ndimage

    from VentricleSynthLib.generation.generators import one_brain

    label = np.zeros((20, 20, 20), np.int16)
    label[2:12, 2:12, 2:12] = 2
    label[5:8, 5:8, 5:8] = 4  # inside the brain: kept
    label[15:17, 15:17, 15:17] = 41  # a stray island: removed
    label[0, 19, 0] = 17  # touching only by a corner is another piece: removed
    out = one_brain(label)
    assert ndimage.label(out > 0)[1] == 1 and out.dtype == label.dtype
    assert np.array_equal(out[:13, :13, :13], label[:13, :13, :13]) and not np.any(out == 41) and not np.any(out == 17)
    assert np.array_equal(one_brain(out), out) and not np.any(one_brain(np.zeros_like(label)))
