"""`python -m VentricleSynthLib …`: the command line (info, check, generate, segment, worker).

User errors (`VentricleSynthError`) print one `error: …` line on stderr and exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import sys

from VentricleSynthLib import __version__
from VentricleSynthLib.command_line import Parser, run_command
from VentricleSynthLib.errors import RequestError


def _cmd_info(args) -> int:
    import monai
    import nibabel
    import numpy
    import torch

    from VentricleSynthLib.bundles.store import BUNDLED, ENVIRONMENT_VARIABLE, describe, models_dir

    root = models_dir(args.models)
    if not root.is_dir():
        source = "--models" if args.models else ENVIRONMENT_VARIABLE if root != BUNDLED else "the bundled models"
        state = "is not a folder" if root.exists() else "does not exist"
        raise RequestError(f"models folder {root} ({source}) {state}")
    info = {
        "ventriclesynth": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "monai": monai.__version__,
        "nibabel": nibabel.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.cuda.is_available(),
        "models_dir": str(root),
        "models": describe(args.models),
    }
    print(json.dumps(info, indent=2))
    return 0


def _cmd_check(args) -> int:
    """Validate an image (and optionally its label map) and print its geometry, volumes and warnings."""
    from VentricleSynthLib.io.nifti import check_same_grid, load_image, load_label_map, orientation_warnings
    from VentricleSynthLib.labels import mapping_from_spec
    from VentricleSynthLib.volumes import volume_report

    image = load_image(args.image)
    mapping = mapping_from_spec(args.mapping)
    result = {
        "image": str(args.image),
        "shape": list(image.shape),
        "spacing_mm": [round(float(s), 4) for s in image.spacing],
        "orientation": image.axcodes,
        "intensity_range": [float(image.array.min()), float(image.array.max())],
    }
    warnings = orientation_warnings(image)
    if args.label:
        label = load_label_map(args.label, mapping=mapping)
        check_same_grid(image, label)
        result.update(volume_report(label.array, label.affine))
        warnings += _mapping_warnings(args.label, mapping)
    result["warnings"] = warnings
    print(json.dumps(result))
    return 0


def _mapping_warnings(path, mapping) -> list[str]:
    """A map read with a non-FreeSurfer --mapping that is also a valid FreeSurfer-numbered map is suspicious:
    every real CerebrA map holds numbers FreeSurfer lacks (left-hemisphere labels 52..102, 1, 6, 9, ...)."""
    from VentricleSynthLib.errors import VentricleSynthError
    from VentricleSynthLib.io.nifti import load_label_map

    if mapping is None:
        return []
    try:
        load_label_map(path)
    except VentricleSynthError:
        return []
    message = (f"every label number of {path} is a FreeSurfer/SynthSeg number: is it FreeSurfer-numbered? Read "
               f"through --mapping {mapping.name}, its volumes are likely wrong (for FreeSurfer numbers leave out "
               f"--mapping)")
    return [message]


# what `generate` prints of each sample's record (one JSON line)
SHOWN = ("asked_ml", "got_ml", "got_ml_before_refinement", "max_displacement_mm", "seed", "seconds", "warnings")
_COHORT_OPTIONS = ("distribution", "format", "shard", "batch_size", "qc_min_dice")


def _cmd_generate(args) -> int:
    if any(getattr(args, k) is not None for k in _COHORT_OPTIONS):
        return _generate_cohort(args)
    from VentricleSynthLib.bundles.store import IMAGE, MASK, bundle_path
    from VentricleSynthLib.cohorts.distributions import check_seed
    from VentricleSynthLib.command_line import print_warning
    from VentricleSynthLib.devices import resolve_device
    from VentricleSynthLib.generation.generators import ImageGenerator, MaskGenerator
    from VentricleSynthLib.generation.pairs import generate_pairs, settings_for
    from VentricleSynthLib.generation.sample_folder import check_samples_out, write_sample
    from VentricleSynthLib.io.atomic import writable_dir

    if args.ventricle_ml is None:
        raise RequestError("generate needs --ventricle-ml V (samples of one volume) or --distribution SPEC (a cohort)")
    args.count = 1 if args.count is None else args.count
    if args.count < 1:
        raise RequestError(f"--count must be >= 1, got {args.count}")
    check_seed(args.seed)
    check_seed(args.seed + args.count - 1, "--seed + --count - 1 (sample k uses seed + k)")
    resolve_device(args.device)  # before any model loads
    check_samples_out(args.out)
    mask = MaskGenerator(bundle_path(MASK, args.models), args.device)
    warnings = mask.check_volume(args.ventricle_ml)
    refine = False if args.no_refine else None
    mask.settings(args.guidance, args.steps, args.candidates, refine)  # a bad request fails before the image loads
    image = ImageGenerator(bundle_path(IMAGE, args.models), args.device)
    settings = settings_for(mask, image, args.guidance, args.steps, args.candidates, args.image_steps, refine)
    out = writable_dir(args.out)
    for warning in warnings:
        print_warning(warning)
    for k in range(args.count):
        pair = generate_pairs(mask, image, [args.ventricle_ml], [args.seed + k], settings)[0]
        folder = write_sample(out, k, pair.image, pair.label, pair.affine, pair.record)
        for warning in pair.record["warnings"][len(warnings):]:  # the refinement's
            print_warning(warning)
        print(json.dumps({"sample": str(folder), **{key: pair.record[key] for key in SHOWN}}), flush=True)
    return 0


def _generate_cohort(args) -> int:
    """`generate --distribution SPEC [--format nnunet] …`: a synthetic cohort (cohorts.synthesize)."""
    from VentricleSynthLib.cohorts.request import CohortRequest
    from VentricleSynthLib.cohorts.synthesize import synthesize

    if args.distribution is not None and args.ventricle_ml is not None:
        raise RequestError("give either --ventricle-ml (one volume) or --distribution (a cohort), not both")
    if args.distribution is None and args.ventricle_ml is None:
        raise RequestError("generate needs --ventricle-ml V or --distribution SPEC")
    spec = args.distribution if args.distribution is not None else f"list:{args.ventricle_ml!r}"
    count = args.count if args.count is not None or args.distribution is not None else 1
    result = synthesize(CohortRequest(
        out=args.out, distribution=spec, count=count, seed=args.seed, guidance=args.guidance, steps=args.steps,
        image_steps=args.image_steps, candidates=args.candidates, refine=False if args.no_refine else None,
        format=args.format or CohortRequest.format,
        shard=args.shard, batch_size=args.batch_size, qc_min_dice=args.qc_min_dice,
        device=args.device, models=args.models, progress=not args.no_progress),
        log=lambda line: print(line, flush=True))
    return 1 if result["failures"] else 0  # the summary line said how many; a rerun retries them


def _cmd_worker(args) -> int:
    from VentricleSynthLib.worker.server import run

    return run(args)


def _cmd_segment(args) -> int:
    from VentricleSynthLib.segmentation.files import segment_command

    return segment_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m VentricleSynthLib", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"ventriclesynth {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("info", help="bundled models, versions, verified checksums")
    p.set_defaults(func=_cmd_info)

    p.add_argument("--models", help="folder holding model bundles (default: bundled, or $VENTRICLESYNTH_MODELS)")

    p = sub.add_parser("generate", help="generate labelled synthetic MRI pairs with a requested ventricle volume, "
                                         "or a whole cohort (--distribution)")
    p.add_argument("--ventricle-ml", type=float, help="requested ventricular volume in mL")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the bundle's)")
    p.add_argument("--candidates", type=int, help="label maps denoised per sample; the one closest to the asked "
                                                  "volume is kept, among those with every main class and whole "
                                                  "ventricles (default: the bundle's)")
    p.add_argument("--no-refine", action="store_true", help="keep the sampled label map as it is (the paper's "
                   "method); by default a smooth flow moves it to exactly the asked ventricle volume")
    p.add_argument("--steps", type=int, help="DDIM steps per stage (default: the bundle's)")
    p.add_argument("--image-steps", type=int, help="DDIM steps of the image stage, over --steps (default: the "
                                                   "image bundle's)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the first sample; sample k uses seed+k (a cohort: the base seed, hashed with k)")
    p.add_argument("--count", type=int, help="number of samples (default 1; a cohort from a list: its length)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--out", required=True, help="output folder; samples go to OUT/sample_000, ...")
    p.add_argument("--models", help="folder holding model bundles (default: bundled, or $VENTRICLESYNTH_MODELS)")
    cohort = p.add_argument_group("synthetic cohorts (any of these makes a restartable cohort with QC and a report)")
    cohort.add_argument("--distribution", help="ventricle volumes: uniform[:LO-HI], buckets[:LO-HI], "
                                               "match:CASES.csv or list:V1,V2,... (mL)")
    cohort.add_argument("--format", choices=["samples", "nnunet"],
                        help="samples: OUT/sample_*/ (default); nnunet: an nnU-Net v2 raw dataset")
    cohort.add_argument("--shard", help="i/N: generate only this process's share (torchrun sets it by itself)")
    cohort.add_argument("--batch-size", type=int, help="samples per sampling batch (default 8 on CUDA, else 1)")
    cohort.add_argument("--qc-min-dice", type=float,
                        help="keep only samples whose label-fidelity Dice reaches this (0..1); others go to rejected/")
    cohort.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("segment", help="segment the ventricles of a brain MRI; print the volumes as one JSON line")
    p.add_argument("image", help="brain MRI (.nii/.nii.gz; T1, FLAIR, T2 or PD-weighted), any orientation and "
                                 "spacing, with or without skull")
    p.add_argument("--out", required=True, help="output label map (.nii.gz) on the input's own grid")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--tta", action="store_true", help="test-time mirroring (slower; off by default)")
    p.add_argument("--allow-thick-slices", action="store_true",
                   help="segment images with slices of 5 mm or more anyway (the JSON then carries a warning)")
    p.add_argument("--progress", action="store_true", help="PROGRESS stage=segment step=i/n lines on stderr")
    p.add_argument("--models", help="folder holding model bundles (default: bundled, or $VENTRICLESYNTH_MODELS)")
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser("check", help="validate an image (and label map); print geometry and volumes as JSON")
    p.add_argument("image")
    p.add_argument("--label", help="label map on the same grid (FreeSurfer/SynthSeg numbers by default)")
    p.add_argument("--mapping", default=None,
                   help="label convention of --label: freesurfer (default), cerebra, or a CSV with source,target")
    p.set_defaults(func=_cmd_check)

    from VentricleSynthLib.worker.server import add_arguments as add_worker_arguments

    p = sub.add_parser("worker", help="out-of-process worker for the Slicer module (PROGRESS/RESULT lines)")
    add_worker_arguments(p)
    p.set_defaults(func=_cmd_worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)
