"""The module's self-test in a running Slicer (bundled models, CPU): generate a sample, segment it, cancel a run.
Each takes the ScriptedLoadableModuleTest (for its assertions and delayDisplay) and the module's Logic. Runs are
non-blocking: events are processed while waiting, so the GUI keeps drawing."""

from __future__ import annotations

import json
import os
import time

from VentricleSynthLib.slicer_glue import mrml
from VentricleSynthLib.slicer_glue.segmentation_nodes import ventricle_report
from VentricleSynthLib.worker.protocol import Progress


def wait(done: list, seconds: float = 1800, until=None) -> None:
    """Process Slicer's events until `done` holds the finished task (or `until()` is true), `seconds` at most."""
    import slicer

    deadline = time.monotonic() + seconds
    while not done and not (until and until()) and time.monotonic() < deadline:
        slicer.app.processEvents()
        time.sleep(0.02)


def generate_and_segment(case, logic) -> None:
    low, high = logic.generatorDefaults()["trained_range_ml"]
    case.delayDisplay("Generating one sample on the CPU")
    done = []
    task = logic.generate(round((low + high) / 2, 1), seed=7, device="cpu", onFinished=done.append)
    wait(done)
    case.assertTrue(task.outcome and task.outcome.ok, task.outcome and task.outcome.message)
    case.assertFalse(os.path.exists(task.tempDir), "temporary folder left behind")
    volume_node, segmentation_node = task.loaded[0]
    case.assertTrue(volume_node.GetName().startswith(mrml.SYNTHETIC_PREFIX) and mrml.is_synthetic(volume_node))
    case.assertTrue(mrml.is_synthetic(segmentation_node))
    record = json.loads(volume_node.GetAttribute(mrml.RECORD_ATTRIBUTE))
    case.assertAlmostEqual(ventricle_report(segmentation_node)["ventricle_ml"], record["got_ml"], delta=0.01)
    case.delayDisplay("Segmenting the synthetic sample")
    done = []
    task = logic.segment(volume_node, device="cpu", onFinished=done.append)
    wait(done)
    case.assertTrue(task.outcome and task.outcome.ok, task.outcome and task.outcome.message)
    case.assertGreater(ventricle_report(task.loaded[0])["ventricle_ml"], 0.0)


def cancel_non_blocking(case, logic) -> None:
    case.delayDisplay("Cancelling a running generation")
    seen, done = [], []
    task = logic.generate(logic.generatorDefaults()["trained_range_ml"][0] + 1.0, count=5, device="cpu",
                          onEvent=seen.append, onFinished=done.append)
    wait(done, 600, until=lambda: any(isinstance(e, Progress) for e in seen))
    case.assertFalse(done, "the run ended before it could be cancelled")
    task.cancel()
    wait(done, 600)
    case.assertEqual(task.outcome and task.outcome.status, "cancelled", task.outcome and task.outcome.message)
    case.assertFalse(os.path.exists(task.tempDir))
    case.assertFalse(logic.isRunning())
