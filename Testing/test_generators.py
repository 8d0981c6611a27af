"""Generators at the tiny profile, end to end: training stages, bundles, sampling, CLI, resume, DDP."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from VentricleSynthLib.bundles import format as bundles
from VentricleSynthLib.generation.generators import ImageGenerator, MaskGenerator, generate_pair
from VentricleSynthLib.labels import LABELS
from VentricleSynthLib.generation.networks import image_autoencoder, image_unet, mask_autoencoder, mask_unet, parameter_count
from VentricleSynthLib.io.nifti import load_image, load_label_map
from VentricleSynthLib.volumes import ventricle_volume_ml

REPO = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, str(REPO / "training" / "train.py")]
CLI = [sys.executable, "-m", "VentricleSynthLib"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "nnUNet_n_proc_DA": "0"}


def _run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=kw.pop("env", ENV), **kw)


def _tiny_config(tmp: Path, **train_overrides) -> Path:
    """A copy of the tiny config with some stage's train settings changed (stage -> dict)."""
    config = yaml.safe_load((REPO / "training" / "configs" / "tiny.yaml").read_text())
    config["data"]["natural"]["count"] = 8
    config["data"]["enlarged"]["count"] = 0
    config["data"]["uniform"]["count"] = 6
    for stage, values in train_overrides.items():
        config["generators"][stage]["train"].update(values)
    path = tmp / "tiny_test.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Data + all four stages at a reduced tiny profile: WORK folder with bundles."""
    work = tmp_path_factory.mktemp("gen")
    config = _tiny_config(work)
    for stage in ("data", "mask-ae", "mask-ldm", "image-ae", "image-ldm"):
        done = _run(TRAIN + [stage, "--config", str(config), "--work", str(work)], timeout=600)
        assert done.returncode == 0, f"{stage}: {done.stderr[-2000:]}"
    return work


def test_stages_export_verified_bundles_with_provenance(trained):
    for name in ("mask_generator", "image_generator"):
        folder = trained / "bundles" / name
        manifest = bundles.verify(folder)
        assert {"config.json", "autoencoder.safetensors", "unet.safetensors", "card.md"} <= set(manifest["files"])
        config = bundles.read_config(folder)
        assert config["profile"]["name"] == "tiny" and config["labels"]["freesurfer"] == list(LABELS)
        assert config["provenance"]["data"]["cases"] > 0 and config["scale_factor"] > 0
    norm = bundles.read_config(trained / "bundles" / "mask_generator")["volume_normalisation"]
    assert 0 < norm["min_ml"] < norm["max_ml"]
    # losses were logged and plotted
    assert (trained / "mask-ldm" / "loss_curves.png").is_file()
    lines = (trained / "mask-ldm" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 30


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
    assert record["candidates"] == 3 and len(vols) == 3
    complete = record["candidates_complete"]
    assert len(complete) == 3
    eligible = [i for i in range(3) if complete[i]] or [0, 1, 2]
    assert record["chosen"] == min(eligible, key=lambda i: abs(vols[i] - 60.0))
    assert ventricle_volume_ml(label, mask.affine) == pytest.approx(vols[record["chosen"]], abs=1e-3)
    again, record_again = mask.sample_with_record(60.0, guidance=2.0, steps=3, seed=5, candidates=3)
    assert np.array_equal(label, again) and record_again == record
    single, one = mask.sample_with_record(60.0, guidance=2.0, steps=3, seed=5, candidates=1)
    assert one["candidates"] == 1 and one["chosen"] == 0
    # candidate 0 starts from the same noise as the K = 1 sample
    assert one["candidates_ml"][0] == pytest.approx(vols[0], abs=0.5)
    for bad in (0, 17, 2.5):
        with pytest.raises(Exception, match="candidates"):
            mask.sample(60.0, steps=2, candidates=bad)


def test_calibrate_writes_curve_statistics_and_cards(trained, tmp_path):
    import shutil as sh

    from training.generators import calibration as calibrate
    from training.config import load_config

    models = tmp_path / "models"
    sh.copytree(trained / "bundles", models)
    work = tmp_path / "work"
    result = calibrate.run(load_config(str(_tiny_config(tmp_path))), work, models=models, asked=(30, 90),
                           seeds=(0, 1), image_samples=2, command="pytest", progress=lambda *_: None)
    assert (work / "calibration" / "volume_control.png").stat().st_size > 1000
    stats = result["volume_control"]
    assert result["default"] in stats and all(s["samples"] == 4 for s in stats.values())
    assert {s["candidates"] for s in stats.values()} >= {1}
    row = result["rows"][0]
    assert row["got_ml"] == pytest.approx(min(row["candidates_ml"], key=lambda v: abs(v - row["asked_ml"])), abs=1e-3)
    card = (models / "mask_generator" / "card.md").read_text()
    assert "## Volume control (measured)" in card and "`pytest`" in card and "volume_control.png" in card
    assert "## Image realism (measured)" in (models / "image_generator" / "card.md").read_text()
    for name in ("mask_generator", "image_generator"):
        bundles.verify(models / name)  # manifests refreshed after the cards changed


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


def _weights(folder: Path, name: str = "autoencoder"):
    from safetensors.torch import load_file

    return load_file(str(folder / f"{name}.safetensors"))


def test_resume_continues_exactly(tmp_path, trained):
    """10 steps + resume to 20 gives the same weights as 20 straight steps (same RNG streams)."""
    straight, split, cfg_dir20, cfg_dir10 = (tmp_path / n for n in ("straight", "split", "cfg20", "cfg10"))
    for folder in (straight, split, cfg_dir20, cfg_dir10):
        folder.mkdir()
    for work in (straight, split):
        (work / "data").symlink_to(trained / "data", target_is_directory=True)
    cfg20 = _tiny_config(cfg_dir20, mask_autoencoder={"steps": 20, "checkpoint_every": 10})
    cfg10 = _tiny_config(cfg_dir10, mask_autoencoder={"steps": 10, "checkpoint_every": 10})
    assert _run(TRAIN + ["mask-ae", "--config", str(cfg20), "--work", str(straight)], timeout=300).returncode == 0
    assert _run(TRAIN + ["mask-ae", "--config", str(cfg10), "--work", str(split)], timeout=300).returncode == 0
    again = _run(TRAIN + ["mask-ae", "--config", str(cfg20), "--work", str(split)], timeout=300)
    assert again.returncode != 0 and "--resume" in again.stderr  # never silently overwrites a run
    assert _run(TRAIN + ["mask-ae", "--config", str(cfg20), "--work", str(split), "--resume"],
                timeout=300).returncode == 0
    a, b = _weights(straight / "mask-ae"), _weights(split / "mask-ae")
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (split / "mask-ae" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 20


def test_sigkill_mid_run_then_resume_reaches_the_same_step_count(tmp_path, trained):
    work = tmp_path / "w"
    work.mkdir()
    (work / "data").symlink_to(trained / "data", target_is_directory=True)
    cfg = _tiny_config(tmp_path, mask_autoencoder={"steps": 400, "checkpoint_every": 5})
    proc = subprocess.Popen(TRAIN + ["mask-ae", "--config", str(cfg), "--work", str(work)], cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = work / "mask-ae" / "checkpoint.pt"
    deadline = time.time() + 240
    while not checkpoint.exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(checkpoint, weights_only=False)["step"]
    assert 5 <= killed_at < 400
    done = _run(TRAIN + ["mask-ae", "--config", str(cfg), "--work", str(work), "--resume"], timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.load(checkpoint, weights_only=False)["step"] == 400
    assert json.loads((work / "mask-ae" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 400


def test_ddp_two_processes_gloo(tmp_path, trained):
    work = tmp_path / "ddp"
    work.mkdir()
    (work / "data").symlink_to(trained / "data", target_is_directory=True)
    cfg = _tiny_config(tmp_path, mask_autoencoder={"steps": 6, "checkpoint_every": 3})
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29731"]
    done = _run(torchrun + [str(REPO / "training" / "train.py"), "mask-ae", "--config", str(cfg), "--work", str(work)],
                timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.load(work / "mask-ae" / "checkpoint.pt", weights_only=False)["step"] == 6
    assert (work / "mask-ae" / "autoencoder.safetensors").is_file()


def test_paper_config_builds_the_authors_architecture_sizes():
    """Instantiated on the meta device: sizes are checked without allocating any weights."""
    config = yaml.safe_load((REPO / "training" / "configs" / "paper.yaml").read_text())
    gen = config["generators"]
    assert config["profile"]["shape"] == [96, 128, 96] and config["profile"]["spacing"] == [1.667, 1.75, 1.667]
    with torch.device("meta"):
        mask_ae = mask_autoencoder({**gen["mask_autoencoder"]["arch"], "latent_channels": gen["latent_channels"]})
        m_unet = mask_unet(gen["mask_ldm"]["arch"], gen["latent_channels"])
        img_ae = image_autoencoder({**gen["image_autoencoder"]["arch"],
                                    "latent_channels": gen["image_autoencoder"]["latent_channels"]})
        i_unet = image_unet(gen["image_ldm"]["arch"], gen["image_autoencoder"]["latent_channels"])
    assert next(m_unet.parameters()).is_meta
    assert tuple(mask_ae.encoder.channels) == (64, 128, 128) and mask_ae.encoder.num_res_blocks == (2, 2, 2)
    assert tuple(m_unet.block_out_channels) == (256, 512, 768) and m_unet.with_conditioning
    assert tuple(img_ae.encoder.channels) == (64, 128, 128) and img_ae.quant_conv_mu.conv.out_channels == 6
    assert tuple(i_unet.block_out_channels) == (128, 256, 512) and i_unet.label_nc == len(LABELS)
    # parameter counts (measured once from these configs; a changed architecture changes them)
    assert parameter_count(mask_ae) == 9_449_864
    assert parameter_count(m_unet) == 553_112_579
    assert parameter_count(img_ae) == 20_019_909
    assert parameter_count(i_unet) == 224_322_310


def test_volume_channels_carry_the_condition_into_every_voxel():
    """`volume_channels: 2`: [v, flag] as constant input channels; the null token gives zeros; the UNet's
    prediction changes with the asked volume (it would not if the channels were dropped)."""
    from VentricleSynthLib.generation.networks import condition, mask_unet_input

    torch.manual_seed(0)
    arch = {"channels": [8, 16, 16], "num_res_blocks": 1, "attention_levels": [False, False, True],
            "norm_num_groups": 8, "num_head_channels": 8, "volume_channels": 2}
    unet = mask_unet(arch, 3).eval()
    for p in unet.out.parameters():  # MONAI zero-initialises the output convolution
        torch.nn.init.normal_(p, std=0.1)
    assert unet.conv_in.conv.in_channels == 5
    z = torch.randn(1, 3, 8, 8, 8).repeat(3, 1, 1, 1, 1)
    context = condition(torch.tensor([0.2, 0.9, 0.9]), keep=torch.tensor([True, True, False]))
    x = mask_unet_input(z, context, arch)
    assert x.shape == (3, 5, 8, 8, 8)
    assert torch.all(x[0, 3] == 0.2) and torch.all(x[1, 3] == 0.9) and torch.all(x[:2, 4] == 1)
    assert torch.all(x[2, 3:] == 0)
    assert torch.equal(mask_unet_input(z, context, {**arch, "volume_channels": 0}), z)
    with torch.no_grad():
        out = unet(x, torch.tensor([500, 500, 500]), context=context)
    assert (out[0] - out[1]).abs().mean() > 1e-4 and (out[1] - out[2]).abs().mean() > 1e-4
    with pytest.raises(ValueError, match="volume_channels"):
        mask_unet({**arch, "volume_channels": 1}, 3)


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
