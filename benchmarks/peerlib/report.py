"""The comparison's Markdown: volumes, time and memory per scan and tool, then the Dice between tools."""

from __future__ import annotations

COLUMNS = (("lateral_left", "lateral L"), ("lateral_right", "lateral R"), ("lateral", "lateral"),
           ("inferior_lateral", "inf. lateral"), ("third", "3rd"), ("fourth", "4th"), ("total", "total"))
GENERAL = ("Volumes in mL; Dice is of the ventricle union. Seconds and peak RSS are one process each (start-up, "
           "model loading, resampling and writing included); a cached peer shows the run that made its label map.")
NOTES = {  # shown when the tool took part
    "brainchop": "brainchop's subcortical model does not separate the hemispheres (no L/R columns).",
    "atlas": "The atlas (CerebrA on the MNI ICBM 2009c template) is also the base of our segmenter's training "
             "data: agreement with it is expected and is not independent evidence.",
}


def _cell(value, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown(results: dict) -> str:
    head = "| scan | tool | " + " | ".join(t for _, t in COLUMNS) + " | Dice vs label | seconds | peak RSS (GB) |"
    lines = ["## Ventricle volumes, time and memory", "", head, "|" + "---|" * (head.count("|") - 1)]
    pairs: list[str] = []
    for scan, entry in results["scans"].items():
        if entry.get("label_ml"):
            vols = entry["label_ml"]
            lines.append(f"| {scan} | *label map* | " + " | ".join(_cell(vols[k]) for k, _ in COLUMNS)
                         + " | | | |")
        for tool, row in entry["tools"].items():
            vols = row["volumes_ml"]
            cached = " (cached)" if row["cached"] else ""
            lines.append(f"| {scan} | {tool} | " + " | ".join(_cell(vols[k]) for k, _ in COLUMNS)
                         + f" | {_cell(row['dice_vs_label'], 3)} | {row['seconds']:.0f}{cached}"
                         f" | {row['peak_rss_mb'] / 1024:.2f} |")
        pairs += [p for p in entry["pairwise_dice"] if p not in pairs]
    if pairs:
        lines += ["", "## Ventricle-union Dice between tools", "", "| scan | " + " | ".join(pairs) + " |",
                  "|---|" + "---|" * len(pairs)]
        for scan, entry in results["scans"].items():
            lines.append(f"| {scan} | " + " | ".join(_cell(entry["pairwise_dice"].get(p), 3) for p in pairs) + " |")
    lines += ["", "## Tools", ""] + [f"- **{name}**: {info['title']} — {info['version']}"
                                     for name, info in results["tools"].items()]
    lines += ["", f"- {GENERAL}"] + [f"- {note}" for tool, note in NOTES.items() if tool in results["tools"]]
    return "\n".join(lines) + "\n"
