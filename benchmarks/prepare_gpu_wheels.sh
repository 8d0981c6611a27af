#!/usr/bin/env bash
# Wheels the GPU device machine lacks, for benchmarks/gpu_check.py, into the ignored folder gpu_wheels/.
#
# Why: the device machine (Python 3.12, x86-64, torch/numpy/scipy/pandas/scikit-image/timm ... already there;
# see the device README's package list) cannot reach a registry, so MONAI, nibabel, nnU-Net and the few
# packages nnU-Net imports that the image lacks must travel as wheels in `carry` (64 MiB together with the
# working tree). Versions are this checkout's tested ones (the .venv), so the device runs what CI runs.
# --no-deps: each needed package is named here; the image's own copies serve everything else (no torch).
# Usage: bash benchmarks/prepare_gpu_wheels.sh   (from anywhere; prints the folder's size and the total carry)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/gpu_wheels"
py="${PYTHON:-$root/.venv/bin/python}"  # the checkout's venv (PYTHON=... for another, e.g. from a worktree)
pip="$py -m pip"
ver() { "$py" -c "import importlib.metadata as m; print(m.version('$1'))"; }
# imported at run time by the project or nnU-Net and not in the device image. Left out: SimpleITK (50.2 MiB, over
# the carry limit beside the 32.7 MiB working tree; gpu_check.py has nnU-Net read NIfTI with NibabelIO and lets
# nnU-Net's module-level `import SimpleITK` find benchmarks/standins/SimpleITK) and imagecodecs (26 MB; tifffile
# imports it only if present, and nothing here reads TIFF)
names=(monai nibabel nnunetv2 acvl_utils batchgenerators batchgeneratorsv2 blosc2 ndindex
       dynamic_network_architectures connected-components-3d yacs graphviz
       pydantic pydantic_core annotated-types typing-inspection)
specs=()
for n in "${names[@]}"; do specs+=("$n==$(ver "$n")"); done
mkdir -p "$dest"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64 manylinux_2_5_x86_64; do platforms+=(--platform "$p"); done
# pure-Python packages may exist only as sdists: build those here as wheels (py3-none-any travels anywhere)
for spec in "${specs[@]}"; do
  if ! $pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
       "${platforms[@]}" -d "$dest" "$spec" 2>/dev/null; then
    $pip wheel -q --no-deps -w "$dest" "$spec"
  fi
done
rm -f "$dest"/*.tar.gz "$dest"/*.zip
du -sb "$dest" | awk '{printf "gpu_wheels: %.1f MiB\n", $1 / 1048576}'
"$py" "$root/benchmarks/gpu_check.py" --measure-carry
