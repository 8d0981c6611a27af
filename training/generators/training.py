"""Stages `mask-ae`, `mask-ldm`, `image-ae`, `image-ldm`: train both latent diffusion models.

Each stage trains in WORK/<stage>/ through `trainer.Run` (checkpoints, resume, EMA, DDP); the two
LDM stages then export a verified model bundle to WORK/bundles/{mask,image}_generator/.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, PatchAdversarialLoss
from monai.networks.nets import PatchDiscriminator
from safetensors.torch import load_file, save_file

from VentricleSynthLib.bundles import format as bundles
from VentricleSynthLib.labels import LABELS, NUM_CLASSES, SCHEMA
from VentricleSynthLib.generation.networks import (condition, ddpm, image_autoencoder, image_unet, mask_autoencoder, mask_unet,
                                        mask_unet_input)

from training.provenance import git_commit
from training.data.cases import Cases, load_cases, random_patch
from training.loop import Run, TrainingError, init_distributed, is_main, seed_all, training_device, wrap_ddp

BUNDLE_VERSION = "0.1.0"
MASK_TITLE = "Mask generator: volume-conditioned label-map latent diffusion model (classifier-free guidance)"
IMAGE_TITLE = "Image generator: SPADE latent diffusion model, label map -> T1-like MRI"


def _kl(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2) + 1e-8) - 1)
    return kl.sum(dim=list(range(1, kl.ndim))).mean()


def _one_hot_t(indices: np.ndarray, device) -> torch.Tensor:
    idx = torch.from_numpy(indices.astype(np.int64)).to(device)
    return F.one_hot(idx, NUM_CLASSES).movedim(-1, 1).float()


def _gen_config(config: dict) -> dict:
    if "generators" not in config:
        raise TrainingError(f"config {config['path']} has no 'generators' section")
    return config["generators"]


def _cases(config: dict, work: Path) -> Cases:
    return load_cases(work / "data", _gen_config(config)["datasets"], splits=("train",))


def _save_modules(folder: Path, modules: dict[str, torch.nn.Module]) -> None:
    for name, module in modules.items():
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(folder / f"{name}.safetensors"))


def _load_module(module: torch.nn.Module, folder: Path, name: str, stage: str) -> torch.nn.Module:
    path = folder / f"{name}.safetensors"
    if not path.is_file():
        raise TrainingError(f"{path} is missing: run the `{stage}` stage first")
    module.load_state_dict(load_file(str(path)))
    return module


def _autocast(device: torch.device, train: dict):
    """bf16 autocast on CUDA when the config asks for AMP (no loss scaling needed); a no-op on CPU."""
    enabled = bool(train.get("amp")) and device.type == "cuda"
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled)


def _perceptual(train: dict, device):
    """LPIPS-style perceptual loss, only from a local weights file (nothing is downloaded)."""
    path = train.get("perceptual_weights")
    if not path:
        return None
    from monai.losses import PerceptualLoss

    if not Path(path).is_file():
        raise TrainingError(f"perceptual_weights {path} does not exist")
    return PerceptualLoss(spatial_dims=3, network_type="squeeze", is_fake_3d=True, fake_3d_ratio=0.2,
                          pretrained=True, pretrained_path=str(path)).to(device)


def _ema(module: torch.nn.Module, decay: float | None):
    if not decay:
        return None
    return torch.optim.swa_utils.AveragedModel(
        module, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay))


# ----------------------------------------------------------------------------------------------
# autoencoders

def train_mask_autoencoder(config: dict, work: Path, resume: bool = False) -> dict:
    gen = _gen_config(config)
    spec, train = gen["mask_autoencoder"], gen["mask_autoencoder"]["train"]
    init_distributed()
    device = training_device()
    seed_all(int(config["data"].get("seed", 0)))
    cases = _cases(config, work)
    arch = {**spec["arch"], "latent_channels": spec.get("latent_channels", gen["latent_channels"])}
    model = mask_autoencoder(arch).to(device)
    ddp = wrap_ddp(model)
    opt = torch.optim.Adam(model.parameters(), lr=float(train["lr"]))
    seg_loss = DiceCELoss(softmax=True, include_background=True)
    patch = tuple(train["patch"])

    def step(_, rng):
        picks = rng.integers(0, len(cases), int(train["batch_size"]))
        window = random_patch(cases.indices.shape[1:], patch, rng)
        target = _one_hot_t(np.stack([cases.indices[i][window] for i in picks]), device)
        with _autocast(device, train):
            logits, z_mu, z_sigma = ddp(target)
        loss_seg = seg_loss(logits.float(), target)
        loss_kl = _kl(z_mu.float(), z_sigma.float())
        loss = loss_seg + float(train["kl_weight"]) * loss_kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"dice_ce": loss_seg.item(), "kl": loss_kl.item()}

    folder = work / "mask-ae"
    run = Run(folder, {"autoencoder": model}, {"adam": opt}, step, int(train["steps"]),
              int(train["checkpoint_every"]), int(config["data"].get("seed", 0)))
    summary = run.run(resume)
    if is_main():
        _save_modules(folder, {"autoencoder": model})
        (folder / "arch.json").write_text(json.dumps(arch))
    return summary


def train_image_autoencoder(config: dict, work: Path, resume: bool = False) -> dict:
    gen = _gen_config(config)
    spec, train = gen["image_autoencoder"], gen["image_autoencoder"]["train"]
    init_distributed()
    device = training_device()
    seed_all(int(config["data"].get("seed", 0)))
    cases = _cases(config, work)
    arch = {**spec["arch"], "latent_channels": spec.get("latent_channels", gen["latent_channels"])}
    model = image_autoencoder(arch).to(device)
    disc = PatchDiscriminator(spatial_dims=3, channels=int(train.get("disc_channels", 16)), in_channels=1,
                              num_layers_d=3).to(device)
    ddp, ddp_disc = wrap_ddp(model), wrap_ddp(disc)
    opt_g = torch.optim.Adam(model.parameters(), lr=float(train["lr"]))
    opt_d = torch.optim.Adam(disc.parameters(), lr=float(train["lr"]))
    adversarial = PatchAdversarialLoss(criterion="least_squares")
    patch = tuple(train["patch"])
    adv_weight, adv_start = float(train.get("adv_weight", 0.0)), int(train.get("adv_start", 0))
    perceptual = _perceptual(train, device)

    def step(i, rng):
        picks = rng.integers(0, len(cases), int(train["batch_size"]))
        window = random_patch(cases.images.shape[1:], patch, rng)
        x = torch.from_numpy(np.stack([cases.images[j][window] for j in picks]))[:, None].to(device)
        seg = _one_hot_t(np.stack([cases.indices[j][window] for j in picks]), device)
        with _autocast(device, train):
            recon, z_mu, z_sigma = ddp(x, seg)
        recon = recon.float()
        loss_l1 = F.l1_loss(recon, x)
        loss_kl = _kl(z_mu.float(), z_sigma.float())
        loss = loss_l1 + float(train["kl_weight"]) * loss_kl
        losses = {"l1": loss_l1.item(), "kl": loss_kl.item()}
        if perceptual is not None:
            loss_p = perceptual(recon, x)
            loss = loss + float(train.get("perceptual_weight", 1e-3)) * loss_p
            losses["perceptual"] = loss_p.item()
        use_adv = adv_weight > 0 and i >= adv_start
        if use_adv:
            loss_g = adversarial(ddp_disc(recon)[-1], target_is_real=True, for_discriminator=False)
            loss = loss + adv_weight * loss_g
            losses["gen_adv"] = loss_g.item()
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        if use_adv:
            loss_d = 0.5 * (adversarial(ddp_disc(recon.detach())[-1], target_is_real=False, for_discriminator=True)
                            + adversarial(ddp_disc(x)[-1], target_is_real=True, for_discriminator=True))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            losses["disc"] = loss_d.item()
        return losses

    folder = work / "image-ae"
    run = Run(folder, {"autoencoder": model, "discriminator": disc}, {"adam_g": opt_g, "adam_d": opt_d}, step,
              int(train["steps"]), int(train["checkpoint_every"]), int(config["data"].get("seed", 0)) + 1)
    summary = run.run(resume)
    if is_main():
        _save_modules(folder, {"autoencoder": model})
        (folder / "arch.json").write_text(json.dumps(arch))
    return summary


# ----------------------------------------------------------------------------------------------
# latent diffusion models

@torch.no_grad()
def _encode_all(encode, cases: Cases, device, batch: int = 2) -> torch.Tensor:
    latents = []
    for start in range(0, len(cases), batch):
        sl = slice(start, start + batch)
        latents.append(encode(sl).cpu())
    return torch.cat(latents)


def _cached(path: Path, inputs: list[Path], cases: Cases, compute):
    """compute() -> tensors, reused from `path` while the input files and the case list are unchanged
    (encoding and decoding the whole cohort takes minutes on CPU; a resumed run need not repeat it)."""
    import hashlib

    digest = hashlib.sha256()
    for file in inputs:
        digest.update(Path(file).read_bytes())
    digest.update("\n".join(cases.names).encode())
    key = digest.hexdigest()
    if path.is_file():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if stored.get("key") == key:
            return tuple(stored["tensors"])
    tensors = compute()
    if is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"key": key, "tensors": list(tensors)}, tmp)
        os.replace(tmp, path)
    return tensors


def _standardise(latents: torch.Tensor) -> tuple[torch.Tensor, list[float], float]:
    """Per-channel mean removed, then one global scale (1/std). Diffusion from pure noise cannot recover a
    large per-channel offset of the latents (measured: the first mask LDM produced 170-380 mL whatever was
    asked), so the offset is stored in the bundle and added back after sampling."""
    shift = latents.mean(dim=(0, *range(2, latents.ndim)))
    centred = latents - shift.reshape(1, -1, *([1] * (latents.ndim - 2)))
    scale = float(1.0 / centred.std())
    return centred * scale, [float(v) for v in shift], scale


@torch.no_grad()
def _decoded_ventricle_ml(autoencoder, latents: torch.Tensor, cases: Cases, device) -> np.ndarray:
    from VentricleSynthLib.labels import VENTRICLE_LABELS, to_indices
    from VentricleSynthLib.volumes import voxel_volume_ml

    vent_idx = torch.from_numpy(to_indices(np.asarray(VENTRICLE_LABELS)).astype(np.int64))
    out = []
    for z in latents:
        classes = autoencoder.decode(z[None].to(device)).argmax(dim=1).cpu()
        out.append(float(torch.isin(classes, vent_idx).sum()))
    return np.asarray(out, np.float32) * voxel_volume_ml(cases.affine)


def _diffusion_step(unet_call, latents: torch.Tensor, scheduler, picks, device, train: dict) -> torch.Tensor:
    """Noise-prediction MSE at random timesteps (DDPM training objective)."""
    z0 = latents[picks].to(device)
    noise = torch.randn_like(z0)
    t = torch.randint(0, scheduler.num_train_timesteps, (z0.shape[0],), device=device).long()
    noisy = scheduler.add_noise(original_samples=z0, noise=noise, timesteps=t)
    with _autocast(device, train):
        prediction = unet_call(noisy, t, picks)
    return F.mse_loss(prediction.float(), noise)


def _bundle_config(name: str, config: dict, arch: dict, gen: dict, scale_factor: float, shift: list[float],
                   latent_shape, cases: Cases, stage_seconds: dict, extra: dict) -> dict:
    profile = config["profile_obj"]
    return {
        "name": name,
        "version": BUNDLE_VERSION,
        "architecture": arch,
        "scheduler": gen["scheduler"],
        "scale_factor": scale_factor,
        "latent_shift": shift,
        "latent_shape": list(latent_shape),
        "profile": {"name": profile.name, "spacing": list(profile.spacing), "shape": list(profile.shape)},
        "affine": np.asarray(cases.affine).tolist(),
        "labels": {"freesurfer": list(LABELS), "names": [SCHEMA[v][0] for v in LABELS]},
        "provenance": {
            "data": {"datasets": gen["datasets"], "cases": len(cases), "config": Path(config["path"]).name},
            "steps": stage_seconds,
            "git_commit": git_commit(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        **extra,
    }


def write_card(folder: Path, title: str) -> None:
    """card.md from the bundle's own config: what it is, data, training; the calibrate stage adds the
    measured sections."""
    config = bundles.read_config(folder)
    prov = config["provenance"]
    steps = "; ".join(f"`{stage}` {v.get('steps')} steps, {v.get('seconds', 0) / 60:.0f} min"
                      for stage, v in prov["steps"].items())
    profile = config["profile"]
    lines = [
        f"# {title}", "",
        f"- Profile `{profile['name']}`: {profile['spacing']} mm, shape {profile['shape']}; latent "
        f"{config['latent_shape']} (scale {config['scale_factor']:.4f}, per-channel shift stored).",
        f"- Architecture (MONAI): `{json.dumps(config['architecture'])}`.",
        f"- Scheduler: `{json.dumps(config['scheduler'])}`; "
        f"sampling defaults `{json.dumps(config.get('sampling', {}))}`.",
        f"- Data: {prov['data']['cases']} training cases of {', '.join(prov['data']['datasets'])} "
        f"(config `{prov['data']['config']}`), the offline template cohort.",
        f"- Training on the CPU (2 cores, 1 thread per stage): {steps}. Git commit `{prov.get('git_commit')}`.",
        f"- Reproduce: `python training/train.py data --config {profile['name']} --work W`, then the stages above "
        f"with the same config, then `python training/train.py calibrate --config {profile['name']} --work W`.",
    ]
    if "volume_normalisation" in config:
        norm = config["volume_normalisation"]
        lines.append(f"- Volume condition: {norm['quantity']}, min–max normalised over "
                     f"{norm['min_ml']:.1f}–{norm['max_ml']:.1f} mL (the trained range).")
    (folder / "card.md").write_text("\n".join(lines) + "\n")
    bundles.write_manifest(folder)


def train_mask_ldm(config: dict, work: Path, resume: bool = False) -> dict:
    gen = _gen_config(config)
    train = gen["mask_ldm"]["train"]
    init_distributed()
    device = training_device()
    seed_all(int(config["data"].get("seed", 0)))
    cases = _cases(config, work)
    ae_folder = work / "mask-ae"
    ae_arch = json.loads((ae_folder / "arch.json").read_text()) if (ae_folder / "arch.json").is_file() else None
    if ae_arch is None:
        raise TrainingError(f"{ae_folder} has no trained autoencoder: run the `mask-ae` stage first")
    autoencoder = _load_module(mask_autoencoder(ae_arch), ae_folder, "autoencoder", "mask-ae").to(device).eval()
    def encode_and_measure():
        latents = _encode_all(lambda sl: autoencoder.encode(_one_hot_t(cases.indices[sl], device))[0], cases, device)
        # Condition on the ventricle volume of each latent's *decoding*, not of the original label map: the
        # autoencoder's systematic volume bias then never reaches the user (asked mL = decoded mL).
        return latents, torch.from_numpy(_decoded_ventricle_ml(autoencoder, latents, cases, device))

    latents, decoded_ml = _cached(work / "mask-ldm" / "latents_cache.pt", [ae_folder / "autoencoder.safetensors"],
                                  cases, encode_and_measure)
    decoded_ml = decoded_ml.numpy()
    true_span = float(np.ptp(cases.ventricle_ml))
    if np.ptp(decoded_ml) >= 0.5 * true_span:
        condition_ml, quantity = decoded_ml, "ventricle_ml of the autoencoder's decoding of each case"
    else:  # an autoencoder too poor to reproduce the ventricles (e.g. the tiny test profile)
        condition_ml, quantity = cases.ventricle_ml, "ventricle_ml of the label maps (decodings too poor to use)"
    latents, shift, scale_factor = _standardise(latents)
    v_min, v_max = float(condition_ml.min()), float(condition_ml.max())
    v_norm = torch.from_numpy((condition_ml - v_min) / max(v_max - v_min, 1e-6))
    unet_arch = gen["mask_ldm"]["arch"]
    unet = mask_unet(unet_arch, ae_arch["latent_channels"]).to(device)
    ddp = wrap_ddp(unet)
    opt = torch.optim.Adam(unet.parameters(), lr=float(train["lr"]))
    ema = _ema(unet, train.get("ema_decay"))
    scheduler = ddpm(gen["scheduler"])
    drop = float(train.get("cond_drop", 0.2))

    def unet_call(noisy, t, picks):
        keep = torch.rand(len(picks), device=device) >= drop
        context = condition(v_norm[picks].to(device), keep=keep)
        return ddp(mask_unet_input(noisy, context, unet_arch), t, context=context)

    def step(_, rng):
        picks = torch.from_numpy(rng.integers(0, len(cases), int(train["batch_size"])))
        loss = _diffusion_step(unet_call, latents, scheduler, picks, device, train)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"mse": loss.item()}

    folder = work / "mask-ldm"
    run = Run(folder, {"unet": unet}, {"adam": opt}, step, int(train["steps"]), int(train["checkpoint_every"]),
              int(config["data"].get("seed", 0)) + 2, ema={"unet": ema} if ema else {})
    summary = run.run(resume)
    if is_main():
        final = ema.module if ema else unet
        arch = {"autoencoder": ae_arch, "unet": gen["mask_ldm"]["arch"]}
        bundle_config = _bundle_config(
            "mask_generator", config, arch, gen, scale_factor, shift, latents.shape[1:], cases,
            {"mask-ae": _stage_steps(work / "mask-ae"), "mask-ldm": _stage_steps(folder)},
            {"volume_normalisation": {"min_ml": v_min, "max_ml": v_max, "quantity": quantity,
                                      "decoded_minus_true_ml_mean": float(np.mean(decoded_ml - cases.ventricle_ml))},
             "conditioning": {"context": "[volume_norm, flag]",
                              "input_channels": "[volume_norm, flag]" if unet_arch.get("volume_channels") else "none",
                              "null_token": [0.0, 0.0], "drop_probability": drop},
             "sampling": gen["mask_ldm"].get("sampling", {"guidance": 4.0, "steps": 50})})
        out = bundles.save_bundle(work / "bundles" / "mask_generator", bundle_config,
                                  {"autoencoder": autoencoder, "unet": final})
        write_card(out, MASK_TITLE)
        summary["bundle"] = str(out)
    return summary


def train_image_ldm(config: dict, work: Path, resume: bool = False) -> dict:
    gen = _gen_config(config)
    train = gen["image_ldm"]["train"]
    init_distributed()
    device = training_device()
    seed_all(int(config["data"].get("seed", 0)))
    cases = _cases(config, work)
    ae_folder = work / "image-ae"
    if not (ae_folder / "arch.json").is_file():
        raise TrainingError(f"{ae_folder} has no trained autoencoder: run the `image-ae` stage first")
    ae_arch = json.loads((ae_folder / "arch.json").read_text())
    autoencoder = _load_module(image_autoencoder(ae_arch), ae_folder, "autoencoder", "image-ae").to(device).eval()

    def encode(sl):
        x = torch.from_numpy(cases.images[sl])[:, None].to(device)
        return autoencoder.encode(x)[0]

    latents = _encode_all(encode, cases, device)
    latents, shift, scale_factor = _standardise(latents)
    unet = image_unet(gen["image_ldm"]["arch"], ae_arch["latent_channels"]).to(device)
    ddp = wrap_ddp(unet)
    opt = torch.optim.Adam(unet.parameters(), lr=float(train["lr"]))
    ema = _ema(unet, train.get("ema_decay"))
    scheduler = ddpm(gen["scheduler"])

    def unet_call(noisy, t, picks):
        return ddp(noisy, t, seg=_one_hot_t(cases.indices[picks.numpy()], device))

    def step(_, rng):
        picks = torch.from_numpy(rng.integers(0, len(cases), int(train["batch_size"])))
        loss = _diffusion_step(unet_call, latents, scheduler, picks, device, train)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"mse": loss.item()}

    folder = work / "image-ldm"
    run = Run(folder, {"unet": unet}, {"adam": opt}, step, int(train["steps"]), int(train["checkpoint_every"]),
              int(config["data"].get("seed", 0)) + 3, ema={"unet": ema} if ema else {})
    summary = run.run(resume)
    if is_main():
        final = ema.module if ema else unet
        arch = {"autoencoder": ae_arch, "unet": gen["image_ldm"]["arch"]}
        bundle_config = _bundle_config(
            "image_generator", config, arch, gen, scale_factor, shift, latents.shape[1:], cases,
            {"image-ae": _stage_steps(ae_folder), "image-ldm": _stage_steps(folder)},
            {"sampling": gen["image_ldm"].get("sampling", {"steps": 50})})
        out = bundles.save_bundle(work / "bundles" / "image_generator", bundle_config,
                                  {"autoencoder": autoencoder, "unet": final})
        write_card(out, IMAGE_TITLE)
        summary["bundle"] = str(out)
    return summary


def _stage_steps(folder: Path) -> dict:
    """Steps and training seconds (summed over resumes) of a finished stage, from its metrics."""
    from training.loop import read_metrics

    records = read_metrics(folder)
    return {"steps": records[-1]["step"], "seconds": records[-1]["seconds"]} if records else {}
