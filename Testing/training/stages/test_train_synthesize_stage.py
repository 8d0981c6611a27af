"""Stage `synthesize` (training/stages/synthesize.py) from the command line: without generator bundles for the
profile it is one clean error line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1"}


def test_synthesize_without_generators_is_a_clean_error(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "training" / "train.py"), "synthesize", "--config", "tiny",
                           "--work", str(tmp_path / "w")], capture_output=True, text=True, cwd=REPO, env=ENV,
                          timeout=3600)
    assert done.returncode != 0 and done.stderr.startswith("error: no generator bundles")
    assert len(done.stderr.strip().splitlines()) == 1
