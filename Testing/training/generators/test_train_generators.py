"""The generator training stages at a reduced tiny profile: the exported bundles and their provenance, the
calibrate stage's cards, exact resume, a SIGKILLed run resumed, DDP, and the paper config's architecture sizes."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from testing_helpers import TRAIN, TRAIN_ENV, tiny_generator_config

from VentricleSynthLib.bundles import format as bundles
from VentricleSynthLib.generation.networks import (
    image_autoencoder,
    image_unet,
    mask_autoencoder,
    mask_unet,
    parameter_count,
)
from VentricleSynthLib.generation.refinement import MAX_DISPLACEMENT_MM
from VentricleSynthLib.labels import LABELS

REPO = Path(__file__).resolve().parents[3]
ENV = TRAIN_ENV



def _run(args, **kw):
    return subprocess.run([*map(str, args)], capture_output=True, text=True, cwd=REPO, env=kw.pop("env", ENV), **kw)


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


def test_calibrate_writes_curve_statistics_and_cards(trained, tmp_path):
    import shutil as sh

    from training.generators import calibration as calibrate

    models = tmp_path / "models"
    sh.copytree(trained / "bundles", models)
    work = tmp_path / "work"
    result = calibrate.run(work, models=models, asked=(30, 90), seeds=(0, 1), image_samples=2, command="pytest",
                           progress=lambda *_: None, fit_seeds=(100,), fit_points=4)
    assert (work / "calibration" / "volume_control.png").stat().st_size > 1000
    stats = result["volume_control"]
    assert result["default"] in stats and all(s["samples"] == 4 for s in stats.values())
    assert {s["candidates"] for s in stats.values()} >= {1}
    row = result["rows"][0]
    eligible = [v for v, ok in zip(row["candidates_ml"], row["candidates_eligible"]) if ok] or row["candidates_ml"]
    assert row["got_ml"] == pytest.approx(min(eligible, key=lambda v: abs(v - row["asked_ml"])), abs=1e-3)
    card = (models / "mask_generator" / "card.md").read_text()
    stored = bundles.read_config(models / "mask_generator").get("volume_calibration")
    assert stored == result["volume_calibration"]  # fitted into the bundle (None: the tiny model's volumes are flat)
    assert ("Volume calibration (asked → condition" in card) == (stored is not None)
    bundles.verify(models / "mask_generator")  # the manifest follows the config
    assert "## Volume control (measured)" in card and "`pytest`" in card and "volume_control.png" in card
    assert "refined: Spearman" in card and all(
        0 <= s["max_displacement_mm_max"] <= MAX_DISPLACEMENT_MM for s in stats.values())
    assert all(abs(r["refined_ml"] - r["asked_ml"]) <= abs(r["got_ml"] - r["asked_ml"]) + 1e-6 or r["got_ml"] == 0
               for r in result["rows"])  # refinement never moves away from the asked volume
    assert "## Image realism (measured)" in (models / "image_generator" / "card.md").read_text()
    for name in ("mask_generator", "image_generator"):
        bundles.verify(models / name)  # manifests refreshed after the cards changed


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
    cfg20 = tiny_generator_config(cfg_dir20, mask_autoencoder={"steps": 20, "checkpoint_every": 10})
    cfg10 = tiny_generator_config(cfg_dir10, mask_autoencoder={"steps": 10, "checkpoint_every": 10})
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
    cfg = tiny_generator_config(tmp_path, mask_autoencoder={"steps": 400, "checkpoint_every": 5})
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
    cfg = tiny_generator_config(tmp_path, mask_autoencoder={"steps": 6, "checkpoint_every": 3})
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


