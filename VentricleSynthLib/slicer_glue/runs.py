"""The worker runs the Slicer module offers, as `WorkerTask`s ready to launch: generate (samples loaded as a
synthetic volume + segmentation), segment (a volume node written for the worker, the result loaded on its
grid) and info (the models). Each run gets its own temporary folder, removed when the task ends."""

from __future__ import annotations

import os
import shutil

from VentricleSynthLib.slicer_glue.environment import temporary_directory, worker_environment
from VentricleSynthLib.slicer_glue.i18n import tr as _
from VentricleSynthLib.slicer_glue.results import load_sample, load_segmentation_result
from VentricleSynthLib.slicer_glue.task import WorkerTask
from VentricleSynthLib.slicer_glue.volume_nodes import write_node
from VentricleSynthLib.worker.client import generate_command, info_command, segment_command
from VentricleSynthLib.worker.protocol import WorkerProtocol


def worker_task(kind, command, temp_dir, cwd, plan=None, count=1, loader=None, on_event=None,
                on_finished=None) -> WorkerTask:
    """A task running `command` in `cwd` with the worker's environment, its output parsed with `plan`."""
    return WorkerTask(kind, command, cwd, worker_environment(command[0]), temp_dir,
                      WorkerProtocol(plan=plan, count=count), loader=loader, onEvent=on_event, onFinished=on_finished)


def generate_task(python, models, cwd, ventricle_ml, guidance=None, steps=None, seed=0, count=1, device="auto",
                  labels="ventricles", on_event=None, on_finished=None, image_steps=None, refine=True) -> WorkerTask:
    """`worker generate`: each RESULT becomes (synthetic volume node, segmentation node) in `task.loaded`.
    `steps` applies to both stages, `image_steps` to the image stage over it (None: the bundles' defaults);
    `refine` False: the sampled label map as it is (no exact-volume refinement)."""
    temp_dir = temporary_directory()
    command = generate_command(python, os.path.join(temp_dir, "out"), ventricle_ml, guidance=guidance, steps=steps,
                               seed=seed, count=count, device=device, models=models, image_steps=image_steps,
                               refine=refine)
    image_steps = image_steps or steps
    plan = [("mask", int(steps)), ("image", int(image_steps))] if steps and image_steps else None

    def load(result):
        if result.get("kind") != "sample":
            return None
        return load_sample(result, labels=labels)

    return worker_task("generate", command, temp_dir, cwd, plan=plan, count=count, loader=load, on_event=on_event,
                       on_finished=on_finished)


def segment_task(python, models, cwd, input_volume_node, device="auto", tta=False, on_event=None,
                 on_finished=None) -> WorkerTask:
    """`worker segment` of `input_volume_node`; the segmentation node (on that volume's grid and parent
    transform) becomes `task.loaded[0]`."""
    if input_volume_node is None:
        raise ValueError(_("Select an input volume."))
    temp_dir = temporary_directory()
    try:
        input_path = os.path.join(temp_dir, "input.nii.gz")
        write_node(input_volume_node, input_path)
    except Exception:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    command = segment_command(python, input_path, os.path.join(temp_dir, "out"), device=device, models=models, tta=tta)

    def load(result):
        if result.get("kind") != "segmentation":
            return None
        return load_segmentation_result(result, input_volume_node)

    return worker_task("segment", command, temp_dir, cwd, plan=[("segment", 1)], count=1, loader=load,
                       on_event=on_event, on_finished=on_finished)


def info_task(python, models, cwd, on_event=None, on_finished=None) -> WorkerTask:
    """`worker info`: bundles with verified checksums, versions, devices (in `task.outcome.results`)."""
    return worker_task("info", info_command(python, models=models), None, cwd, on_event=on_event,
                       on_finished=on_finished)
