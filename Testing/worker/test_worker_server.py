"""The worker itself (`python -m VentricleSynthLib worker`): out-of-memory detection, usage errors, and real
runs with the arguments the Slicer Logic builds, whose files are loaded exactly as the Logic loads them
(models: the `models` fixture of Testing/conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from VentricleSynthLib.generation.generators import REDRAW_STAGE
from VentricleSynthLib.generation.settings import panel_defaults
from VentricleSynthLib.worker import client
from VentricleSynthLib.worker import protocol as wp
from VentricleSynthLib.worker import server as worker

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
PY = sys.executable


def test_out_of_memory_detection():
    assert worker._is_out_of_memory(MemoryError())
    assert worker._is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert worker._is_out_of_memory(RuntimeError("MPS backend out of memory"))
    message = "[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory"
    assert worker._is_out_of_memory(RuntimeError(message))
    assert not worker._is_out_of_memory(RuntimeError("shape mismatch"))
    assert not worker._is_out_of_memory(ValueError("out of memory"))


def test_usage_errors_exit_2_with_one_error_line(capsys):
    with pytest.raises(SystemExit) as exc:
        worker.main(["generate", "--out", "/tmp/x"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "--ventricle-ml" in err and len(err.strip().splitlines()) == 1



# ---------------------------------------------------------------------------------- real worker runs
def _run(command, **kw):
    return client.run_worker(command, env=ENV, cwd=str(REPO), **kw)


def _generate(models_dir, out, **kw):
    defaults = panel_defaults(models_dir)
    low, high = defaults["trained_range_ml"]
    options = {"ventricle_ml": round((low + high) / 2, 1), "steps": 2, "seed": 5, "count": 2, "device": "cpu",
               "threads": 1, **kw}
    return client.generate_command(PY, str(out), models=str(models_dir), **options), options


def test_worker_generate_end_to_end_files_protocol_and_nodes(models, tmp_path):
    """Acceptance 4: the worker run with the arguments the Logic builds produces exactly the files the
    Logic loads; the progress bar reaches 100 % through one PROGRESS line per denoising step."""
    models_dir, _origin = models
    out = tmp_path / "out"
    command, options = _generate(models_dir, out)
    events = []
    outcome = _run(command, on_event=events.append, protocol=wp.WorkerProtocol(), timeout=600)
    assert outcome.ok, outcome.message + "\n" + "\n".join(str(e) for e in events[-20:])
    every = [e for e in events if isinstance(e, wp.Progress)]
    progress = [p for p in every if p.stage != REDRAW_STAGE]  # a redrawn candidate's steps are outside the plan
    assert len(progress) == options["count"] * 2 * options["steps"]  # mask + image, per sample
    assert [p.stage for p in progress[:4]] == ["mask", "mask", "image", "image"]
    assert all(p.fraction == q.fraction for p, q in zip(every, every[1:]) if q.stage == REDRAW_STAGE)
    assert progress[-1].fraction == pytest.approx(1.0) and all(
        a.fraction <= b.fraction for a, b in zip(progress, progress[1:]))
    assert isinstance(events[0], wp.Started) and events[0].command == "generate"
    results = [e.data for e in events if isinstance(e, wp.Result)]
    assert [r["index"] for r in results] == [0, 1] and outcome.results == results
    produced = sorted(str(p) for p in out.rglob("*") if p.is_file())
    named = sorted(path for r in results for path in r["files"].values())
    assert produced == named  # nothing more, nothing less (no staging leftovers)
    for k, result in enumerate(results):
        assert result["seed"] == options["seed"] + k and result["asked_ml"] == options["ventricle_ml"]
        assert result["steps"] == {"mask": 2, "image": 2}
        record = json.loads(Path(result["files"]["record"]).read_text())
        assert record["got_ml"] == result["got_ml"] and result["refine"] is True  # refinement on by default
        assert record["got_ml_before_refinement"] == result["got_ml_before_refinement"]
        assert 0 <= result["mean_displacement_mm"] <= result["max_displacement_mm"]

    slicer = pytest.importorskip("slicer")
    from VentricleSynthLib.io.nifti import load_label_map
    from VentricleSynthLib.slicer_glue.mrml import is_synthetic
    from VentricleSynthLib.slicer_glue.results import load_sample
    from VentricleSynthLib.slicer_glue.segmentation_nodes import ventricle_report
    from VentricleSynthLib.slicer_glue.volume_nodes import affine_from_node
    from VentricleSynthLib.volumes import ventricle_volume_ml

    scene = slicer.vtkMRMLScene()
    for result in results:  # exactly what slicer_glue.runs.generate_task's loader does
        volume_node, segmentation_node = load_sample(result, scene=scene)
        assert is_synthetic(volume_node) and volume_node.GetName().startswith("SYNTHETIC ")
        label = load_label_map(result["files"]["label"])
        assert np.allclose(affine_from_node(volume_node), label.affine)
        report = ventricle_report(segmentation_node)
        assert report["ventricle_ml"] == pytest.approx(ventricle_volume_ml(label.array, label.affine), abs=1e-6)
        assert report["ventricle_ml"] == pytest.approx(result["got_ml"], abs=1e-3)


def test_worker_refuses_a_bad_request_with_exit_2_and_no_output(models, tmp_path):
    models_dir, _origin = models
    out = tmp_path / "never"
    command, _ = _generate(models_dir, out, ventricle_ml=5000.0)
    parser = wp.WorkerProtocol()
    outcome = _run(command, protocol=parser, timeout=300)
    assert outcome.status == "user_error" and outcome.exit_code == 2
    assert "far outside the trained range" in outcome.message
    assert len(parser.errors) == 1 and not any("Traceback" in line for line in parser.log)
    assert not out.exists()


def test_worker_cancel_from_the_logic_stops_the_tree_and_leaves_only_complete_samples(models, tmp_path):
    """Blocking-mode cancel (run_worker's should_cancel -> SIGTERM to the tree): exit 130, status
    cancelled, every sample folder on disk complete and announced."""
    models_dir, origin = models
    out = tmp_path / "out"
    command, _ = _generate(models_dir, out, count=400 if origin == "random" else 50)
    seen = []
    outcome = _run(command, on_event=seen.append, should_cancel=lambda: any(isinstance(e, wp.Result) for e in seen),
                   timeout=600)
    assert outcome.status == "cancelled" and outcome.exit_code == wp.EXIT_CANCELLED, outcome.message
    folders = sorted(p for p in out.iterdir())
    assert all(not p.name.startswith(".") for p in folders), "a staging folder was left behind"
    announced = {r["folder"] for r in outcome.results}
    # a sample renamed into place just before the signal may not have been announced yet: at most one
    assert announced <= {str(p) for p in folders} and len(folders) - len(announced) <= 1
    assert 1 <= len(announced) < 50
    for folder in folders:
        assert {p.name for p in folder.iterdir()} == {"image.nii.gz", "label.nii.gz", "preview.png", "sample.json"}


@pytest.mark.skipif(os.name == "nt", reason="stdin watcher tested on POSIX")
def test_worker_cancels_itself_when_its_parent_goes_away(models, tmp_path):
    """--watch-stdin: closing stdin (the parent died) or a line 'cancel' ends the worker with 130."""
    models_dir, origin = models
    out = tmp_path / "out"
    command, _ = _generate(models_dir, out, count=400 if origin == "random" else 50)
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=ENV, cwd=REPO)
    try:
        for raw in proc.stdout:
            if raw.startswith(b"PROGRESS"):
                break
        proc.stdin.write(b"cancel\n")
        proc.stdin.flush()
        rest = proc.stdout.read().decode()
        assert proc.wait(timeout=120) == wp.EXIT_CANCELLED
        assert "error: cancelled" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not any(p.name.startswith(".") for p in out.iterdir()) if out.exists() else True


def test_worker_segment_loads_on_the_input_grid_or_reports_a_clear_error(models, tmp_path):
    """With a segmenter bundle the result is loaded onto the input volume's grid; without one the worker
    says so in one `error:` line and exit 2 (never a fake result)."""
    models_dir, _origin = models
    slicer = pytest.importorskip("slicer")
    from VentricleSynthLib.slicer_glue.results import load_segmentation_result
    from VentricleSynthLib.slicer_glue.segmentation_nodes import ventricle_report
    from VentricleSynthLib.slicer_glue.volume_nodes import node_from_array, write_node

    scene = slicer.vtkMRMLScene()
    shape = (40, 44, 36)
    ijk = np.indices(shape).astype(float)
    r = np.sqrt((((ijk.T - (np.asarray(shape) - 1) / 2) * [1.0, 1.1, 1.2]) ** 2).sum(axis=-1)).T
    image = np.where(r < 16, 100.0, 5.0) + np.where(r < 5, -70.0, 0.0)
    image += np.random.default_rng(0).normal(0, 2, shape)
    theta = np.deg2rad(12)
    rotation = np.array([[np.cos(theta), 0, np.sin(theta)], [0, 1, 0], [-np.sin(theta), 0, np.cos(theta)]])
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ rotation @ np.diag([3.0, 3.0, 3.2])
    affine[:3, 3] = [60.0, 70.0, -50.0]
    node = node_from_array(image.astype(np.float32), affine, name="patient", scene=scene)
    input_path = tmp_path / "input.nii.gz"
    write_node(node, input_path)  # exactly what slicer_glue.runs.segment_task writes
    command = client.segment_command(PY, str(input_path), str(tmp_path / "out"), device="cpu", models=str(models_dir),
                                 threads=1)
    parser = wp.WorkerProtocol(plan=[("segment", 1)])
    outcome = _run(command, protocol=parser, timeout=600)
    if (models_dir / "segmenter").is_dir():
        assert outcome.ok, outcome.message
        result = outcome.results[0]
        assert result["kind"] == "segmentation"
        segmentation = load_segmentation_result(result, node, scene=scene)
        assert ventricle_report(segmentation)["ventricle_ml"] == pytest.approx(result["ventricle_ml"], abs=1e-3)
    else:
        assert outcome.status == "user_error" and outcome.exit_code == 2 and outcome.results == []
        assert "segmenter" in outcome.message and len(parser.errors) == 1
        assert not (tmp_path / "out" / worker.SEGMENTATION_FILE).exists()


def test_worker_info_lists_verified_bundles(models):
    models_dir, _origin = models
    outcome = _run(client.info_command(PY, models=str(models_dir)), timeout=300)
    assert outcome.ok, outcome.message
    info = outcome.results[0]
    assert info["kind"] == "models" and Path(info["models_dir"]) == Path(models_dir).resolve()
    names = {m["name"]: m for m in info["models"]}
    assert names["mask_generator"]["verified"] and names["image_generator"]["verified"]
    assert info["versions"]["torch"]


# ---------------------------------------------------------------------- missing or stale packages
def _shadowing(tmp_path, files: dict) -> dict:
    """The worker's environment with stand-in modules (`files`: relative path -> text) ahead of the real ones."""
    root = tmp_path / "shadow"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), str(REPO), ENV.get("PYTHONPATH")]))}


STALE_MONAI = {"monai/__init__.py": '__version__ = "1.3.0"\n', "monai/networks/__init__.py": "",
               "monai-1.3.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: monai\nVersion: 1.3.0\n"}


@pytest.mark.parametrize("nets, reason", [
    ("", "cannot import name 'AutoencoderKL' from 'monai.networks.nets'"),
    ("AutoencoderKL = DiffusionModelUNet = SPADEAutoencoderKL = SPADEDiffusionModelUNet = object\n",
     "No module named 'monai.networks.schedulers'"),
])
def test_a_stale_package_is_reported_as_such_with_exit_2_and_no_traceback(tmp_path, nets, reason):
    """An older monai left by another extension: the panel gets one line naming it, why, and what to do."""
    env = _shadowing(tmp_path, {**STALE_MONAI, "monai/networks/nets.py": nets})
    parser = wp.WorkerProtocol()
    command = client.generate_command(PY, str(tmp_path / "out"), ventricle_ml=40.0, device="cpu", threads=1)
    outcome = client.run_worker(command, env=env, cwd=str(REPO), protocol=parser, timeout=300)
    assert outcome.status == "user_error" and outcome.exit_code == 2, outcome.message
    assert outcome.message.startswith("the installed monai 1.3.0 is incompatible (") and reason in outcome.message
    assert "update it: in Slicer: VentricleSynth > Models > Install dependencies" in outcome.message
    assert len(parser.errors) == 1 and not any("Traceback" in line or "internal error" in line for line in parser.log)
    assert not (tmp_path / "out").exists()


def test_an_import_error_is_blamed_on_the_package_it_comes_from():
    def raised_in(module, error):
        namespace = {"__name__": module, "error": error}
        exec("def f():\n    raise error\n", namespace)  # noqa: S102 - a function of module `module`
        try:
            namespace["f"]()
        except ImportError as exc:
            return exc

    blamed = worker._blamed_package
    assert blamed(ImportError("cannot import name 'X'", name="monai.networks.nets")) == "monai"
    assert blamed(raised_in("torch._C", ImportError("libcudnn.so.9: cannot open shared object file"))) == "torch"
    assert blamed(raised_in("monai.utils", ImportError("cannot import name 'X' from 'typing'", name="typing"))) \
        == "monai"
    assert blamed(ModuleNotFoundError("No module named 'VentricleSynthLib.nowhere'",
                                      name="VentricleSynthLib.nowhere")) is None  # a bug of ours
    assert blamed(raised_in("VentricleSynthLib.generation.networks", ImportError("ours"))) is None


def test_worker_info_needs_none_of_the_ml_packages(models, tmp_path):
    """'Verify models' can run before the packages are installed: `worker info` imports none of them."""
    models_dir, _origin = models
    blocked = ("torch", "monai", "nnunetv2", "nibabel", "scipy", "safetensors", "matplotlib", "numpy")
    env = _shadowing(tmp_path, {f"{name}.py": f"raise ImportError('{name} is not installed')\n" for name in blocked})
    outcome = client.run_worker(client.info_command(PY, models=str(models_dir)), env=env, cwd=str(REPO), timeout=300)
    assert outcome.ok, outcome.message
    info = outcome.results[0]
    assert info["versions"]["torch"] is None and info["versions"]["monai"] is None and info["devices"] == {}
    assert {m["name"] for m in info["models"] if m["verified"]} >= {"mask_generator", "image_generator"}
