"""nnU-Net v2's folders and worker counts for one --work folder, set before nnunetv2 is imported.

nnU-Net reads `nnUNet_raw`, `nnUNet_preprocessed` and `nnUNet_results` from the environment (older
releases at import time, 2.6+ on every use), so `setup(work)` must run before the first
`import nnunetv2…` of the process. Worker counts default to what 2 CPU cores afford
(`nnUNet_n_proc_DA=0`: augmentation in the main process; `nnUNet_def_n_proc`: pools for planning,
preprocessing and export); explicit settings in the environment win. With `nnUNet_def_n_proc=1` the
planning (integrity check, fingerprint, file listings, preprocessing) starts no process (`pools_in_process`).
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import sys
from pathlib import Path

from VentricleSynthLib.errors import ConfigError

FOLDERS = {"nnUNet_raw": "raw", "nnUNet_preprocessed": "preprocessed", "nnUNet_results": "results"}


def root(work: Path) -> Path:
    return Path(work).resolve() / "nnunet"


def setup(work: Path, processes: int | None = None) -> dict[str, Path]:
    """Point nnU-Net at WORK/nnunet/{raw,preprocessed,results}; returns those folders."""
    base = root(work)
    folders = {var: base / sub for var, sub in FOLDERS.items()}
    for var, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(folder)
    os.environ.setdefault("nnUNet_n_proc_DA", "0")
    if processes is None:
        processes = min(2, os.cpu_count() or 1)
    os.environ.setdefault("nnUNet_def_n_proc", str(max(1, int(processes))))
    _check_already_imported(folders)
    return folders


def _check_already_imported(folders: dict[str, Path]) -> None:
    """Old nnU-Net releases froze the folders as strings at import: refuse a stale, different value."""
    paths = sys.modules.get("nnunetv2.paths")
    if paths is None:
        return
    for var, folder in folders.items():
        value = getattr(paths, var, None)
        if isinstance(value, str) and Path(value).resolve() != folder:
            raise ConfigError(f"nnU-Net was imported with {var}={value} before this stage set it to {folder}; "
                              f"run the stage in a fresh process")


def num_processes() -> int:
    """nnU-Net's default pool size as set for this process."""
    try:
        return max(1, int(os.environ.get("nnUNet_def_n_proc", "1")))
    except ValueError:
        raise ConfigError(f"nnUNet_def_n_proc must be an integer, got {os.environ['nnUNet_def_n_proc']!r}") from None


class planner_threads:
    """Context: nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA), which fails for 0 (in-process
    augmentation); plan with at least 1 and restore the setting afterwards."""

    def __enter__(self):
        self.saved = os.environ.get("nnUNet_n_proc_DA")
        if self.saved is not None and self.saved.strip() == "0":
            os.environ["nnUNet_n_proc_DA"] = "1"
        import torch

        self.threads = torch.get_num_threads()
        return self

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.threads)
        if self.saved is None:
            os.environ.pop("nnUNet_n_proc_DA", None)
        else:
            os.environ["nnUNet_n_proc_DA"] = self.saved
        return False


# Where nnU-Net's planning and preprocessing (2.x) start pools: a spawn pool of nnUNet_def_n_proc processes for the
# cases (`multiprocessing.get_context("spawn").Pool(n)`), and, inside every listing of a raw dataset's files
# (utilities.utils.get_filenames_of_train_images_and_targets: five times per plan), a fork pool of 12 (`Pool`).
POOL_MODULES = {"nnunetv2.experiment_planning.verify_dataset_integrity": "multiprocessing",
                "nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor": "multiprocessing",
                "nnunetv2.preprocessing.preprocessors.default_preprocessor": "multiprocessing",
                "nnunetv2.utilities.utils": "Pool"}


class _Done:
    """An `AsyncResult` whose work is already done."""

    def __init__(self, value):
        self.value = value

    def ready(self) -> bool:
        return True

    def get(self, timeout=None):
        return self.value


class _InProcessPool:
    """What those modules ask of a pool, done in the calling process, in order: `starmap`, `starmap_async`
    (done at once; an error is raised at once) and `_pool`, the workers whose liveness nnU-Net polls (none)."""

    _pool = ()

    def __init__(self, processes=None, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def starmap(self, func, iterable):
        return [func(*args) for args in iterable]

    def starmap_async(self, func, iterable):
        return _Done(self.starmap(func, iterable))


class _InProcessMultiprocessing:
    """`multiprocessing` as those modules see it inside `pools_in_process`: every context's Pool is in-process;
    anything else is the real module's."""

    Pool = _InProcessPool

    def get_context(self, method=None):
        return self

    def __getattr__(self, name):
        return getattr(multiprocessing, name)


def pools(processes: int):
    """The context for nnU-Net's planning and preprocessing with `processes` workers: `pools_in_process` for
    one, nnU-Net's own pools otherwise."""
    return pools_in_process() if processes == 1 else contextlib.nullcontext()


@contextlib.contextmanager
def pools_in_process():
    """nnU-Net's integrity check, fingerprint, planning and preprocessing without child processes.

    Why: nnU-Net starts a spawn pool even for one process, whose worker imports torch, nnU-Net and this package
    again before its first case (about 4 s on an idle core; three pools per plan), and forks 12 copies of this
    process, torch loaded, for each listing of the raw files (five per plan): 63 processes per plan. On a loaded
    2-core machine the CPU check of benchmarks/gpu_check.py ran out of its budget there, and forking a process
    that may run threads is the classic way to deadlock a child. With one process the same per-case functions
    (nnU-Net's, unchanged) run here, in order, and give the same files as nnU-Net's pools
    (Testing/training/segmenter/test_train_planning.py). nnU-Net has no setting for this, so the names in
    POOL_MODULES are swapped for in-process ones for the duration, then restored."""
    real = {"multiprocessing": multiprocessing, "Pool": multiprocessing.Pool}
    stand_in = {"multiprocessing": _InProcessMultiprocessing(), "Pool": _InProcessPool}
    swapped = []
    for name, attribute in POOL_MODULES.items():
        module = importlib.import_module(name)
        if getattr(module, attribute, None) is real[attribute]:  # another nnU-Net that no longer does so: its way
            swapped.append((module, attribute))
            setattr(module, attribute, stand_in[attribute])
    try:
        yield
    finally:
        for module, attribute in swapped:
            setattr(module, attribute, real[attribute])
