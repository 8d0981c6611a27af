"""The client side of the worker: the exact command lines the Slicer Logic runs (and that the worker's
parsers accept), and the blocking runner on tiny stand-in workers (merged channels, cancel, timeout)."""

from __future__ import annotations

import os
import sys
import time

import pytest

from VentricleSynthLib.worker import client
from VentricleSynthLib.worker import protocol as wp
from VentricleSynthLib.worker import server as worker

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
PY = sys.executable


# ----------------------------------------------------------------------------------- command lines
def test_command_lines_are_exactly_what_the_logic_has_always_run():
    assert client.generate_command("py", "/o", 40, guidance=3, steps=7, seed=1, count=2, device="cpu", models="/m",
                                   threads=2) == [
        "py", "-m", "VentricleSynthLib", "worker", "generate", "--ventricle-ml", "40.0", "--guidance", "3.0",
        "--steps", "7", "--seed", "1", "--count", "2", "--device", "cpu", "--models", "/m", "--threads", "2",
        "--out", "/o", "--watch-stdin"]
    assert client.generate_command("py", "/o", 12.25) == [
        "py", "-m", "VentricleSynthLib", "worker", "generate", "--ventricle-ml", "12.25", "--seed", "0", "--count",
        "1", "--device", "auto", "--out", "/o", "--watch-stdin"]
    assert client.segment_command("py", "/in.nii.gz", "/o", models="/m", tta=True) == [
        "py", "-m", "VentricleSynthLib", "worker", "segment", "--input", "/in.nii.gz", "--out", "/o", "--device",
        "auto", "--models", "/m", "--tta", "--watch-stdin"]
    assert client.info_command("py") == ["py", "-m", "VentricleSynthLib", "worker", "info"]
    assert client.worker_command("py", "x", {"a_b": 1, "off": False, "none": None, "on": True}, flags=["--z"]) == [
        "py", "-m", "VentricleSynthLib", "worker", "x", "--a-b", "1", "--on", "--z"]


def test_logic_command_lines_parse_with_the_worker_parser():
    """What the Slicer Logic builds (worker.client.*_command) is what the worker accepts, both through
    `python -m VentricleSynthLib worker` (cli.py) and `python -m VentricleSynthLib.worker.server`."""
    from VentricleSynthLib import cli

    command = client.generate_command("python", "/tmp/out dir", 42.5, guidance=3.0, steps=7, seed=11, count=3,
                                  device="cpu", models="/m", threads=2)
    assert command[:5] == ["python", "-m", "VentricleSynthLib", "worker", "generate"]
    for args in (worker.build_parser().parse_args(command[4:]), cli.build_parser().parse_args(command[3:])):
        assert (args.worker_command, args.ventricle_ml, args.guidance, args.steps, args.seed, args.count) == \
            ("generate", 42.5, 3.0, 7, 11, 3)
        assert (args.device, args.models, args.out, args.threads, args.watch_stdin) == \
            ("cpu", "/m", "/tmp/out dir", 2, True)
    defaults = worker.build_parser().parse_args(client.generate_command("p", "/o", 40, watch_stdin=False)[4:])
    assert (defaults.guidance, defaults.steps, defaults.seed, defaults.count, defaults.device, defaults.models,
            defaults.watch_stdin) == (None, None, 0, 1, "auto", None, False)
    assert defaults.no_refine is False
    no_refine = client.generate_command("p", "/o", 40, refine=False)
    assert "--no-refine" in no_refine and worker.build_parser().parse_args(no_refine[4:]).no_refine is True
    seg = worker.build_parser().parse_args(client.segment_command("p", "/in.nii.gz", "/o", device="cuda", tta=True)[4:])
    assert (seg.worker_command, seg.input, seg.out, seg.device, seg.tta, seg.watch_stdin) == \
        ("segment", "/in.nii.gz", "/o", "cuda", True, True)
    info = cli.build_parser().parse_args(client.info_command("p", models="/m")[3:])
    assert (info.worker_command, info.models) == ("info", "/m")



# ------------------------------------------------------------------------------------ blocking runner
_STAND_IN = """
import os, sys, time
print(f"WORKER pid={os.getpid()} version=test command=generate", flush=True)
print("PLAN count=1 stages=mask:2", flush=True)
print("PROGRESS stage=mask step=1/2 sample=1/1", flush=True)
print("warning: on stderr", file=sys.stderr, flush=True)
print('RESULT {"kind": "sample", "index": 0}', flush=True)
if sys.argv[1] == "sleep":
    time.sleep(60)
print("PROGRESS stage=mask step=2/2 sample=1/1", flush=True)
sys.stdout.write("error: the last line has no newline")
sys.stdout.flush()
sys.exit(int(sys.argv[2]))
"""


def test_run_worker_parses_both_channels_to_the_end_and_maps_the_exit_code():
    events = []
    outcome = client.run_worker([PY, "-c", _STAND_IN, "run", "2"], env=ENV, on_event=events.append)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["Started", "Plan", "Progress", "Message", "Result", "Progress", "Message"]
    assert events[3] == wp.Message("warning", "on stderr")
    assert events[-2].fraction == pytest.approx(1.0)
    assert (outcome.status, outcome.exit_code, outcome.message) == ("user_error", 2, "the last line has no newline")
    assert outcome.results == [{"kind": "sample", "index": 0}]


def test_run_worker_cancel_stops_the_worker_and_keeps_what_it_announced():
    events = []
    started = time.monotonic()
    outcome = client.run_worker([PY, "-c", _STAND_IN, "sleep", "0"], env=ENV, on_event=events.append,
                                should_cancel=lambda: any(isinstance(e, wp.Result) for e in events))
    assert time.monotonic() - started < 30
    assert outcome.status == "cancelled" and outcome.message == "Cancelled."
    assert outcome.results == [{"kind": "sample", "index": 0}]
    assert not any(isinstance(e, wp.Progress) and e.step == 2 for e in events)


def test_run_worker_timeout_stops_the_process_and_says_so():
    """No WORKER line, stdin not read: nothing hears the graceful stop, so the kill comes after the grace."""
    code = "import time; print('PROGRESS stage=x step=0/1', flush=True); time.sleep(60)"
    started = time.monotonic()
    outcome = client.run_worker([PY, "-c", code], env=ENV, timeout=1.0, grace=1.0)
    assert 2.0 <= time.monotonic() - started < 30
    assert outcome.status == "timeout" and "did not finish within 1 s" in outcome.message


# Stops on SIGTERM only (its pid from its WORKER line), leaving its pid in a file; the WORKER line comes late.
_SIGTERM_ONLY = """
import os, signal, sys, time
def stop(*_):
    open(sys.argv[1], "w").write(str(os.getpid()))
    os._exit(130)
signal.signal(signal.SIGTERM, stop)
time.sleep(float(sys.argv[2]))
print(f"WORKER pid={os.getpid()} version=test command=generate", flush=True)
print("PROGRESS stage=mask step=1/2", flush=True)
time.sleep(60)
"""


def test_run_worker_signals_a_worker_whose_pid_arrives_after_the_cancel(tmp_path):
    events = []
    started = time.monotonic()
    outcome = client.run_worker([PY, "-c", _SIGTERM_ONLY, str(tmp_path / "stopped"), "0.5"], env=ENV, grace=30,
                                on_event=events.append, should_cancel=lambda: True)
    assert time.monotonic() - started < 20  # well before the grace is over
    assert (outcome.status, outcome.exit_code) == ("cancelled", wp.EXIT_CANCELLED)
    assert (tmp_path / "stopped").read_text() == str(events[0].pid)


def test_run_worker_interrupted_by_its_caller_stops_the_worker_first(tmp_path):
    def interrupt(event):
        if isinstance(event, wp.Progress):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        client.run_worker([PY, "-c", _SIGTERM_ONLY, str(tmp_path / "stopped"), "0"], env=ENV, on_event=interrupt)
    assert (tmp_path / "stopped").read_text().isdigit()  # it got its SIGTERM before run_worker gave up
