"""The Slicer worker: protocol parser, exit-code mapping, process-tree cancel, command lines, and real
worker runs whose files are loaded exactly as the Slicer Logic loads them.

Real runs use, in order: $VENTRICLESYNTH_TEST_MODELS, the bundled VentricleSynth/Resources/Models, or
small *random-weight* bundles written here (plumbing only: no training, no quality claims).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from VentricleSynthLib.worker import server as worker
from VentricleSynthLib.worker import protocol as wp

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
PY = sys.executable


# ------------------------------------------------------------------------------------------ parser
def test_progress_fraction_is_exact_across_samples_and_stages():
    parser = wp.WorkerProtocol()
    lines = [wp.format_plan([("mask", 3), ("image", 2)], 2)]
    lines += [wp.format_progress(stage, i, n, k, 2) for k in (1, 2) for stage, n in (("mask", 3), ("image", 2))
              for i in range(1, n + 1)]
    events = parser.feed("\n".join(lines) + "\n")
    assert isinstance(events[0], wp.Plan) and events[0].stages == [("mask", 3), ("image", 2)] and events[0].count == 2
    fractions = [e.fraction for e in events if isinstance(e, wp.Progress)]
    assert fractions == pytest.approx([i / 10 for i in range(1, 11)])
    assert [e.percent for e in events if isinstance(e, wp.Progress)][-1] == 100


def test_chunks_split_anywhere_give_the_same_events():
    text = ("WORKER pid=42 version=0.1.0 command=generate\nloading ...\n" + wp.format_plan([("mask", 2)], 1) + "\n"
            + wp.format_progress("mask", 1, 2, 1, 1) + "\r\n" + wp.format_progress("mask", 2, 2, 1, 1) + "\n"
            + wp.format_result({"kind": "sample", "files": {"image": "/tmp/ü ñ/image.nii.gz"}}) + "\n"
            + "warning: running on the CPU\nerror: something bad")
    whole = wp.WorkerProtocol(clock=lambda: 0.0)
    expected = whole.feed(text) + whole.flush()
    data = text.encode("utf-8")
    for size in (1, 2, 3, 7, 64):  # byte chunks that split lines and multi-byte characters anywhere
        parser = wp.WorkerProtocol(clock=lambda: 0.0)
        got = []
        for start in range(0, len(data), size):
            got += parser.feed(data[start:start + size])
        got += parser.flush()
        assert got == expected
    assert whole.pid == 42 and isinstance(expected[0], wp.Started)
    assert whole.results == [{"kind": "sample", "files": {"image": "/tmp/ü ñ/image.nii.gz"}}]
    assert whole.warnings == ["running on the CPU"] and whole.errors == ["something bad"]
    assert whole.log == ["loading ..."]


def test_result_lines_are_ascii_whatever_the_paths():
    line = wp.format_result({"files": {"image": "C:/Users/Zoë/Ünïcode/x.nii.gz"}})
    assert line.isascii() and line.startswith("RESULT {")
    assert wp.WorkerProtocol().parse_line(line).data["files"]["image"] == "C:/Users/Zoë/Ünïcode/x.nii.gz"


def test_plan_given_up_front_unplanned_stages_and_stale_totals():
    parser = wp.WorkerProtocol(plan=[("mask", 4), ("image", 4)], count=1)
    load = parser.parse_line("PROGRESS stage=load step=1/1")
    assert isinstance(load, wp.Progress) and load.fraction == 0.0 and parser.stage == "load"
    assert parser.parse_line("PROGRESS stage=mask step=2/4").fraction == pytest.approx(2 / 8)
    # the worker ran 2 image steps although the plan said 4: the reported total wins
    assert parser.parse_line("PROGRESS stage=image step=2/2").fraction == pytest.approx(1.0)
    # never goes backwards
    assert parser.parse_line("PROGRESS stage=mask step=1/4").fraction == pytest.approx(1.0)


def test_progress_without_any_plan_uses_the_stage_fraction():
    parser = wp.WorkerProtocol()
    assert parser.parse_line("PROGRESS stage=segment step=1/4").fraction == pytest.approx(0.25)


def test_eta_from_elapsed_time():
    now = [100.0]
    parser = wp.WorkerProtocol(plan=[("mask", 10)], clock=lambda: now[0])
    now[0] = 110.0
    event = parser.parse_line("PROGRESS stage=mask step=5/10")
    assert event.eta_seconds == pytest.approx(10.0)
    assert "about 10 s left" in event.describe()
    assert wp.format_seconds(3725) == "1 h 02 min" and wp.format_seconds(75) == "1 min 15 s"


@pytest.mark.parametrize("line", ["PROGRESS", "PROGRESS stage=mask", "PROGRESS stage=mask step=x/3",
                                  "RESULT not json", "RESULT [1, 2]", "PLAN stages=mask:x", "random text"])
def test_malformed_protocol_lines_become_log_text(line):
    parser = wp.WorkerProtocol()
    event = parser.parse_line(line)
    assert isinstance(event, wp.Message) and event.level == "log" and event.text == line


# -------------------------------------------------------------------------------------- exit codes
@pytest.mark.parametrize("code, errors, cancel, crashed, status, words", [
    (0, [], False, False, "ok", "Finished"),
    (0, [], True, False, "ok", "Finished"),  # finished before the cancel arrived
    (2, ["--ventricle-ml must be positive"], False, False, "user_error", "must be positive"),
    (2, [], False, False, "user_error", "refused"),
    (3, ["out of memory on device cuda"], False, False, "out_of_memory", "CPU device"),
    (130, ["cancelled"], True, False, "cancelled", "Cancelled"),
    (130, ["cancelled"], False, False, "cancelled", "interrupted"),
    (-15, [], True, False, "cancelled", "Cancelled"),
    (143, [], False, False, "cancelled", "interrupted"),
    (1, [], True, False, "cancelled", "Cancelled"),  # Windows TerminateProcess gives 1
    (-9, [], False, False, "killed", "memory"),
    (137, [], False, False, "killed", "memory"),
    (-11, [], False, False, "killed", "signal 11"),
    (None, [], False, True, "killed", "abruptly"),
    (1, ["internal error: ValueError: boom (a bug; please report it with the log)"], False, False, "failed", "boom"),
    (7, [], False, False, "failed", "exit code 7"),
])
def test_exit_codes_map_to_statuses_and_messages(code, errors, cancel, crashed, status, words):
    outcome = wp.describe_exit(code, errors, cancel_requested=cancel, crashed=crashed)
    assert outcome.status == status and words in outcome.message
    assert outcome.ok == (status == "ok")


def test_failed_without_error_line_quotes_the_last_log_line():
    parser = wp.WorkerProtocol()
    parser.feed("Traceback (most recent call last):\n  File x\nZeroDivisionError: division by zero\n")
    outcome = parser.finish(1)
    assert outcome.status == "failed" and "ZeroDivisionError" in outcome.message


def test_reserved_exit_codes_are_distinct():
    codes = [wp.EXIT_OK, wp.EXIT_FAILED, wp.EXIT_USER_ERROR, wp.EXIT_OUT_OF_MEMORY, wp.EXIT_CANCELLED]
    assert codes == [0, 1, 2, 3, 130]


def test_out_of_memory_detection():
    assert worker._is_out_of_memory(MemoryError())
    assert worker._is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert worker._is_out_of_memory(RuntimeError("MPS backend out of memory"))
    message = "[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory"
    assert worker._is_out_of_memory(RuntimeError(message))
    assert not worker._is_out_of_memory(RuntimeError("shape mismatch"))
    assert not worker._is_out_of_memory(ValueError("out of memory"))


# ----------------------------------------------------------------------------------- command lines
def test_logic_command_lines_parse_with_the_worker_parser():
    """What the Slicer Logic builds (worker_protocol.*_command) is what the worker accepts, both through
    `python -m VentricleSynthLib worker` (cli.py) and `python -m VentricleSynthLib.worker.server`."""
    from VentricleSynthLib import cli

    command = wp.generate_command("python", "/tmp/out dir", 42.5, guidance=3.0, steps=7, seed=11, count=3,
                                  device="cpu", models="/m", threads=2)
    assert command[:5] == ["python", "-m", "VentricleSynthLib", "worker", "generate"]
    for args in (worker.build_parser().parse_args(command[4:]), cli.build_parser().parse_args(command[3:])):
        assert (args.worker_command, args.ventricle_ml, args.guidance, args.steps, args.seed, args.count) == \
            ("generate", 42.5, 3.0, 7, 11, 3)
        assert (args.device, args.models, args.out, args.threads, args.watch_stdin) == \
            ("cpu", "/m", "/tmp/out dir", 2, True)
    defaults = worker.build_parser().parse_args(wp.generate_command("p", "/o", 40, watch_stdin=False)[4:])
    assert (defaults.guidance, defaults.steps, defaults.seed, defaults.count, defaults.device, defaults.models,
            defaults.watch_stdin) == (None, None, 0, 1, "auto", None, False)
    seg = worker.build_parser().parse_args(wp.segment_command("p", "/in.nii.gz", "/o", device="cuda", tta=True)[4:])
    assert (seg.worker_command, seg.input, seg.out, seg.device, seg.tta, seg.watch_stdin) == \
        ("segment", "/in.nii.gz", "/o", "cuda", True, True)
    info = cli.build_parser().parse_args(wp.info_command("p", models="/m")[3:])
    assert (info.worker_command, info.models) == ("info", "/m")


def test_usage_errors_exit_2_with_one_error_line(capsys):
    with pytest.raises(SystemExit) as exc:
        worker.main(["generate", "--out", "/tmp/x"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "--ventricle-ml" in err and len(err.strip().splitlines()) == 1


def test_read_generator_defaults(tmp_path):
    assert wp.read_generator_defaults(tmp_path) == {}
    (tmp_path / "mask_generator").mkdir()
    (tmp_path / "mask_generator" / "config.json").write_text(json.dumps({
        "volume_normalisation": {"min_ml": 8.5, "max_ml": 150.0}, "sampling": {"guidance": 2.0, "steps": 10},
        "profile": {"name": "tiny", "shape": [40, 48, 40], "spacing": [4, 4, 4]}}))
    defaults = wp.read_generator_defaults(tmp_path)
    assert defaults["trained_range_ml"] == (8.5, 150.0) and defaults["guidance"] == 2.0 and defaults["steps"] == 10
    assert defaults["profile"] == "tiny"


# ----------------------------------------------------------------------------------- process trees
@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_kill_process_tree_stops_children_and_grandchildren(tmp_path):
    pid_file = tmp_path / "pids"
    code = ("import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
            "time.sleep(120)\n")
    parent = subprocess.Popen([PY, "-c", code])
    try:
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(pid_file.read_text())
        assert child in wp.descendants(parent.pid)
        killed = wp.kill_process_tree(parent.pid, timeout=2.0)
        assert set(killed) == {parent.pid, child}
        assert parent.wait(timeout=10) == -signal.SIGTERM
        deadline = time.monotonic() + 10
        while wp._alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not wp._alive(child)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


# ---------------------------------------------------------------------------------- real worker runs
def _random_bundles(root: Path) -> Path:
    """Small random-weight generator bundles on a 16^3 grid of 4 mm voxels (no training)."""
    import torch

    from VentricleSynthLib.bundles import format as bundles
    from VentricleSynthLib.labels import LABELS, SCHEMA
    from VentricleSynthLib.generation.networks import image_autoencoder, image_unet, mask_autoencoder, mask_unet

    torch.manual_seed(0)
    shape, spacing = (16, 16, 16), 4.0
    affine = np.diag([spacing] * 3 + [1.0])
    affine[:3, 3] = -spacing * (np.asarray(shape) - 1) / 2
    ae = {"channels": [8, 8], "num_res_blocks": 1, "attention_levels": [False, False], "norm_num_groups": 8,
          "with_encoder_nonlocal_attn": False, "with_decoder_nonlocal_attn": False, "latent_channels": 3}
    unet = {"channels": [8, 8], "num_res_blocks": 1, "attention_levels": [False, False], "norm_num_groups": 8,
            "num_head_channels": 8}
    common = {"version": "test-random-weights",
              "scheduler": {"num_train_timesteps": 1000, "schedule": "scaled_linear_beta", "beta_start": 0.0015,
                            "beta_end": 0.0205},
              "scale_factor": 1.0, "latent_shape": [3, 8, 8, 8], "affine": affine.tolist(),
              "profile": {"name": "test-random", "spacing": [spacing] * 3, "shape": list(shape)},
              "labels": {"freesurfer": list(LABELS), "names": [SCHEMA[v][0] for v in LABELS]}}
    bundles.save_bundle(root / "mask_generator", {
        "name": "mask_generator", **common, "architecture": {"autoencoder": ae, "unet": unet},
        "volume_normalisation": {"min_ml": 5.0, "max_ml": 100.0, "quantity": "ventricle_ml"},
        "sampling": {"guidance": 2.0, "steps": 3}}, {"autoencoder": mask_autoencoder(ae), "unet": mask_unet(unet, 3)})
    image_ae = {**ae, "spade_intermediate_channels": 8}
    image_un = {**unet, "spade_intermediate_channels": 8}
    bundles.save_bundle(root / "image_generator", {
        "name": "image_generator", **common, "architecture": {"autoencoder": image_ae, "unet": image_un},
        "sampling": {"steps": 3}}, {"autoencoder": image_autoencoder(image_ae), "unet": image_unet(image_un, 3)})
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(models folder, origin): trained bundles when available, else random-weight plumbing bundles."""
    env = os.environ.get("VENTRICLESYNTH_TEST_MODELS")
    if env and (Path(env) / "mask_generator").is_dir():
        return Path(env), "env"
    bundled = REPO / "VentricleSynth" / "Resources" / "Models"
    if (bundled / "mask_generator").is_dir() and (bundled / "image_generator").is_dir():
        return bundled, "bundled"
    return _random_bundles(tmp_path_factory.mktemp("random-models")), "random"


def _run(command, **kw):
    return wp.run_worker(command, env=ENV, cwd=str(REPO), **kw)


def _generate(models_dir, out, **kw):
    defaults = wp.read_generator_defaults(models_dir)
    low, high = defaults["trained_range_ml"]
    options = {"ventricle_ml": round((low + high) / 2, 1), "steps": 2, "seed": 5, "count": 2, "device": "cpu",
               "threads": 1, **kw}
    return wp.generate_command(PY, str(out), models=str(models_dir), **options), options


def test_worker_generate_end_to_end_files_protocol_and_nodes(models, tmp_path):
    """Acceptance 4: the worker run with the arguments the Logic builds produces exactly the files the
    Logic loads; the progress bar reaches 100 % through one PROGRESS line per denoising step."""
    models_dir, _origin = models
    out = tmp_path / "out"
    command, options = _generate(models_dir, out)
    events = []
    outcome = _run(command, on_event=events.append, protocol=wp.WorkerProtocol(), timeout=600)
    assert outcome.ok, outcome.message + "\n" + "\n".join(str(e) for e in events[-20:])
    progress = [e for e in events if isinstance(e, wp.Progress)]
    assert len(progress) == options["count"] * 2 * options["steps"]  # mask + image, per sample
    assert [p.stage for p in progress[:4]] == ["mask", "mask", "image", "image"]
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
        assert record["got_ml"] == result["got_ml"]

    slicer = pytest.importorskip("slicer")
    from VentricleSynthLib.slicer_glue import mrml as glue
    from VentricleSynthLib.io.nifti import load_label_map
    from VentricleSynthLib.volumes import ventricle_volume_ml

    scene = slicer.vtkMRMLScene()
    for result in results:  # exactly what VentricleSynthLogic.generate's loader does
        volume_node, segmentation_node = glue.load_sample(result, scene=scene)
        assert glue.is_synthetic(volume_node) and volume_node.GetName().startswith("SYNTHETIC ")
        label = load_label_map(result["files"]["label"])
        assert np.allclose(glue.affine_from_node(volume_node), label.affine)
        report = glue.ventricle_report(segmentation_node)
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
    from VentricleSynthLib.slicer_glue import mrml as glue

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
    node = glue.node_from_array(image.astype(np.float32), affine, name="patient", scene=scene)
    input_path = tmp_path / "input.nii.gz"
    glue.write_node(node, input_path)  # exactly what VentricleSynthLogic.segment writes
    command = wp.segment_command(PY, str(input_path), str(tmp_path / "out"), device="cpu", models=str(models_dir),
                                 threads=1)
    parser = wp.WorkerProtocol(plan=[("segment", 1)])
    outcome = _run(command, protocol=parser, timeout=600)
    if (models_dir / "segmenter").is_dir():
        assert outcome.ok, outcome.message
        result = outcome.results[0]
        assert result["kind"] == "segmentation"
        segmentation = glue.load_segmentation_result(result, node, scene=scene)
        assert glue.ventricle_report(segmentation)["ventricle_ml"] == pytest.approx(result["ventricle_ml"], abs=1e-3)
    else:
        assert outcome.status == "user_error" and outcome.exit_code == 2 and outcome.results == []
        assert "segmenter" in outcome.message and len(parser.errors) == 1
        assert not (tmp_path / "out" / worker.SEGMENTATION_FILE).exists()


def test_worker_info_lists_verified_bundles(models):
    models_dir, _origin = models
    outcome = _run(wp.info_command(PY, models=str(models_dir)), timeout=300)
    assert outcome.ok, outcome.message
    info = outcome.results[0]
    assert info["kind"] == "models" and Path(info["models_dir"]) == Path(models_dir).resolve()
    names = {m["name"]: m for m in info["models"]}
    assert names["mask_generator"]["verified"] and names["image_generator"]["verified"]
    assert info["versions"]["torch"]


def test_library_modules_for_slicer_import_no_heavy_packages():
    """What Slicer's own process imports (module file, protocol, glue, worker entry) pulls in neither
    torch nor slicer/vtk/qt at import time."""
    code = ("import sys\n"
            "import VentricleSynthLib.worker.protocol, VentricleSynthLib.slicer_glue.mrml, VentricleSynthLib.worker.server\n"
            "import VentricleSynthLib.cli\n"
            "bad = sorted(m for m in ('torch', 'monai', 'slicer', 'vtk', 'qt', 'nnunetv2') if m in sys.modules)\n"
            "print(bad)\n"
            "sys.exit(1 if bad else 0)\n")
    done = subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd=REPO, env=ENV, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_run_worker_timeout_stops_the_process_and_says_so():
    outcome = wp.run_worker([PY, "-c", "import time; print('PROGRESS stage=x step=0/1', flush=True); time.sleep(60)"],
                            env=ENV, timeout=1.0)
    assert outcome.status == "timeout" and "did not finish within 1 s" in outcome.message


# ------------------------------------------------- the Slicer Logic itself (blocking mode, stubbed Qt)
@pytest.fixture
def module_logic(monkeypatch, models):
    """VentricleSynth/VentricleSynth.py imported for real, with stand-ins for what slicer-core lacks (Qt,
    ScriptedLoadableModule, parameterNodeWrapper) and a scene as slicer.mrmlScene."""
    import importlib.util
    import types

    slicer = pytest.importorskip("slicer")

    settings: dict = {}

    class QSettings:
        def value(self, key, default=None):
            return settings.get(key, default)

        def setValue(self, key, value):
            settings[key] = value

    qt = types.ModuleType("qt")
    qt.QSettings = QSettings
    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class _Base:
        def __init__(self, *args, **kwargs):
            pass

    import unittest

    slm.ScriptedLoadableModule = slm.ScriptedLoadableModuleWidget = slm.ScriptedLoadableModuleLogic = _Base
    slm.ScriptedLoadableModuleTest = unittest.TestCase
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper = lambda cls: cls
    pnw.WithinRange = pnw.Choice = lambda *args, **kwargs: None
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", slm)
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", pnw)
    monkeypatch.setattr(slicer, "mrmlScene", slicer.vtkMRMLScene(), raising=False)
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # no __pycache__ inside the module folder
    spec = importlib.util.spec_from_file_location("VentricleSynth", REPO / "VentricleSynth" / "VentricleSynth.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    logic = module.VentricleSynthLogic()
    logic.setUserModelsDir(str(models[0]))
    return module, logic


def test_slicer_logic_generates_and_segments_in_blocking_mode(module_logic):
    """The Logic's own code path: command line, working directory, environment, temporary folder,
    loading RESULT files into nodes, cleanup. (The QProcess path shares all of it but the process.)"""
    module, logic = module_logic
    from VentricleSynthLib.slicer_glue import mrml as glue

    assert logic.modelsDir() == str(logic.userModelsDir())
    defaults = logic.generatorDefaults()
    low, high = defaults["trained_range_ml"]
    events = []
    task = logic.generate(round((low + high) / 2, 1), steps=2, seed=3, count=2, device="cpu",
                          waitForCompletion=True, onEvent=events.append, timeout=600)
    assert task.outcome.ok, task.outcome.message
    assert task.command[1:5] == ["-m", "VentricleSynthLib", "worker", "generate"] and "--watch-stdin" in task.command
    assert not os.path.exists(task.tempDir), "temporary folder left behind"
    assert len(task.loaded) == 2 and not logic.isRunning()
    progress = [e for e in events if isinstance(e, wp.Progress)]
    assert progress[-1].fraction == pytest.approx(1.0) and len(progress) == 2 * 2 * 2
    volume_node, segmentation_node = task.loaded[0]
    assert glue.is_synthetic(volume_node) and glue.is_synthetic(segmentation_node)
    assert volume_node.GetScene() is not None  # in slicer.mrmlScene
    record = json.loads(volume_node.GetAttribute(glue.RECORD_ATTRIBUTE))
    assert glue.ventricle_report(segmentation_node)["ventricle_ml"] == pytest.approx(record["got_ml"], abs=1e-3)

    task = logic.segment(volume_node, device="cpu", waitForCompletion=True, timeout=600)
    assert not os.path.exists(task.tempDir)
    if (Path(logic.modelsDir()) / "segmenter").is_dir():
        assert task.outcome.ok, task.outcome.message
        assert glue.ventricle_report(task.loaded[0])["ventricle_ml"] >= 0
    else:  # no segmenter bundle (or this small random-model sample refused as input): a clear refusal
        assert task.outcome.status == "user_error" and task.outcome.message and not task.loaded

    task = logic.modelsInfo(waitForCompletion=True, timeout=300)
    assert task.outcome.ok and task.outcome.results[0]["kind"] == "models"


def test_slicer_logic_reports_missing_models_and_dependencies(module_logic, tmp_path):
    module, logic = module_logic
    assert set(logic.missingDependencies()) <= set(module.WORKER_PACKAGES.values())
    assert "torch" not in logic.missingDependencies()  # this venv has it
    logic.setUserModelsDir(str(tmp_path))
    assert logic.generatorDefaults() == {}
    task = logic.generate(40.0, steps=1, device="cpu", waitForCompletion=True, timeout=300)
    assert task.outcome.status == "user_error" and "not found" in task.outcome.message
    assert not task.loaded and not os.path.exists(task.tempDir)
