"""What an import of the user's own data found, imported and skipped (and why): import_report.{json,md}."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ImportReport:
    """What an import found, imported and skipped (and why)."""

    source: str
    kind: str = "folder"  # "folder" or "nnunet"
    image_pattern: str = ""
    label_pattern: str = ""
    found: dict[str, tuple[str, str]] = field(default_factory=dict)  # source case id -> (image, label)
    imported: list[str] = field(default_factory=list)  # output case ids
    skipped: dict[str, str] = field(default_factory=dict)  # source case id -> reason
    missing_image: list[str] = field(default_factory=list)  # label without image
    missing_label: list[str] = field(default_factory=list)  # image without label
    renamed: dict[str, str] = field(default_factory=dict)  # source case id -> output id (if different)
    warnings: dict[str, str] = field(default_factory=dict)  # output case id -> warning
    cases: list[dict] = field(default_factory=list)  # the rows of cases.csv
    out_dir: str | None = None
    profile: str | None = None

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "kind": self.kind,
            "image_pattern": self.image_pattern,
            "label_pattern": self.label_pattern,
            "out_dir": self.out_dir,
            "profile": self.profile,
            "counts": {
                "found": len(self.found),
                "imported": len(self.imported),
                "skipped": len(self.skipped),
                "missing_image": len(self.missing_image),
                "missing_label": len(self.missing_label),
            },
            "found": {case: list(paths) for case, paths in sorted(self.found.items())},
            "imported": list(self.imported),
            "skipped": dict(sorted(self.skipped.items())),
            "missing_image": sorted(self.missing_image),
            "missing_label": sorted(self.missing_label),
            "renamed": dict(sorted(self.renamed.items())),
            "warnings": dict(sorted(self.warnings.items())),
            "cases": list(self.cases),
        }

    def summary(self) -> str:
        return (f"{len(self.found)} pairs found, {len(self.imported)} imported, {len(self.skipped)} skipped, "
                f"{len(self.missing_image)} without image, {len(self.missing_label)} without label map")

    def to_markdown(self) -> str:
        def cell(text: str) -> str:
            return str(text).replace("|", "\\|").replace("\n", " ")

        lines = ["# Data import report", "", f"- source: `{self.source}` ({self.kind})"]
        if self.image_pattern or self.label_pattern:
            lines.append(f"- patterns: image `{self.image_pattern}`, label map `{self.label_pattern}`")
        if self.out_dir:
            lines.append(f"- written to: `{self.out_dir}`" + (f" (profile {self.profile})" if self.profile else ""))
        lines += [f"- {self.summary()}", ""]
        if self.cases:
            lines += ["## Imported", "", "| case | split | ventricles (mL) | TIV (mL) |", "|---|---|---:|---:|"]
            lines += [f"| {cell(r['case'])} | {r['split']} | {r['ventricle_ml']} | {r['tiv_ml']} |" for r in self.cases]
            lines.append("")
        elif self.imported:
            lines += ["## Imported", "", *[f"- {cell(c)}" for c in self.imported], ""]
        if self.renamed:
            lines += ["## Renamed case ids", "", "| source id | dataset id |", "|---|---|"]
            lines += [f"| {cell(a)} | {cell(b)} |" for a, b in sorted(self.renamed.items())]
            lines.append("")
        if self.warnings:
            lines += ["## Warnings", "", "| case | warning |", "|---|---|"]
            lines += [f"| {cell(c)} | {cell(w)} |" for c, w in sorted(self.warnings.items())]
            lines.append("")
        if self.skipped:
            lines += ["## Skipped", "", "| case | reason |", "|---|---|"]
            lines += [f"| {cell(c)} | {cell(r)} |" for c, r in sorted(self.skipped.items())]
            lines.append("")
        if self.missing_image:
            lines += ["## Label map without image", "", *[f"- {cell(c)}" for c in sorted(self.missing_image)], ""]
        if self.missing_label:
            lines += ["## Image without label map", "", *[f"- {cell(c)}" for c in sorted(self.missing_label)], ""]
        return "\n".join(lines).rstrip("\n") + "\n"
