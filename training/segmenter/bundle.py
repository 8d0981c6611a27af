"""The segmenter's model bundle: WORK/bundles/segmenter/ (or an experiment arm's) from nnU-Net's trained fold.

nnU-Net's results layout (plans.json, dataset.json, fold_N/checkpoint_final.pth holding the network weights only,
in float16, trainer_name `nnUNetTrainer` so stock `nnUNetv2_predict` can use it too), config.json (profile, label
table, provenance), card.md with the measured metrics, and manifest.json (sha256).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from VentricleSynthLib.bundles import format as bundles
from VentricleSynthLib.bundles.store import SEGMENTER
from VentricleSynthLib.imaging.profile import Profile
from VentricleSynthLib.io.atomic import write_json
from VentricleSynthLib.labels import label_name
from VentricleSynthLib.segmentation.decision import SEGMENTER_LABELS

from training.cards import segmenter_card, write_card
from training.loop import TrainingError
from training.provenance import git_commit
from training.segmenter.planning import CONFIGURATION, PLANS
from training.stage_configs import SegmenterConfig

EXPORT_TRAINER = "nnUNetTrainer"
BUNDLE_VERSION = "0.1.0"


def export_bundle(trained: Path, out: Path, settings: SegmenterConfig, profile: Profile, provenance: dict,
                  decision: dict | None = None) -> Path:
    """nnU-Net results layout + config.json + manifest.json, assembled in a staging folder and swapped in."""
    import torch

    fold = settings.fold
    checkpoint_file = trained / f"fold_{fold}" / "checkpoint_final.pth"
    if not checkpoint_file.is_file():
        raise TrainingError(f"{checkpoint_file} is missing: training did not finish (run the stage with --resume)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        dataset = trained.parent.name
        rel = Path("nnUNet_results") / dataset / f"{EXPORT_TRAINER}__{PLANS}__{CONFIGURATION}"
        model = staging / rel
        (model / f"fold_{fold}").mkdir(parents=True)
        for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
            shutil.copyfile(trained / name, model / name)
        full = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
        init_args = {k: full["init_args"][k] for k in ("plans", "configuration", "fold", "dataset_json")}
        slim = {
            # float16 on disk halves the bundle; load_state_dict copies them back into the float32 network
            "network_weights": _half_state(full["network_weights"]),
            "init_args": init_args,
            "trainer_name": EXPORT_TRAINER,
            "inference_allowed_mirroring_axes": tuple(int(a) for a in full["inference_allowed_mirroring_axes"])
            if full.get("inference_allowed_mirroring_axes") is not None else None,
            "current_epoch": int(full["current_epoch"]),
        }
        torch.save(slim, model / f"fold_{fold}" / "checkpoint_final.pth")
        n_params = _parameter_count(slim["network_weights"])
        import nnunetv2  # noqa: F401  (version for provenance)
        from importlib.metadata import version

        config = {
            "name": SEGMENTER,
            "version": BUNDLE_VERSION,
            "kind": "nnunetv2",
            "profile": {"name": profile.name, "spacing": list(profile.spacing), "shape": list(profile.shape),
                        "percentiles": list(profile.percentiles)},
            "labels": {str(i): int(lab) for i, lab in enumerate(SEGMENTER_LABELS)},
            "label_names": {str(i): ("background" if lab == 0 else label_name(lab))
                            for i, lab in enumerate(SEGMENTER_LABELS)},
            "nnunet": {"model_folder": str(rel), "folds": [fold], "checkpoint": "checkpoint_final.pth",
                       "configuration": CONFIGURATION, "plans": PLANS,
                       "trainer_trained_with": trained.name.split("__")[0],
                       "nnunetv2_version": version("nnunetv2"), "parameters": n_params, "plan": settings.plan,
                       "targets": settings.targets},
            "training": {**provenance, "schedule": settings.trainer, "git_commit": git_commit()},
        }
        if decision:
            config["decision"] = decision
        write_json(staging / bundles.CONFIG, config)
        write_card(staging, segmenter_card(config, provenance.get("metrics", {})))
        bundles.swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _storage_key(tensor) -> tuple:
    """What makes two state-dict entries the same tensor: storage, offset and shape."""
    return tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape)


def _half_state(state: dict) -> dict:
    """float16 copies of a state dict's tensors that keep its sharing.

    nnU-Net's state dict names each encoder weight four times (`encoder.` and `decoder.encoder.`, each as
    `.conv` and `.all_modules.0`), all one storage; converting entry by entry would store every copy.
    """
    out, seen = {}, {}
    for key, value in state.items():
        shared = _storage_key(value)
        if shared not in seen:
            v = value.detach().cpu().contiguous()
            seen[shared] = v.half() if v.is_floating_point() else v
        out[key] = seen[shared]
    return out


def _parameter_count(state: dict) -> int:
    """Distinct parameters in a state dict whose entries may share storage (see `_half_state`)."""
    return int(sum({_storage_key(v): v.numel() for v in state.values()}.values()))
