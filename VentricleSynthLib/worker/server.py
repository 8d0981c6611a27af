"""`python -m VentricleSynthLib worker …`: the out-of-process entry the Slicer module runs.

    worker generate --ventricle-ml V [--guidance W] [--steps N] [--image-steps N] [--seed S] [--count K]
                    [--no-refine] [--device D] [--models DIR] --out DIR [--threads T] [--watch-stdin]
        -> OUT/sample_000/{image.nii.gz,label.nii.gz,preview.png,sample.json}, ...
    worker segment --input IMAGE.nii.gz --out DIR [--device D] [--models DIR] [--tta] [--allow-thick-slices]
                   [--threads T] [--watch-stdin]
        -> OUT/segmentation.nii.gz (input's own grid, schema ventricle labels) + OUT/segmentation.json
    worker info [--models DIR]
        -> one RESULT line describing the model bundles (checksums verified)

Output follows `worker.protocol`: a `WORKER` line, a `PLAN` line, one `PROGRESS` line per denoising
step, one `RESULT` JSON line per produced item naming its files (absolute paths), `error:` lines on
stderr. Exit codes: 0 ok, 1 internal error (traceback in the log), 2 bad input/request (one `error:`
line), 3 out of memory (with a hint), 130 cancelled (SIGINT, SIGTERM, `cancel` on stdin, or stdin
closed with --watch-stdin, i.e. the parent went away). Outputs appear atomically: a sample folder or
a segmentation file is either complete or absent.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from VentricleSynthLib import __version__
from VentricleSynthLib.command_line import Parser, print_error, print_warning
from VentricleSynthLib.errors import RequestError, VentricleSynthError
from VentricleSynthLib.worker.protocol import (
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_OUT_OF_MEMORY,
    EXIT_USER_ERROR,
    OUT_OF_MEMORY_HINT,
    format_plan,
    format_progress,
    format_result,
    format_started,
)

SEGMENTATION_FILE = "segmentation.nii.gz"
SEGMENTATION_REPORT = "segmentation.json"


class Cancelled(BaseException):
    """Raised in the main thread by SIGINT/SIGTERM or the stdin watcher; never caught by `except Exception`."""


# ------------------------------------------------------------------------------------- output lines
def emit(line: str) -> None:
    print(line, flush=True)


# ---------------------------------------------------------------------------------------- arguments
def _common(p: argparse.ArgumentParser, device: bool = True) -> None:
    if device:
        p.add_argument("--device", default="auto", help="auto (cuda -> mps -> cpu), cpu, cuda, cuda:N or mps")
        p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's own)")
    p.add_argument("--models", default=None,
                   help="folder holding the model bundles (default: $VENTRICLESYNTH_MODELS, else the bundled ones)")
    p.add_argument("--watch-stdin", action="store_true",
                   help="cancel (exit 130) when stdin closes or reads a line 'cancel' (set by the Slicer module)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the worker's sub-commands on `parser` (used by `cli.py` and by `main` below)."""
    sub = parser.add_subparsers(dest="worker_command", required=True, metavar="{generate,segment,info}",
                                parser_class=type(parser))
    p = sub.add_parser("generate", help="generate labelled synthetic MRI pairs with a requested ventricle volume")
    p.add_argument("--ventricle-ml", type=float, required=True, help="requested ventricular volume in mL")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: bundle's)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps per stage (default: each bundle's)")
    p.add_argument("--image-steps", type=int, default=None, help="DDIM steps of the image stage, over --steps")
    p.add_argument("--seed", type=int, default=0, help="seed of the first sample; sample k uses seed+k")
    p.add_argument("--count", type=int, default=1, help="number of samples")
    p.add_argument("--no-refine", action="store_true",
                   help="keep the sampled label map as it is (no exact-volume refinement; the paper's method)")
    p.add_argument("--out", required=True, help="output folder; samples go to OUT/sample_000, ...")
    _common(p)
    p = sub.add_parser("segment", help="segment the ventricles of a NIfTI image (nnU-Net segmenter)")
    p.add_argument("--input", required=True, help="input image (.nii or .nii.gz)")
    p.add_argument("--out", required=True,
                   help=f"output folder; writes OUT/{SEGMENTATION_FILE} and OUT/{SEGMENTATION_REPORT}")
    p.add_argument("--tta", action="store_true", help="test-time mirroring (slower, slightly more accurate)")
    p.add_argument("--allow-thick-slices", action="store_true",
                   help="segment images with slices >= 5 mm anyway (the volume is then unreliable)")
    _common(p)
    p = sub.add_parser("info", help="model bundles (checksums verified), versions and devices as one RESULT line")
    _common(p, device=False)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m VentricleSynthLib worker", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return parser


# ------------------------------------------------------------------------------------ cancellation
_REQUESTS = [0]  # cancel requests of this run


def _raise_cancelled(signum, _frame):
    """Raise Cancelled, but not for the second request: the Logic sends 'cancel' on stdin and SIGTERM, and the
    second must not interrupt the cleanup the first started (a third, e.g. Ctrl+C again, still does)."""
    _REQUESTS[0] += 1
    if _REQUESTS[0] == 2:
        return
    raise Cancelled(signal.Signals(signum).name)


def _install_signal_handlers() -> dict:
    _REQUESTS[0] = 0
    previous = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    for name in ("SIGINT", "SIGTERM", "SIGBREAK"):
        sig = getattr(signal, name, None)
        if sig is None:
            continue
        try:
            previous[sig] = signal.signal(sig, _raise_cancelled)
        except (OSError, ValueError):
            pass
    return previous


def _restore_signal_handlers(previous: dict) -> None:
    for sig, handler in previous.items():
        try:
            signal.signal(sig, handler)
        except (OSError, ValueError, TypeError):
            pass


def _watch_stdin() -> None:
    """Cancel when the parent closes our stdin (it died) or writes a line 'cancel' (a graceful stop
    that also works on Windows, where there is no SIGTERM)."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):
        return

    def watch():
        buffered = b""
        while True:
            try:
                data = os.read(fd, 4096)
            except OSError:
                data = b""
            if not data:
                break
            buffered = (buffered + data)[-4096:]
            if b"cancel" in buffered.lower():
                break
        import _thread

        _thread.interrupt_main()  # -> SIGINT handler in the main thread -> Cancelled

    threading.Thread(target=watch, name="ventriclesynth-stdin-watch", daemon=True).start()


# --------------------------------------------------------------------------------------- helpers
def _set_threads(threads: int | None) -> None:
    if threads is None:
        return
    if threads < 1:
        raise RequestError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(int(threads))


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None) if torch else None
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                              or "not enough memory" in text)


INSTALL_HINT = "in Slicer: VentricleSynth > Models > Install dependencies, which installs the tested versions"


def _blamed_package(exc: ImportError) -> str | None:
    """The top-level package an ImportError comes from: the module it names, else the innermost frame outside
    the standard library; None when that is this library (a bug)."""
    stdlib = getattr(sys, "stdlib_module_names", frozenset())
    names, tb = [exc.name or ""], exc.__traceback__
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame.f_globals.get("__name__") or "")
        tb = tb.tb_next
    for name in names + frames[::-1]:
        top = name.split(".")[0]
        if top and top not in stdlib and not top.startswith("_"):
            return None if top == __package__.split(".")[0] else top
    return None


def _import_failed(exc: ImportError) -> int:
    """A missing or stale third-party package: one `error:` line saying what to do (exit 2), no traceback."""
    package = _blamed_package(exc)
    if package is None:
        traceback.print_exc()
        print_error(f"internal error: {exc.__class__.__name__}: {exc} (a bug; please report it with the log)")
        return EXIT_FAILED
    from importlib import metadata

    try:
        distribution = (metadata.packages_distributions().get(package) or [package])[0]
        installed = f"{package} {metadata.version(distribution)}"
    except Exception:  # noqa: BLE001 - no metadata: name the package alone
        distribution, installed = package, package
    if isinstance(exc, ModuleNotFoundError) and exc.name == package:
        print_error(f"the Python package {package!r} is missing: install the requirements ({INSTALL_HINT})")
    else:
        print_error(f"the installed {installed} is incompatible ({exc}); update it: {INSTALL_HINT}; "
                    f"elsewhere: pip install --upgrade {distribution}")
    return EXIT_USER_ERROR


# --------------------------------------------------------------------------------------- commands
def _generate(args) -> int:
    from VentricleSynthLib.cohorts.distributions import check_seed
    from VentricleSynthLib.devices import resolve_device
    from VentricleSynthLib.generation.sample_folder import check_samples_out

    if args.count < 1:
        raise RequestError(f"--count must be >= 1, got {args.count}")
    check_seed(args.seed)
    check_seed(args.seed + args.count - 1, "--seed + --count - 1 (sample k uses seed + k)")
    resolve_device(args.device)
    check_samples_out(args.out)
    _set_threads(args.threads)
    emit("loading the generators ...")
    from VentricleSynthLib.bundles.store import IMAGE, MASK, bundle_path
    from VentricleSynthLib.generation.generators import ImageGenerator, MaskGenerator
    from VentricleSynthLib.generation.pairs import generate_pairs, settings_for
    from VentricleSynthLib.generation.refinement import RECORD_FIELDS
    from VentricleSynthLib.generation.sample_folder import write_sample
    from VentricleSynthLib.io.atomic import writable_dir

    mask = MaskGenerator(bundle_path(MASK, args.models), args.device)
    warnings = mask.check_volume(args.ventricle_ml)
    refine = False if args.no_refine else None
    mask.settings(args.guidance, args.steps, refine=refine)  # a bad request fails before the image model loads
    image = ImageGenerator(bundle_path(IMAGE, args.models), args.device)
    settings = settings_for(mask, image, args.guidance, args.steps, image_steps=args.image_steps, refine=refine)
    guidance, mask_steps, image_steps = settings.guidance, settings.mask_steps, settings.image_steps
    out = writable_dir(args.out)
    for warning in warnings:
        print_warning(warning)
    if mask.device.type == "cpu":
        print_warning("running on the CPU: slower than a GPU; the progress line shows the time left")
    emit(f"device {mask.device}; ventricle volume {args.ventricle_ml:g} mL; guidance {guidance:g}; "
         f"steps {mask_steps}+{image_steps}; {args.count} sample(s)")
    emit(format_plan([("mask", mask_steps), ("image", image_steps)], args.count))
    for k in range(args.count):
        def progress(stage, i, n, _k=k):
            emit(format_progress(stage, i, n, _k + 1, args.count))

        pair = generate_pairs(mask, image, [args.ventricle_ml], [args.seed + k], settings, progress)[0]
        folder = write_sample(out, k, pair.image, pair.label, pair.affine, pair.record).resolve()
        record = pair.record
        for warning in record["warnings"][len(warnings):]:  # the refinement's
            print_warning(warning)
        emit(format_result({
            "kind": "sample",
            "index": k,
            "folder": str(folder),
            "files": {name: str(folder / file) for name, file in (
                ("image", "image.nii.gz"), ("label", "label.nii.gz"), ("preview", "preview.png"),
                ("record", "sample.json"))},
            **{key: record[key] for key in ("asked_ml", "got_ml", "tiv_ml", "seed", "seconds", "guidance",
                                            "steps", "device", "models", "warnings", "refine",
                                            *RECORD_FIELDS)},
        }))
    return EXIT_OK


def _segment(args) -> int:
    from VentricleSynthLib.io.atomic import writable_dir, write_json
    from VentricleSynthLib.io.nifti import check_same_grid, load_image, load_label_map
    from VentricleSynthLib.segmentation.files import segment_file
    from VentricleSynthLib.volumes import volume_report

    start = time.perf_counter()
    image_path = Path(args.input).resolve()
    image = load_image(image_path)  # InvalidImageError (exit 2) for anything that is not a 3-D NIfTI
    out = writable_dir(args.out)
    _set_threads(args.threads)
    emit(format_plan([("segment", 1)], 1))
    emit(format_progress("segment", 0, 1, 1, 1))

    def progress(_stage, i, n):
        emit(format_progress("segment", i, max(int(n), 1), 1, 1))

    label_path = out / SEGMENTATION_FILE
    returned = segment_file(image_path, label_path, device=args.device, tta=args.tta, models=args.models,
                            progress=progress, allow_thick_slices=args.allow_thick_slices)
    label = load_label_map(label_path)
    check_same_grid(image, label, what="input image and segmentation")
    report = {"input": str(image_path), "label": str(label_path), **volume_report(label.array, label.affine)}
    # what the segmenter adds to the volumes: the partial-volume (soft) ones, warnings, the model
    for key in ("ventricle_soft_ml", "per_label_soft_ml", "boundary", "warnings", "model", "device", "tta"):
        report[key] = returned[key]
    for warning in report.get("warnings") or []:
        print_warning(warning)
    report["seconds"] = round(time.perf_counter() - start, 3)
    report["ventriclesynth"] = __version__  # the Slicer table keeps it beside the model's version and checksum
    write_json(out / SEGMENTATION_REPORT, report)
    emit(format_progress("segment", 1, 1, 1, 1))
    emit(format_result({"kind": "segmentation", "files": {"label": str(label_path),
                                                          "report": str(out / SEGMENTATION_REPORT)},
                        **{k: v for k, v in report.items() if k != "label"}}))
    return EXIT_OK


def _info(args) -> int:
    from VentricleSynthLib.bundles.store import describe, models_dir

    versions = {"ventriclesynth": __version__, "python": sys.version.split()[0]}
    devices = {}
    try:
        import torch

        versions["torch"] = torch.__version__
        devices["cuda"] = bool(torch.cuda.is_available())
        devices["mps"] = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
        if devices["cuda"]:
            devices["cuda_name"] = torch.cuda.get_device_name(0)
    except ImportError:
        versions["torch"] = None
    for name in ("monai", "nibabel", "numpy", "nnunetv2"):
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "?")
        except ImportError:
            versions[name] = None
    root = models_dir(args.models)
    emit(format_result({"kind": "models", "models_dir": str(Path(root).resolve()), "models": describe(args.models),
                        "versions": versions, "devices": devices}))
    return EXIT_OK


COMMANDS = {"generate": _generate, "segment": _segment, "info": _info}


# ------------------------------------------------------------------------------------------ entry
def run(args) -> int:
    """Run a parsed worker command; every outcome becomes one of the reserved exit codes."""
    emit(format_started(args.worker_command, __version__))
    previous = _install_signal_handlers()
    try:
        if getattr(args, "watch_stdin", False):
            _watch_stdin()
        return COMMANDS[args.worker_command](args)
    except Cancelled:
        print_error("cancelled")
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        print_error("cancelled")
        return EXIT_CANCELLED
    except VentricleSynthError as exc:
        print_error(str(exc))
        return exc.exit_code
    except ImportError as exc:
        return _import_failed(exc)
    except Exception as exc:  # noqa: BLE001 - the worker must always end with a reserved code
        if _is_out_of_memory(exc):
            device = getattr(args, "device", "auto")
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            print_error(f"out of memory on device {device} ({first[:200]}). {OUT_OF_MEMORY_HINT}")
            return EXIT_OUT_OF_MEMORY
        traceback.print_exc()
        print_error(f"internal error: {exc.__class__.__name__}: {exc} (a bug; please report it with the log)")
        return EXIT_FAILED
    finally:
        _restore_signal_handlers(previous)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
