"""Stage `calibrate`: the generator bundles' volume control and T1 realism, measured into their cards
(training/generators/calibration.py)."""

from __future__ import annotations

import sys


def main(args, config) -> int:
    from training.generators import calibration

    command = " ".join(["python training/train.py", *sys.argv[1:]])
    result = calibration.run(args.work, models=args.models, command=command, image_samples=args.image_samples)
    table = result["volume_calibration"]
    print("calibrate: volume calibration " + ("not fitted: the obtained volumes do not rise with the condition"
                                              if table is None else "asked -> condition (mL): " + ", ".join(
                                                  f"{a:.0f}->{c:.0f}" for a, c in zip(table["asked_ml"],
                                                                                    table["condition_ml"]))))
    for w, s in result["volume_control"].items():
        print(f"calibrate: guidance {w}: spearman {s['spearman']:.3f}, median rel error "
              f"{100 * s['median_rel_error']:.1f} %")
    print(f"calibrate: T1 contrast ok in {100 * result['t1_contrast_fraction']:.0f} % of samples")
    return 0
