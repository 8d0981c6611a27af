"""The worker's line protocol: the streaming parser (exact progress fractions, chunks split anywhere,
malformed lines), ASCII result lines, and what each exit code means for the user."""

from __future__ import annotations

import pytest

from VentricleSynthLib.worker import protocol as wp


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
