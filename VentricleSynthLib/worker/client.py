"""The client side of the worker: the exact command lines the Slicer Logic runs, and a blocking runner
that parses the worker's output as it comes (the Logic's blocking mode, scripts and tests).

Standard library only, like `worker.protocol`.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from typing import Callable, Iterable

from VentricleSynthLib.worker.processes import GRACE_SECONDS, WorkerStop
from VentricleSynthLib.worker.protocol import Event, Outcome, WorkerProtocol


# ------------------------------------------------------------------------------------- command lines
def worker_command(python: str, command: str, options: dict, flags: Iterable[str] = ()) -> list[str]:
    """`python -m VentricleSynthLib worker COMMAND --key value ...` from a dict (None values dropped).
    Keys use underscores or dashes; booleans True become bare flags."""
    args = [python, "-m", "VentricleSynthLib", "worker", command]
    for key, value in options.items():
        if value is None or value is False:
            continue
        option = "--" + key.replace("_", "-")
        if value is True:
            args.append(option)
        else:
            args += [option, str(value)]
    args += list(flags)
    return args


def generate_command(python: str, out: str, ventricle_ml: float, guidance: float | None = None,
                     steps: int | None = None, seed: int = 0, count: int = 1, device: str = "auto",
                     models: str | None = None, threads: int | None = None, watch_stdin: bool = True,
                     image_steps: int | None = None, refine: bool = True) -> list[str]:
    """The exact `worker generate` command line the Slicer Logic runs (`steps`: both stages; `image_steps`:
    the image stage, over `steps`; `refine` False: `--no-refine`, the sampled label map as it is)."""
    return worker_command(python, "generate", {
        "ventricle_ml": repr(float(ventricle_ml)), "guidance": None if guidance is None else repr(float(guidance)),
        "steps": steps, "image_steps": image_steps, "seed": int(seed), "count": int(count), "device": device,
        "models": models, "threads": threads, "out": out, "no_refine": not refine,
        "watch_stdin": bool(watch_stdin)})


def segment_command(python: str, input_path: str, out: str, device: str = "auto", models: str | None = None,
                    tta: bool = False, threads: int | None = None, watch_stdin: bool = True) -> list[str]:
    """The exact `worker segment` command line the Slicer Logic runs."""
    return worker_command(python, "segment", {"input": input_path, "out": out, "device": device, "models": models,
                                              "tta": bool(tta), "threads": threads, "watch_stdin": bool(watch_stdin)})


def info_command(python: str, models: str | None = None) -> list[str]:
    return worker_command(python, "info", {"models": models})



# ------------------------------------------------------------------------------- blocking runner
def _write_cancel(proc: subprocess.Popen) -> None:
    """'cancel' and end of file on the worker's stdin (a launcher passes both through)."""
    try:
        proc.stdin.write(b"cancel\n")
        proc.stdin.flush()
    finally:
        proc.stdin.close()


def run_worker(command: list[str], env: dict | None = None, cwd: str | None = None,
               on_event: Callable[[Event], None] | None = None, protocol: WorkerProtocol | None = None,
               timeout: float | None = None, should_cancel: Callable[[], bool] | None = None,
               poll_seconds: float = 0.1, grace: float = GRACE_SECONDS) -> Outcome:
    """Run a worker to completion, parsing its output as it comes (the Logic's blocking mode, tests).

    stdout and stderr are merged (as in the Slicer panel); stdin stays open so `--watch-stdin` works.
    `should_cancel()` returning True, a timeout or Ctrl+C stop it as `WorkerStop` does in the QProcess mode:
    'cancel' on stdin and SIGTERM to the worker, its whole tree killed after `grace` seconds.
    """
    protocol = protocol or WorkerProtocol()
    popen_kw = {}
    if os.name == "nt":
        popen_kw["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
    else:
        popen_kw["start_new_session"] = True  # our own process group: a terminal Ctrl+C reaches us only
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.PIPE,
                            env=env, cwd=cwd, bufsize=0, **popen_kw)
    lines: queue.Queue = queue.Queue()

    def reader():
        for raw in iter(proc.stdout.readline, b""):
            lines.put(raw)
        lines.put(None)

    def stop_worker() -> WorkerStop:
        stop = WorkerStop(proc.pid, protocol.pid, write_cancel=lambda: _write_cancel(proc), grace=grace)
        stop.begin()
        return stop

    thread = threading.Thread(target=reader, name="ventriclesynth-worker-reader", daemon=True)
    thread.start()
    stop: WorkerStop | None = None
    timed_out = False
    deadline = None if timeout is None else time.monotonic() + timeout
    eof = False
    try:
        while not eof:
            try:
                raw = lines.get(timeout=poll_seconds)
            except queue.Empty:
                raw = b""
            if raw is None:
                eof = True
            elif raw:
                for event in protocol.feed(raw):
                    if on_event:
                        on_event(event)
            if stop is None:
                timed_out = deadline is not None and time.monotonic() > deadline
                if timed_out or (should_cancel and should_cancel()):
                    stop = stop_worker()
            elif not stop.killed:
                stop.found_worker(protocol.pid)  # a WORKER line still in the pipe when the cancel came
                if proc.poll() is not None or stop.overdue:  # leftover children, or a worker that did not stop
                    stop.kill(root_exited=proc.poll() is not None)
            elif stop.overdue and proc.poll() is not None:
                break  # a process outside the recorded tree still holds our stdout: stop reading
    except BaseException:
        stop = stop or stop_worker()
        try:
            stop.wait(lambda: proc.poll() is not None)
        finally:
            stop.kill(root_exited=proc.poll() is not None)
            proc.wait()
        raise
    finally:
        if proc.stdin:
            try:
                proc.stdin.close()
            except OSError:
                pass
    proc.wait()
    if stop is not None:
        stop.kill(root_exited=True)  # whatever the cancelled worker had started must not outlive it
    thread.join(timeout=5)
    for event in protocol.flush():
        if on_event:
            on_event(event)
    outcome = protocol.finish(proc.returncode, cancel_requested=stop is not None)
    if timed_out and outcome.status == "cancelled":
        outcome.status, outcome.message = "timeout", f"The worker did not finish within {timeout:g} s and was stopped."
    return outcome
