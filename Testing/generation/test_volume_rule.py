"""The one volume rule of single samples and cohorts, the guidance cap, and stale staging folders."""

import os
import subprocess
import sys

import pytest

from VentricleSynthLib.errors import RequestError
from VentricleSynthLib.generation import sample_folder
from VentricleSynthLib.generation.settings import MAX_GUIDANCE, check_volume, resolve, volume_limits

TRAINED = (11.14, 150.45)  # the bundled mask generator's range


def test_volume_limits_are_half_the_minimum_and_a_quarter_span_above():
    low, high = volume_limits(TRAINED)
    assert low == pytest.approx(5.57) and high == pytest.approx(150.45 + 0.25 * (150.45 - 11.14))


@pytest.mark.parametrize("volume", [0.5, 5.5, 0, -3, float("nan"), float("inf"), 186.0, 1e6, "x", True])
def test_volumes_beyond_the_limits_are_refused(volume):
    with pytest.raises(RequestError):
        check_volume(volume, TRAINED)


@pytest.mark.parametrize("volume, side", [(5.6, "below"), (11.0, "below"), (151.0, "above"), (185.0, "above")])
def test_volumes_in_the_margin_are_warned(volume, side):
    warnings = check_volume(volume, TRAINED)
    assert len(warnings) == 1 and f"{side} the trained range" in warnings[0]


@pytest.mark.parametrize("volume", [11.14, 40, 150.45])
def test_volumes_in_the_trained_range_are_fine(volume):
    assert check_volume(volume, TRAINED) == []


def test_guidance_is_capped():
    mask = {"guidance": 4.0, "steps": 25}
    assert resolve(mask, None, guidance=MAX_GUIDANCE).guidance == 20.0
    for bad in (1e6, 20.01, -1, float("nan")):
        with pytest.raises(RequestError, match="guidance must be a number in 0..20"):
            resolve(mask, None, guidance=bad)


def test_stale_staging_folders_of_the_sample_written_are_removed_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [tmp_path / f".sample_001.{dead}.abc", tmp_path / ".sample_001.legacy12"]
        kept = [tmp_path / f".sample_001.{live.pid}.abc", tmp_path / f".sample_002.{dead}.abc",
                tmp_path / f".sample_001.{os.getpid()}.abc", tmp_path / "sample_001"]
        for folder in stale + kept:
            folder.mkdir()
        assert sorted(sample_folder.remove_stale_staging(tmp_path, 1)) == sorted(stale)
        assert all(f.is_dir() for f in kept) and not any(f.exists() for f in stale)
    finally:
        live.kill()
        live.wait()


def test_staging_folders_carry_the_writers_pid():
    assert sample_folder.staging_pid(".sample_003.1234.x1y2", 3) == 1234
    assert sample_folder.staging_pid(".sample_003.x1y2", 3) == -1
    assert sample_folder.staging_pid(".sample_030.1234.x1y2", 3) is None
