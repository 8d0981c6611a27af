"""Stage `data`: the template cohort (training/data/template_datasets.py), or with `--source` an import of
the user's own labelled data (training/data/user_import.py) into WORK/data/user."""

from __future__ import annotations

from training.outputs import output_folder


def main(args, config) -> int:
    if args.source is None:
        from training.data.template_datasets import build_template_datasets

        output_folder(args.work / "data", f"--work {args.work}")
        build_template_datasets(config, args.work, distributions=args.distributions)
        return 0
    from training.data.user_import import import_dataset

    report = import_dataset(args.source, args.work / "data" / "user", config.profile,
                            image_pattern=args.images, label_pattern=args.labels, mapping=args.mapping,
                            progress=lambda i, n, case: print(f"PROGRESS stage=import step={i}/{n} case={case}"),
                            shown=f"--work {args.work}")
    summary = report.to_dict()
    print(f"data: imported {len(summary['imported'])} cases, skipped {len(summary['skipped'])} "
          f"-> {args.work / 'data' / 'user'} (see import_report.md)")
    return 0
