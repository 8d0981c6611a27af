"""`generate` (single samples and cohorts) and the worker's generate given bad input: exit 2, one `error:` line,
no traceback, nothing written; volumes outside the trained range but within the margin: a warning."""

import json
import os
from pathlib import Path

import pytest
from testing_helpers import assert_one_error, snapshot

from VentricleSynthLib.cli import main
from VentricleSynthLib.generation.settings import volume_limits

BIG_SEED = str(2**64)


def _trained_range(models_dir: Path) -> tuple[float, float]:
    norm = json.loads((models_dir / "mask_generator" / "config.json").read_text())["volume_normalisation"]
    return norm["min_ml"], norm["max_ml"]


@pytest.mark.parametrize("args, message", [
    (["--device", "xpu"], "device 'xpu'"),
    (["--device", "meta"], "device 'meta'"),
    (["--device", "cuda:99"], "device 'cuda:99'"),
    (["--seed", BIG_SEED], "--seed"),
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2**63 - 1), "--count", "2"], "--seed"),  # sample 1 would use 2**63
    (["--guidance", "1e6"], "guidance must be a number in 0..20"),
    (["--ventricle-ml", "0.5"], "far outside the trained range"),
])
@pytest.mark.parametrize("mode", ["single", "cohort"])
def test_generate_refuses_before_writing(models, tmp_path, capsys, args, message, mode):
    """In process (main() as the command runs it): one error line, exit 2, no --out."""
    models_dir, _ = models
    out = tmp_path / "never"
    volume = ["--ventricle-ml", "40"] if "--ventricle-ml" not in args else []
    cohort = ["--format", "samples", "--no-progress"] if mode == "cohort" else []
    if mode == "cohort" and "--count" in args:
        pytest.skip("a cohort hashes (seed, index): its base seed alone is checked")
    code = main(["generate", *volume, *args, *cohort, "--steps", "2", "--models", str(models_dir), "--out", str(out)])
    captured = capsys.readouterr()
    assert_one_error(code, captured.err, message)
    assert not out.exists()


def test_generate_with_device_meta_exits_2_in_a_process(run_cli, models, tmp_path):
    models_dir, _ = models
    out = tmp_path / "never"
    done = run_cli("generate", "--ventricle-ml", "40", "--device", "meta", "--models", models_dir, "--out", out)
    assert_one_error(done.returncode, done.stderr, "device 'meta' is not supported")
    assert not out.exists()


def test_worker_generate_refuses_a_huge_seed_and_an_unknown_device(run_cli, models, tmp_path):
    models_dir, _ = models
    out = tmp_path / "never"
    for args in (["--seed", BIG_SEED], ["--device", "meta"]):
        done = run_cli("worker", "generate", "--ventricle-ml", "40", *args, "--models", models_dir, "--out", out)
        assert_one_error(done.returncode, done.stderr)
        assert not out.exists()


def test_generate_out_a_file_is_named_as_a_file(run_cli, models, tmp_path):
    models_dir, _ = models
    target = tmp_path / "notes.txt"
    target.write_text("mine\n")
    for cohort in ([], ["--format", "samples"]):
        done = run_cli("generate", "--ventricle-ml", "40", *cohort, "--models", models_dir, "--out", target)
        assert_one_error(done.returncode, done.stderr, "is a file")
        assert target.read_text() == "mine\n"


def test_generate_refuses_a_folder_holding_another_runs_samples(run_cli, models, tmp_path):
    models_dir, _ = models
    out = tmp_path / "earlier"
    for k in range(3):
        (out / f"sample_{k:03d}").mkdir(parents=True)
        (out / f"sample_{k:03d}" / "sample.json").write_text(json.dumps({"seed": k}))
    before = snapshot(out)
    done = run_cli("generate", "--ventricle-ml", "40", "--steps", "2", "--models", models_dir, "--out", out)
    assert_one_error(done.returncode, done.stderr, "already holds samples", "new or empty folder")
    assert snapshot(out) == before


def test_a_volume_just_below_the_trained_range_is_generated_with_a_warning(run_cli, models, tmp_path):
    models_dir, _ = models
    v_min, _v_max = _trained_range(models_dir)
    asked = round((volume_limits(_trained_range(models_dir))[0] + v_min) / 2, 2)
    out = tmp_path / "out"
    (out / ".sample_000.999999999.abcd1234").mkdir(parents=True)  # a killed run's staging (no such pid)
    done = run_cli("generate", "--ventricle-ml", asked, "--steps", "2", "--candidates", "1", "--no-refine",
                   "--models", models_dir, "--out", out, timeout=300)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "below the trained range" in warnings[0]
    record = json.loads((out / "sample_000" / "sample.json").read_text())
    assert record["asked_ml"] == asked and len(record["warnings"]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["sample_000"]  # the stale staging folder is gone
    assert json.loads(done.stdout.splitlines()[-1])["warnings"] == record["warnings"]


def test_a_cohort_above_the_trained_range_is_generated_with_a_warning(run_cli, models, tmp_path, monkeypatch):
    models_dir, _ = models
    only_generators = tmp_path / "models"  # no segmenter anywhere: QC is skipped, the test stays fast
    only_generators.mkdir()
    for name in ("mask_generator", "image_generator"):
        os.symlink(models_dir / name, only_generators / name)
    monkeypatch.setenv("VENTRICLESYNTH_MODELS", str(only_generators))
    v_min, v_max = _trained_range(models_dir)
    asked = round(v_max + 0.1 * (v_max - v_min), 2)
    out = tmp_path / "cohort"
    done = run_cli("generate", "--distribution", f"list:{asked}", "--steps", "2", "--candidates", "1", "--no-refine",
                   "--no-progress", "--out", out, timeout=300)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "above the trained range" in warnings[0]
    record = json.loads((out / "sample_000" / "sample.json").read_text())
    assert len(record["warnings"]) == 1 and "above the trained range" in record["warnings"][0]
    assert "above the trained range" in (out / "cases.csv").read_text()
