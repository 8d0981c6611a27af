"""`python -m VentricleSynthLib worker …`: the out-of-process entry the Slicer module runs.

    worker generate --ventricle-ml V [--guidance W] [--steps N] [--seed S] [--count K]
                    [--device D] [--models DIR] --out DIR [--threads T] [--watch-stdin]
        -> OUT/sample_000/{image.nii.gz,label.nii.gz,preview.png,sample.json}, ...
    worker segment --input IMAGE.nii.gz --out DIR [--device D] [--models DIR] [--tta] [--allow-thick-slices]
                   [--threads T] [--watch-stdin]
        -> OUT/segmentation.nii.gz (input's own grid, schema ventricle labels) + OUT/segmentation.json
    worker info [--models DIR]
        -> one RESULT line describing the model bundles (checksums verified)

Output follows `worker_protocol`: a `WORKER` line, a `PLAN` line, one `PROGRESS` line per denoising
step, one `RESULT` JSON line per produced item naming its files (absolute paths), `error:` lines on
stderr. Exit codes: 0 ok, 1 internal error (traceback in the log), 2 bad input/request (one `error:`
line), 3 out of memory (with a hint), 130 cancelled (SIGINT, SIGTERM, `cancel` on stdin, or stdin
closed with --watch-stdin, i.e. the parent went away). Outputs appear atomically: a sample folder or
a segmentation file is either complete or absent.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from VentricleSynthLib import __version__
from VentricleSynthLib.errors import RequestError, VentricleSynthError
from VentricleSynthLib.worker.protocol import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, EXIT_OUT_OF_MEMORY, EXIT_USER_ERROR, OUT_OF_MEMORY_HINT, format_plan, format_progress, format_result, format_started

SEGMENTATION_FILE = "segmentation.nii.gz"
SEGMENTATION_REPORT = "segmentation.json"


class Cancelled(BaseException):
    """Raised in the main thread by SIGINT/SIGTERM or the stdin watcher; never caught by `except Exception`."""


class SegmenterUnavailableError(VentricleSynthError):
    """The ventricle segmenter (VentricleSynthLib.segmentation.segmenter) is not part of this installation yet."""


class _Parser(argparse.ArgumentParser):
    """Usage errors as one `error:` line and exit code 2, like every other user error."""

    def error(self, message):  # noqa: D401 - argparse hook
        self.exit(2, f"error: {message} (see --help)\n")


# ------------------------------------------------------------------------------------- output lines
def emit(line: str) -> None:
    print(line, flush=True)


def _error_line(message: str) -> None:
    print("error: " + " ".join(str(message).split()), file=sys.stderr, flush=True)


def _warning_line(message: str) -> None:
    print("warning: " + " ".join(str(message).split()), file=sys.stderr, flush=True)


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
    p.add_argument("--seed", type=int, default=0, help="seed of the first sample; sample k uses seed+k")
    p.add_argument("--count", type=int, default=1, help="number of samples")
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
    parser = _Parser(prog="python -m VentricleSynthLib worker", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return parser


# ------------------------------------------------------------------------------------ cancellation
def _raise_cancelled(signum, _frame):
    raise Cancelled(signal.Signals(signum).name)


def _install_signal_handlers() -> dict:
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


def _atomic_write_text(path: Path, text: str) -> None:
    from VentricleSynthLib.io.nifti import atomic_write_bytes

    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text))


# --------------------------------------------------------------------------------------- commands
def _generate(args) -> int:
    if args.count < 1:
        raise RequestError(f"--count must be >= 1, got {args.count}")
    _set_threads(args.threads)
    emit("loading the generators ...")
    from VentricleSynthLib.generation.generators import ImageGenerator, MaskGenerator, generate_pair
    from VentricleSynthLib.bundles.store import IMAGE, MASK, bundle_path
    from VentricleSynthLib.generation.sample_folder import writable_dir, write_sample

    mask = MaskGenerator(bundle_path(MASK, args.models), args.device)
    guidance = float(mask.sampling["guidance"] if args.guidance is None else args.guidance)
    mask_steps = int(mask.sampling["steps"] if args.steps is None else args.steps)
    mask.check_request(args.ventricle_ml, guidance, mask_steps)
    image = ImageGenerator(bundle_path(IMAGE, args.models), args.device)
    image_steps = int(image.sampling["steps"] if args.steps is None else args.steps)
    out = writable_dir(args.out)
    if mask.device.type == "cpu":
        _warning_line("running on the CPU: slower than a GPU; the progress line shows the time left")
    emit(f"device {mask.device}; ventricle volume {args.ventricle_ml:g} mL; guidance {guidance:g}; "
         f"steps {mask_steps}+{image_steps}; {args.count} sample(s)")
    emit(format_plan([("mask", mask_steps), ("image", image_steps)], args.count))
    for k in range(args.count):
        def progress(stage, i, n, _k=k):
            emit(format_progress(stage, i, n, _k + 1, args.count))

        pair = generate_pair(mask, image, args.ventricle_ml, guidance, args.steps, seed=args.seed + k,
                             progress=progress)
        folder = write_sample(out, k, pair.image, pair.label, pair.affine, pair.record).resolve()
        record = pair.record
        emit(format_result({
            "kind": "sample",
            "index": k,
            "folder": str(folder),
            "files": {name: str(folder / file) for name, file in (
                ("image", "image.nii.gz"), ("label", "label.nii.gz"), ("preview", "preview.png"),
                ("record", "sample.json"))},
            **{key: record[key] for key in ("asked_ml", "got_ml", "tiv_ml", "seed", "seconds", "guidance",
                                            "steps", "device", "models")},
        }))
    return EXIT_OK


def _call_segmenter(segment_file, image_path: Path, label_path: Path, args, progress):
    """Call `segmenter.segment_file(image, out, ...)` with whichever of device/models/progress it takes."""
    try:
        params = inspect.signature(segment_file).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    wanted = {"device": args.device, "models": args.models, "progress": progress}
    if args.tta:
        wanted["tta"] = True
    if args.allow_thick_slices:
        wanted["allow_thick_slices"] = True
    missing = [k for k in ("tta", "allow_thick_slices") if k in wanted and k not in params and not takes_any]
    if missing:
        raise RequestError(f"this segmenter does not support --{missing[0].replace('_', '-')}")
    kwargs = {k: v for k, v in wanted.items() if k in params or takes_any}
    return segment_file(image_path, label_path, **kwargs)


def _segment(args) -> int:
    from VentricleSynthLib.io.nifti import check_same_grid, load_image, load_label_map
    from VentricleSynthLib.generation.sample_folder import writable_dir
    from VentricleSynthLib.volumes import volume_report

    start = time.perf_counter()
    image_path = Path(args.input).resolve()
    image = load_image(image_path)  # InvalidImageError (exit 2) for anything that is not a 3-D NIfTI
    out = writable_dir(args.out)
    try:
        from VentricleSynthLib.segmentation import segmenter
    except ModuleNotFoundError as exc:
        if exc.name not in (f"{__package__}.segmenter",):
            raise
        segmenter = None
    segment_file = getattr(segmenter, "segment_file", None)
    if segment_file is None:
        raise SegmenterUnavailableError(
            "the ventricle segmenter is not available in this installation (VentricleSynthLib.segmentation.segmenter."
            "segment_file is missing); generation works, segmentation needs the segmenter bundle and code")
    _set_threads(args.threads)
    emit(format_plan([("segment", 1)], 1))
    emit(format_progress("segment", 0, 1, 1, 1))

    def progress(_stage, i, n):
        emit(format_progress("segment", i, max(int(n), 1), 1, 1))

    label_path = out / SEGMENTATION_FILE
    returned = _call_segmenter(segment_file, image_path, label_path, args, progress)
    if not label_path.is_file():
        raise RuntimeError(f"the segmenter returned without writing {label_path}")
    label = load_label_map(label_path)
    check_same_grid(image, label, what="input image and segmentation")
    report = {"input": str(image_path), "label": str(label_path), **volume_report(label.array, label.affine)}
    if isinstance(returned, dict):  # what the segmenter adds: warnings, model id, device, test-time augmentation
        for key in ("warnings", "model", "device", "tta"):
            if key in returned:
                report[key] = returned[key]
    for warning in report.get("warnings") or []:
        _warning_line(warning)
    report["seconds"] = round(time.perf_counter() - start, 3)
    _atomic_write_text(out / SEGMENTATION_REPORT, json.dumps(report, indent=2) + "\n")
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
        _error_line("cancelled")
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        _error_line("cancelled")
        return EXIT_CANCELLED
    except VentricleSynthError as exc:
        _error_line(str(exc))
        return exc.exit_code
    except ModuleNotFoundError as exc:
        if not exc.name or exc.name.split(".")[0] == __package__:
            traceback.print_exc()
            _error_line(f"internal error: {exc}")
            return EXIT_FAILED
        _error_line(f"the Python package {exc.name.split('.')[0]!r} is missing: install the requirements "
                    "(in Slicer: VentricleSynth > Models > Install dependencies)")
        return EXIT_USER_ERROR
    except Exception as exc:  # noqa: BLE001 - the worker must always end with a reserved code
        if _is_out_of_memory(exc):
            device = getattr(args, "device", "auto")
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            _error_line(f"out of memory on device {device} ({first[:200]}). {OUT_OF_MEMORY_HINT}")
            return EXIT_OUT_OF_MEMORY
        traceback.print_exc()
        _error_line(f"internal error: {exc.__class__.__name__}: {exc} (a bug; please report it with the log)")
        return EXIT_FAILED
    finally:
        _restore_signal_handlers(previous)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
