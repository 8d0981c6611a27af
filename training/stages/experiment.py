"""Stage `experiment`: the paper's real/augmented/synthetic/atlas comparison (training/experiment/)
-> WORK/experiment/."""

from __future__ import annotations


def main(args, config) -> int:
    from training.experiment.comparison import run
    from training.stage_configs import ExperimentConfig

    result = run(config, ExperimentConfig.from_config(config), args.work, resume=args.resume,
                 synthetic_from=args.synthetic_from, models=args.models)
    print(f"experiment: table -> {result['report']}")
    return 0
