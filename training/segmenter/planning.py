"""Planning and preprocessing of the segmenter's raw dataset with nnU-Net's own tools.

nnU-Net's fingerprint extractor, ExperimentPlanner and preprocessor. `plan: default` keeps nnU-Net's 3d_fullres
plan (GPU, `paper`); `plan: slim` rewrites the 3d_fullres network of that plan (fewer features and stages, patch
size from the config; kernel sizes and strides from nnU-Net's own `get_pool_and_conv_props`) under the plans name
`VentricleSynthPlans`. nnunetv2 is imported inside the functions, after `nnunet_env.setup`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from VentricleSynthLib.imaging.profile import Profile
from VentricleSynthLib.io.atomic import write_text

from training.segmenter import nnunet_env
from training.segmenter.raw_export import Case, splits
from training.stage_configs import SegmenterConfig

PLANS = "VentricleSynthPlans"
CONFIGURATION = "3d_fullres"


def _slim_configuration(plans: dict, settings: SegmenterConfig, profile: Profile) -> dict:
    """The 3d_fullres configuration with the config's network width/depth and patch size (nnU-Net axis order)."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    cfg = json.loads(json.dumps(plans["configurations"][CONFIGURATION]))
    patch_xyz = list(settings.patch_size or profile.shape)
    sitk_order = patch_xyz[::-1]
    patch = [int(sitk_order[i]) for i in plans["transpose_forward"]]
    net = settings.network
    max_stages = int(net["max_stages"])
    _, strides, kernels, patch, _ = get_pool_and_conv_props(cfg["spacing"], patch, 4, max_stages - 1)
    n = len(strides)
    arch = cfg["architecture"]["arch_kwargs"]
    arch.update({
        "n_stages": n,
        "features_per_stage": [min(int(net["base_features"]) * 2 ** i, int(net["max_features"])) for i in range(n)],
        "kernel_sizes": [list(k) for k in kernels],
        "strides": [list(s) for s in strides],
        "n_conv_per_stage": [int(net["convs_per_stage"])] * n,
        "n_conv_per_stage_decoder": [int(net["convs_per_stage"])] * (n - 1),
    })
    cfg["patch_size"] = [int(p) for p in patch]
    cfg["batch_size"] = int(settings.batch_size)
    return cfg


def _stamp(cases: list[Case], settings: SegmenterConfig, profile: Profile) -> str:
    key = {"cases": [(c.case_id, c.origin, c.split) for c in cases], "plan": settings.plan,
           "network": settings.network, "targets": settings.targets,
           "patch_size": settings.patch_size, "batch_size": settings.batch_size,
           "profile": [profile.spacing, profile.shape]}
    if settings.image_reader_writer is not None:  # absent otherwise: stamps written before it still hold
        key["image_reader_writer"] = settings.image_reader_writer
    if settings.appearance is not None:  # the label files then hold every structure
        key["all_structures"] = True
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=list).encode()).hexdigest()


def _preprocess(dataset_id: int, name: str, pre: Path, n: int) -> None:
    """nnU-Net's `preprocess_dataset` for our one configuration: its preprocessor, then the labels copied to
    `gt_segmentations` for nnU-Net's validation. (Its own copy imports distutils, which Python 3.12 dropped: only
    setuptools' shim would provide it on the GPU machine's Python 3.12.)"""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    configuration = PlansManager(str(pre / f"{PLANS}.json")).get_configuration(CONFIGURATION)
    preprocessor = configuration.preprocessor_class(verbose=False)
    preprocessor.show_progress_bar = False
    preprocessor.run(dataset_id, CONFIGURATION, PLANS, num_processes=n)
    raw = Path(os.environ["nnUNet_raw"]) / name
    dataset_json = json.loads((raw / "dataset.json").read_text())
    gt = pre / "gt_segmentations"
    gt.mkdir(exist_ok=True)
    for case, files in get_filenames_of_train_images_and_targets(str(raw), dataset_json).items():
        shutil.copyfile(files["label"], gt / f"{case}{dataset_json['file_ending']}")


def plan_and_preprocess(dataset_id: int, cases: list[Case], settings: SegmenterConfig, profile: Profile,
                        progress=print) -> dict:
    """Fingerprint, plan and preprocess (skipped when the same cases and settings were done before)."""
    from batchgenerators.utilities.file_and_folder_operations import save_json
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset,
                                                                      plan_experiment_dataset)
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    name = convert_id_to_dataset_name(dataset_id)
    pre = Path(os.environ["nnUNet_preprocessed"]) / name
    stamp_file = pre / "ventriclesynth_stamp.json"
    stamp = _stamp(cases, settings, profile)
    plans_file = pre / f"{PLANS}.json"
    done = stamp_file.is_file() and json.loads(stamp_file.read_text()).get("stamp") == stamp and plans_file.is_file()
    if not done:
        n = nnunet_env.num_processes()
        start = time.time()
        with nnunet_env.pools(n):
            progress(f"PROGRESS stage=segmenter-plan step=1/3 dataset={name}")
            # nnU-Net's integrity check wants every label value declared; with the random appearance the label
            # files also hold the non-ventricle structures, which no region (no output) names
            extract_fingerprint_dataset(dataset_id, num_processes=n,
                                        check_dataset_integrity=settings.appearance is None, clean=True,
                                        verbose=False, show_progress_bar=False)
            with nnunet_env.planner_threads():
                plan_experiment_dataset(dataset_id, overwrite_plans_name=PLANS)
            plans = json.loads(plans_file.read_text())
            if settings.plan == "slim":
                plans["configurations"] = {CONFIGURATION: _slim_configuration(plans, settings, profile)}
                plans_text = json.dumps(plans, indent=2)
                write_text(plans_file, plans_text)
            progress(f"PROGRESS stage=segmenter-plan step=2/3 dataset={name}")
            _preprocess(dataset_id, name, pre, n)
        progress(f"PROGRESS stage=segmenter-plan step=3/3 dataset={name} seconds={time.time() - start:.1f}")
        text = json.dumps({"stamp": stamp})
        write_text(stamp_file, text)
    save_json(splits(cases), str(pre / "splits_final.json"))
    return json.loads(plans_file.read_text())
