"""nnU-Net v2's folders and worker counts for one --work folder, set before nnunetv2 is imported.

nnU-Net reads `nnUNet_raw`, `nnUNet_preprocessed` and `nnUNet_results` from the environment (older
releases at import time, 2.6+ on every use), so `setup(work)` must run before the first
`import nnunetv2…` of the process. Worker counts default to what 2 CPU cores afford
(`nnUNet_n_proc_DA=0`: augmentation in the main process; `nnUNet_def_n_proc`: pools for planning,
preprocessing and export); explicit settings in the environment win.
"""

from __future__ import annotations

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
