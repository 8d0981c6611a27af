"""A cohort run clears what killed runs left for the samples it writes, never a live process's staging."""

import subprocess
import sys

from VentricleSynthLib.cohorts.layout import REJECTED, SamplesLayout


def test_samples_layout_clears_dead_staging_and_keeps_live_staging(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [tmp_path / f".sample_004.{dead}.abc", tmp_path / REJECTED / f".sample_004.{dead}.abc"]
        kept = [tmp_path / f".sample_004.{live.pid}.abc", tmp_path / f".sample_005.{dead}.abc"]
        for folder in stale + kept:
            folder.mkdir(parents=True)
        SamplesLayout(tmp_path).clear(4)
        assert not any(f.exists() for f in stale) and all(f.is_dir() for f in kept)
    finally:
        live.kill()
        live.wait()
