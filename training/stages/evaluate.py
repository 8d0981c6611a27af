"""Stage `evaluate`: score prediction sets against references (training/evaluation/) -> --out DIR."""

from __future__ import annotations

from VentricleSynthLib.errors import DatasetError


def main(args, config) -> int:
    from training.evaluation.report import evaluate_sets

    if not args.pred or args.ref is None or args.out is None:
        raise DatasetError("evaluate needs --pred DIR (one or more), --ref DIR and --out DIR")
    summaries = evaluate_sets(args.pred, args.ref, args.out, pred_mappings=args.pred_mapping,
                              ref_mapping=args.ref_mapping)
    for name, s in summaries.items():
        print(f"evaluate: {name}: n={s['n']} Dice {s['dice_mean']:.3f} MAE {s['abs_dv_ml_mean']:.2f} mL "
              f"bias {s['signed_dv_ml_mean']:+.2f} mL HD95 {s['hd95_mm_mean']:.2f} mm")
    print(f"evaluate: report -> {args.out / 'report.md'}")
    return 0
