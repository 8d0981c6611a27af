"""Stage `synthesize`: a synthetic cohort from the profile's generator bundles -> WORK/synthetic/.

The `synthesize:` section of the config sets count, distribution, seed, guidance, candidates, steps, batch size,
format and the QC filter; train.py options override it. The work is VentricleSynthLib.cohorts.synthesize
(the same as `python -m VentricleSynthLib generate --distribution …`), so the CLI and this stage write
identical cohorts. Generators: `--models DIR`, else WORK/bundles, else the bundled models, whichever
matches the profile. QC segmenter: the first of MODELS/segmenter, WORK/bundles/segmenter and the default
models folder's that exists (`VentricleSynthLib.cohorts.synthesize.find_segmenter`; none: the label-fidelity
Dice is not measured). The result is an nnU-Net raw dataset that `train.py segmenter --synthetic
WORK/synthetic` takes as is.
"""

from __future__ import annotations

from pathlib import Path

from VentricleSynthLib.errors import RequestError


def main(args, config) -> int:
    from VentricleSynthLib.cohorts.request import CohortRequest
    from VentricleSynthLib.cohorts.synthesize import find_segmenter, synthesize

    from training.generators.export import find_generators
    from training.stage_configs import SynthesizeConfig

    s = SynthesizeConfig.from_config(config, {
        "count": args.count, "distribution": args.distribution, "qc_min_dice": args.qc_min_dice,
        "batch_size": args.batch_size, "device": args.device})
    work = Path(args.work)
    generators, why = find_generators(config.profile, work, args.models)
    if generators is None:
        raise RequestError(f"no generator bundles for profile {config.profile.name!r} ({why}); train them "
                           f"(train.py mask-ae, mask-ldm, image-ae, image-ldm) or pass --models DIR")
    result = synthesize(CohortRequest(
        out=Path(args.out) if args.out else work / "synthetic", distribution=str(s.distribution), count=s.count,
        seed=s.seed, guidance=s.guidance, candidates=s.candidates, steps=s.steps, format=s.format, shard=args.shard,
        batch_size=s.batch_size, qc_min_dice=s.qc_min_dice, device=s.device, models=generators,
        segmenter=find_segmenter(args.models, work / "bundles")[0]), log=lambda line: print(line, flush=True))
    return 1 if result["failures"] else 0  # the summary line said how many; a rerun retries them
