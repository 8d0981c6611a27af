"""The experiment's synthetic pairs: sampled from generator bundles like the paper's final set, or pre-made."""

from __future__ import annotations

from pathlib import Path

from VentricleSynthLib.errors import DatasetError

from training.segmenter.raw_export import Case, pair_cases
from training.stage_configs import ExperimentConfig


def generate_synthetic(models: Path, out: Path, experiment: ExperimentConfig, work: Path, progress=print) -> Path:
    """`synthetic_count` pairs with the paper's final-set volumes (ten jittered buckets over the trained range)
    into out/ as an nnU-Net raw dataset, by `VentricleSynthLib.cohorts.synthesize` (resumable, QC'd, reported)."""
    from VentricleSynthLib.cohorts.request import CohortRequest
    from VentricleSynthLib.cohorts.synthesize import find_segmenter, synthesize

    e = experiment
    result = synthesize(CohortRequest(
        out=out, distribution="buckets", count=int(e.synthetic_count), seed=int(e.synthetic_seed),
        guidance=e.synthetic_guidance, candidates=e.synthetic_candidates, steps=e.synthetic_steps,
        format="nnunet", models=models, segmenter=find_segmenter(models, work / "bundles")[0], progress=False),
        log=progress)
    if result["complete"] < int(e.synthetic_count):
        raise DatasetError(f"{out}: only {result['complete']} of {e.synthetic_count} synthetic pairs were "
                           f"made ({result['failures']} failed); rerun the experiment to retry them")
    return out


def synthetic_pairs(source: Path, experiment: ExperimentConfig, generated: bool) -> list[Case]:
    """The arms' synthetic pairs: every pair of a --synthetic-from folder; of a generated folder the first
    `synthetic_count` (a folder grown by an earlier, larger config keeps its extra pairs on disk)."""
    cases = pair_cases(source, prefix="synth", val_every=10)
    return cases[:int(experiment.synthetic_count)] if generated else cases
