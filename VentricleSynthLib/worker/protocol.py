"""The line protocol between the Slicer module and `python -m VentricleSynthLib worker`: the events, how
the worker formats them, a streaming parser, and what an exit code means for the user.

Pure Python (standard library only): the Slicer Logic imports it inside Slicer's own process, where
torch may not even be installed. Nothing here imports torch, numpy, qt, vtk or slicer. Stopping a
worker's process tree lives in `worker.processes`; command lines and the blocking runner in `worker.client`.

Lines the worker prints on stdout (stderr carries `error:`/`warning:` lines and free log text; the
Logic merges both channels, and the parser accepts every kind of line on either):

    WORKER pid=<int> version=<str> command=<generate|segment|info>
    PLAN count=<K> stages=<name>:<steps>,<name>:<steps>
    PROGRESS stage=<name> step=<i>/<n> [sample=<k>/<K>]
    RESULT <one-line JSON object>
    warning: <text>
    error: <text>
    anything else: log text

`PROGRESS` comes once per denoising step, so the overall fraction is exact: with the plan known,
fraction = steps done in earlier samples and earlier stages + i, over count * steps per sample.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Union

# Reserved exit codes of the worker.
EXIT_OK = 0
EXIT_FAILED = 1  # unexpected: a bug; the traceback is in the log
EXIT_USER_ERROR = 2  # bad input or request; one `error:` line says what
EXIT_OUT_OF_MEMORY = 3  # CUDA/MPS/host out of memory; the `error:` line carries a hint
EXIT_CANCELLED = 130  # SIGINT/SIGTERM or the parent went away

OUT_OF_MEMORY_HINT = ("Try the CPU device (slower but uses main memory), generate one sample at a time, "
                      "or close other programs that use the GPU/memory.")

# Signals that mean "someone stopped the worker": seen as negative codes (Python's subprocess),
# 128+N (shells, QProcess on some platforms) or the worker's own 130.
_INTERRUPT_CODES = {EXIT_CANCELLED, 128 + 15, -15, -2}
_KILL_CODES = {128 + 9, -9}

_PROGRESS_STEP = re.compile(r"^(\d+)/(\d+)$")


# --------------------------------------------------------------------------------------------- events
@dataclass
class Started:
    pid: int
    version: str = ""
    command: str = ""


@dataclass
class Plan:
    stages: list[tuple[str, int]]
    count: int = 1


@dataclass
class Progress:
    stage: str
    step: int
    total: int
    sample: int = 1
    count: int = 1
    fraction: float = 0.0  # overall, across samples and planned stages, in [0, 1]
    eta_seconds: float | None = None

    @property
    def percent(self) -> int:
        return int(round(100 * self.fraction))

    def describe(self) -> str:
        text = f"{self.stage}: step {self.step}/{self.total}"
        if self.count > 1:
            text = f"sample {self.sample}/{self.count}, " + text
        if self.eta_seconds is not None and self.fraction < 1:
            text += f" (about {format_seconds(self.eta_seconds)} left)"
        return text


@dataclass
class Result:
    data: dict

    @property
    def kind(self) -> str:
        return str(self.data.get("kind", ""))


@dataclass
class Message:
    level: str  # "log" | "warning" | "error"
    text: str


# Union, not `A | B`: this module runs in Slicer's Python, where `|` between classes needs Python >= 3.10.
Event = Union[Started, Plan, Progress, Result, Message]


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


# ----------------------------------------------------------------------------------- line formatting
def format_progress(stage: str, step: int, total: int, sample: int | None = None, count: int | None = None) -> str:
    line = f"PROGRESS stage={stage} step={int(step)}/{int(total)}"
    if sample is not None and count is not None:
        line += f" sample={int(sample)}/{int(count)}"
    return line


def format_plan(stages: Iterable[tuple[str, int]], count: int) -> str:
    return f"PLAN count={int(count)} stages=" + ",".join(f"{name}:{int(n)}" for name, n in stages)


def format_result(data: dict) -> str:
    # ensure_ascii keeps the line ASCII whatever the paths contain (non-ASCII Windows user folders).
    return "RESULT " + json.dumps(data, ensure_ascii=True, separators=(",", ":"))


def format_started(command: str, version: str, pid: int | None = None) -> str:
    return f"WORKER pid={os.getpid() if pid is None else int(pid)} version={version} command={command}"


def _fields(text: str) -> dict[str, str]:
    out = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep:
            out[key] = value
    return out


# ------------------------------------------------------------------------------------------- parser
class WorkerProtocol:
    """Streaming parser: feed it arbitrary chunks of worker output, get events back.

    `plan` (stage, steps) pairs and `count` may be given up front (the Logic knows them when it sets
    --steps); a `PLAN` line from the worker replaces them. Without either, the fraction is that of
    the current stage. Stages outside the plan (e.g. loading) move the label, not the bar.
    """

    def __init__(self, plan: Iterable[tuple[str, int]] | None = None, count: int = 1,
                 clock: Callable[[], float] = time.monotonic, max_log_lines: int = 2000):
        self.plan: list[tuple[str, int]] = [(str(s), int(n)) for s, n in (plan or [])]
        self.count = max(1, int(count))
        self._clock = clock
        self._start = clock()
        self._buffer = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # chunks may split a character
        self.fraction = 0.0
        self.stage = ""
        self.pid: int | None = None
        self.results: list[dict] = []
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.log: list[str] = []  # capped: the last `max_log_lines` lines of free text
        self._max_log = max_log_lines

    # -- feeding
    def feed(self, chunk: str | bytes) -> list[Event]:
        if isinstance(chunk, (bytes, bytearray)):
            chunk = self._decoder.decode(bytes(chunk))
        self._buffer += chunk.replace("\r\n", "\n").replace("\r", "\n")
        *lines, self._buffer = self._buffer.split("\n")
        events = []
        for line in lines:
            event = self.parse_line(line)
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[Event]:
        """Parse what is left after the stream ended without a final newline."""
        rest, self._buffer = self._buffer + self._decoder.decode(b"", final=True), ""
        event = self.parse_line(rest) if rest.strip() else None
        return [event] if event is not None else []

    # -- one line
    def parse_line(self, line: str) -> Event | None:
        line = line.rstrip("\n")
        stripped = line.strip()
        if not stripped:
            return None
        head, _, rest = stripped.partition(" ")
        if head == "PROGRESS":
            event = self._progress(rest)
            if event is not None:
                return event
        elif head == "RESULT":
            try:
                data = json.loads(rest)
            except ValueError:
                data = None
            if isinstance(data, dict):
                self.results.append(data)
                return Result(data)
        elif head == "PLAN":
            event = self._plan(rest)
            if event is not None:
                return event
        elif head == "WORKER":
            values = _fields(rest)
            try:
                self.pid = int(values.get("pid", ""))
            except ValueError:
                self.pid = None
            return Started(self.pid or 0, values.get("version", ""), values.get("command", ""))
        lowered = stripped.lower()
        if lowered.startswith("error:"):
            text = stripped[len("error:"):].strip()
            self.errors.append(text)
            return Message("error", text)
        if lowered.startswith("warning:"):
            text = stripped[len("warning:"):].strip()
            self.warnings.append(text)
            return Message("warning", text)
        self.log.append(line)
        if len(self.log) > self._max_log:
            del self.log[: len(self.log) - self._max_log]
        return Message("log", line)

    def _plan(self, rest: str) -> Plan | None:
        values = _fields(rest)
        stages = []
        for item in filter(None, values.get("stages", "").split(",")):
            name, _, n = item.partition(":")
            if not name or not n.isdigit():
                return None
            stages.append((name, int(n)))
        try:
            count = int(values.get("count", "1"))
        except ValueError:
            return None
        self.plan, self.count = stages, max(1, count)
        return Plan(list(stages), self.count)

    def _progress(self, rest: str) -> Progress | None:
        values = _fields(rest)
        stage = values.get("stage")
        match = _PROGRESS_STEP.match(values.get("step", ""))
        if not stage or not match:
            return None
        step, total = int(match.group(1)), int(match.group(2))
        sample, count = 1, self.count
        sample_match = _PROGRESS_STEP.match(values.get("sample", ""))
        if sample_match:
            sample, count = int(sample_match.group(1)), max(1, int(sample_match.group(2)))
            if count != self.count:
                self.count = count
        self.stage = stage
        self.fraction = max(self.fraction, self._fraction(stage, step, total, sample))
        eta = None
        if 0 < self.fraction < 1:
            elapsed = self._clock() - self._start
            eta = elapsed * (1 - self.fraction) / self.fraction
        return Progress(stage, step, total, sample, count, self.fraction, eta)

    def _fraction(self, stage: str, step: int, total: int, sample: int) -> float:
        names = [name for name, _ in self.plan]
        if stage not in names:
            if self.plan:
                return self.fraction  # an unplanned stage (loading, writing) leaves the bar alone
            return min(1.0, step / total) if total > 0 else self.fraction
        index = names.index(stage)
        if self.plan[index][1] != total:  # trust what the worker reports over a stale plan
            self.plan[index] = (stage, total)
        per_sample = sum(n for _, n in self.plan)
        if per_sample <= 0:
            return self.fraction
        done = (min(sample, self.count) - 1) * per_sample + sum(n for _, n in self.plan[:index]) + min(step, total)
        return min(1.0, done / (self.count * per_sample))

    # -- the end
    def finish(self, exit_code: int | None, cancel_requested: bool = False, crashed: bool = False) -> "Outcome":
        self.flush()
        return describe_exit(exit_code, self.errors, cancel_requested=cancel_requested, crashed=crashed,
                             results=self.results, log_tail=self.log[-20:])


# -------------------------------------------------------------------------------------- exit codes
@dataclass
class Outcome:
    status: str  # ok | cancelled | user_error | out_of_memory | killed | failed | timeout
    exit_code: int | None
    message: str
    results: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def describe_exit(exit_code: int | None, errors: Iterable[str] = (), cancel_requested: bool = False,
                  crashed: bool = False, results: list[dict] | None = None,
                  log_tail: Iterable[str] = ()) -> Outcome:
    """Map a worker's exit code (plus its `error:` lines) to a status and a message for the user."""
    errors = [e for e in errors if e]
    last_error = errors[-1] if errors else ""
    results = list(results or [])
    if exit_code == EXIT_OK and not crashed:
        return Outcome("ok", exit_code, "Finished.", results)
    if cancel_requested:
        return Outcome("cancelled", exit_code, "Cancelled.", results)
    if exit_code == EXIT_USER_ERROR:
        return Outcome("user_error", exit_code, last_error or "The worker refused the request (bad input).", results)
    if exit_code == EXIT_OUT_OF_MEMORY:
        message = last_error or "Out of memory."
        if OUT_OF_MEMORY_HINT not in message:
            message = f"{message} {OUT_OF_MEMORY_HINT}"
        return Outcome("out_of_memory", exit_code, message, results)
    if exit_code in _INTERRUPT_CODES:
        return Outcome("cancelled", exit_code, "The worker was interrupted.", results)
    if exit_code in _KILL_CODES:
        return Outcome("killed", exit_code, "The worker was killed (SIGKILL): the system probably ran out of memory. "
                       + OUT_OF_MEMORY_HINT, results)
    if exit_code is not None and exit_code < 0:
        return Outcome("killed", exit_code, f"The worker was killed by signal {-exit_code}.", results)
    if crashed or exit_code is None:
        return Outcome("killed", exit_code, "The worker stopped abruptly (it crashed or the system killed it, "
                       "often for lack of memory). " + OUT_OF_MEMORY_HINT, results)
    detail = last_error
    if not detail:
        tail = [line.strip() for line in log_tail if line.strip()]
        detail = tail[-1] if tail else ""
    message = f"The worker failed unexpectedly (exit code {exit_code})" + (f": {detail}" if detail else "")
    message = message.rstrip(".") + ". See the log for details."
    return Outcome("failed", exit_code, message, results)
