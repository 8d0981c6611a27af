"""Synthetic cohorts without models: per-index seeded distributions, bad requests, shards and torchrun's
variables, pinned settings, QC flags and the report's summary."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from testing_helpers import TRAIN_ENV

from VentricleSynthLib.cohorts.distributions import parse, sample_seed
from VentricleSynthLib.cohorts.request import owned, parse_shard
from VentricleSynthLib.errors import RequestError

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "VentricleSynthLib"]
ENV = TRAIN_ENV
COUNT = 8
TIMING = {"seconds", "generation_seconds", "qc_seconds"}


def _run(args, timeout=3600, **kw):
    return subprocess.run([*map(str, args)], capture_output=True, text=True, cwd=REPO, env=ENV, timeout=timeout, **kw)


def test_distributions_are_seeded_per_index_and_cover_the_range(tmp_path):
    d = parse("uniform:20-140")
    v = d.volumes(12, 3)
    assert v.min() >= 20 and v.max() <= 140 and np.array_equal(v[:5], d.volumes(5, 3))  # independent of the count
    assert np.histogram(v, bins=4, range=(20, 140))[0].min() >= 2  # low-discrepancy: every quarter is visited
    assert not np.array_equal(v, d.volumes(12, 4))
    b = parse("buckets").bind((8.0, 150.0))
    assert b.spec == "buckets:8-150"
    w = b.volumes(20, 0)
    assert all(8 + k * 14.2 <= w[i] <= 8 + (k + 1) * 14.2 for i in range(20) for k in [i % 10])
    assert list(parse("list:30,60").volumes(5, 0)) == [30, 60, 30, 60, 30] == list(parse("30, 60").volumes(5, 9))
    csv_path = tmp_path / "cases.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case", "ventricle_ml"])
        writer.writerows([[f"c{i}", x] for i, x in enumerate([10, 11, 12, 13, 14, 15, 100, 101])])
    m = parse(f"match:{tmp_path}")
    draws = m.volumes(40, 0)
    assert 10 <= draws.min() and draws.max() <= 101 and np.mean(draws < 50) == pytest.approx(0.75, abs=0.1)
    assert sample_seed(0, 1) != sample_seed(1, 0) and sample_seed(5, 7) == sample_seed(5, 7)


@pytest.mark.parametrize("spec, message", [
    ("", "empty"), ("gauss", "unknown distribution"), ("uniform:5", "range LO-HI"), ("uniform:140-20", "0 < LO < HI"),
    ("list:1,x", "comma-separated"), ("list:-4", "positive"), ("match:", "needs a CSV"),
    ("match:/no/such.csv", "no such CSV"),
])
def test_bad_distribution_specs_are_request_errors(spec, message):
    with pytest.raises(RequestError, match=message):
        parse(spec)


@pytest.mark.parametrize("extra, message", [
    (["--distribution", "gauss:1-2", "--count", "2"], "unknown distribution"),
    (["--distribution", "uniform:30-10", "--count", "2"], "0 < LO < HI"),
    (["--distribution", "uniform", "--count", "2", "--qc-min-dice", "1.5"], "--qc-min-dice must be a number in 0..1"),
    (["--distribution", "uniform", "--count", "2", "--shard", "2/2"], "--shard must be i/N"),
    (["--distribution", "uniform"], "--count is needed"),
    (["--distribution", "uniform", "--count", "0"], "--count must be >= 1"),
    (["--distribution", "list:40", "--ventricle-ml", "40"], "either"),
    (["--format", "nnunet"], "--ventricle-ml V or --distribution"),
])
def test_cli_bad_cohort_requests_print_one_error_line(tmp_path, extra, message):
    out = tmp_path / "never"
    done = _run(CLI + ["generate", *extra, "--models", tmp_path / "no_models", "--out", out], timeout=3600)
    assert done.returncode != 0 and not out.exists()
    assert done.stderr.startswith("error:") and message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("shards", [2, 3])
def test_shards_own_whole_blocks_disjoint_and_covering(shards):
    """Batch 3, count 8: blocks {0,1,2} {3,4,5} {6,7} (the last one partial), block b to shard b mod N."""
    parts = [owned(8, 3, k, shards) for k in range(shards)]
    assert sorted(i for part in parts for i in part) == list(range(8))  # every index once: disjoint, covering
    for k, part in enumerate(parts):
        assert all((i // 3) % shards == k for i in part)
    assert parts[0] == ([0, 1, 2, 6, 7] if shards == 2 else [0, 1, 2]) and parts[-1][-1] == (5 if shards == 2 else 7)


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "2"}, "RANK is not"), ({"WORLD_SIZE": "two", "RANK": "0"}, "WORLD_SIZE must be an integer"),
    ({"WORLD_SIZE": "2", "RANK": "x"}, "RANK must be an integer"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK must be in"),
])
def test_torchrun_variables_are_checked(monkeypatch, env, message):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(RequestError, match=message):
        parse_shard(None)


def test_torchrun_rank_gives_the_shard(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    assert parse_shard(None) == (2, 3)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert parse_shard("1/4") == (1, 4)


def test_pinned_settings_refuse_another_batch_size(tmp_path):
    from VentricleSynthLib.cohorts.synthesize import _pin_settings

    run = {"format": "nnunet", "seed": 1, "batch_size": 3, "device_type": "cpu", "qc_min_dice": None}
    _pin_settings(tmp_path, run)
    _pin_settings(tmp_path, dict(run))  # the same settings: accepted (resume, another shard)
    assert json.loads((tmp_path / "synthesis.json").read_text()) == run
    assert [p.name for p in tmp_path.iterdir()] == ["synthesis.json"]  # no temporary file left
    with pytest.raises(RequestError, match=r"other settings \(batch_size\)"):
        _pin_settings(tmp_path, {**run, "batch_size": 2})
    with pytest.raises(RequestError, match=r"other settings \(device_type, qc_min_dice\)"):
        _pin_settings(tmp_path, {**run, "device_type": "cuda", "qc_min_dice": 0.5})


def _qc_record(**kw):
    return {"asked_ml": 50.0, "volume_error_ml": 0.0, "components": 4, "qc_dice": 0.9, **kw}


def test_qc_flags_and_filter():
    from VentricleSynthLib.cohorts.qc import DEFAULT_MIN_DICE, flags, passes_filter
    from VentricleSynthLib.volumes import MAX_VENTRICLE_PIECES

    assert flags(_qc_record()) == []
    assert flags(_qc_record(volume_error_ml=11.0)) == ["volume_off"]  # > 5 mL and > 20 % of 50 mL
    assert flags(_qc_record(volume_error_ml=-9.0)) == []  # > 5 mL but only 18 %
    assert flags(_qc_record(asked_ml=10.0, volume_error_ml=4.0)) == []  # 40 % but only 4 mL
    assert flags(_qc_record(components=0)) == ["no_ventricles"]
    assert flags(_qc_record(components=MAX_VENTRICLE_PIECES + 1)) == ["fragmented"]
    assert flags(_qc_record(components=MAX_VENTRICLE_PIECES)) == []
    assert flags(_qc_record(qc_dice=DEFAULT_MIN_DICE - 0.01)) == ["low_dice"]
    assert flags(_qc_record(qc_dice=0.8), min_dice=0.85) == ["low_dice"]  # the explicit threshold wins
    assert flags(_qc_record(qc_dice=0.6), min_dice=0.5) == []
    assert flags(_qc_record(qc_dice=None), min_dice=0.99) == []  # not measured: no flag
    assert flags(_qc_record(qc_dice=0.1, volume_error_ml=30.0, components=9)) == ["volume_off", "fragmented",
                                                                                   "low_dice"]
    assert passes_filter(_qc_record(qc_dice=0.1), None)  # no threshold: kept
    assert passes_filter(_qc_record(qc_dice=0.8), 0.8) and not passes_filter(_qc_record(qc_dice=0.79), 0.8)
    assert passes_filter(_qc_record(qc_dice=None), 0.8)  # not measured: kept


def test_summary_pairs_asked_and_got_of_the_same_rows():
    from VentricleSynthLib.cohorts.report import summary

    rows = [{"asked_ml": a, "got_ml": g, "qc_dice": d, "included": True, "qc": "ok", "seconds": 1.0}
            for a, g, d in [(10, 12, 0.9), (20, "", ""), (30, 29, 0.7), (40, 45, "")]]
    s = summary(rows)
    assert s["samples"] == 4 and s["median_abs_error_ml"] == 2.0  # |12-10|, |29-30|, |45-40|: the row without got
    assert s["median_dice"] == 0.8 and s["dice_measured"] == 2  # is left out, not its neighbours shifted


# --- with the tiny bundles ------------------------------------------------------------------------------------
