"""One prepared, time-boxed device check of the `paper` profile: `python benchmarks/gpu_check.py [--cpu]`.

Why: a GPU is lent rarely, for 15 minutes in all, on a bare machine (see README, "GPU check"). This script
spends such a lease on measuring, not on installing or debugging: with a copy of training/configs/paper.yaml
cut to a small template cohort and a few hundred steps per network, it times the project's own stages, each in
a subprocess with its own budget, so that a slow or broken part is stopped and reported while the rest still
runs:

  data       train.py data (the template cohort, natural only, a handful of cases on the paper grid)
  mask-ae .. image-ldm   train.py STAGE with the config's batch sizes and bf16 autocast (amp: true)
  sample-1, sample-8     `python -m VentricleSynthLib generate` with the bundles' sampling settings
  nnunet     train.py segmenter: nnU-Net's default 3d_fullres plan, one epoch (eager: nnUNet_compile=f)

It prints one markdown table and writes gpu_check.md, gpu_check.json and gpu_check.log (every part's last 300
lines) to --out (default $OUT, else a new temporary folder), rewritten after every part, so that a check killed
from outside still leaves its table so far. Everything else it writes lives in a temporary work folder that is
removed at the end.
`--cpu` runs the same parts with the tiny profile and a few steps (CI: Testing/test_gpu_check_cpu_mode.py),
so the script cannot rot between leases. `--measure-carry` prints what a device call would carry.

Wheels: benchmarks/prepare_gpu_wheels.sh puts them in gpu_wheels/. SimpleITK does not fit the 64 MiB carry, yet
nnU-Net imports it at module level on every path. So the check's config reads the NIfTI files through nnU-Net's
NibabelIO (`segmenter.image_reader_writer`, a setting of the segmenter stage) and, where SimpleITK is missing
(the device) and always in the CPU mode (so that CI runs the device's path), the children import the stand-in
benchmarks/standins/SimpleITK, which fails loudly on any use. The table's header says which SimpleITK ran.

CPU mode: one thread, nnU-Net's planning and preprocessing in-process (nnUNet_def_n_proc=1: no spawn pools,
training.segmenter.nnunet_env.pools_in_process) and augmentation in the main process (nnUNet_n_proc_DA=0). A
part over its budget is sent SIGUSR1 first: its Python stack (faulthandler) goes to its log and the table's
JSON, so that a stall says where it stalled; then it is stopped and the next part runs.
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
GENERATOR_STAGES = (("mask-ae", "mask_autoencoder"), ("mask-ldm", "mask_ldm"),
                    ("image-ae", "image_autoencoder"), ("image-ldm", "image_ldm"))
PEAK = "GPU_CHECK_PEAK "
STANDINS = ROOT / "benchmarks" / "standins"  # SimpleITK/ (see its docstring)
LOG_LINES = 300  # per part, in gpu_check.log
STACK = "Current thread"  # faulthandler's header of the stack dumped on SIGUSR1
# seconds per part: GPU (paper, one H200; the sum stays under 8 minutes with ~40 s for unpacking) and CPU (tiny)
BUDGETS = {
    "gpu": {"data": 35, "mask-ae": 50, "mask-ldm": 60, "image-ae": 55, "image-ldm": 50, "sample-1": 25,
            "sample-8": 40, "nnunet": 115},
    # CPU: 10-45 s each on 2 idle cores; the budgets only stop a hang (the whole run stops at --deadline)
    "cpu": {"data": 60, "mask-ae": 60, "mask-ldm": 60, "image-ae": 60, "image-ldm": 60, "sample-1": 60,
            "sample-8": 60, "nnunet": 120},
}
DEPENDS = {"mask-ldm": "mask-ae", "image-ae": "data", "image-ldm": "image-ae", "sample-1": "image-ldm",
           "sample-8": "image-ldm", "nnunet": "data", "mask-ae": "data"}


# --- the child side: one stage in this process, then its peak GPU memory --------------------------------

def _report_peak(*_):
    """Print the peak GPU memory; also on SIGTERM (a part over its budget), so a stopped part still says it."""
    try:
        import torch

        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - the report must never hide the stage's own outcome
        peak = None
    print(PEAK + json.dumps({"peak_bytes": peak}), flush=True)


def child(argv: list[str]) -> int:
    """`--child MODULE ARGS...`: run `python -m MODULE ARGS` in this process (training.train or
    VentricleSynthLib), so that the peak GPU memory can be read after it, or when it is stopped."""
    import runpy

    def on_term(*_):
        _report_peak()
        os._exit(143)

    signal.signal(signal.SIGTERM, on_term)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # a part over budget: where it was
    sys.path.insert(0, str(ROOT))
    sys.argv = [argv[0]] + argv[1:]
    code = 0
    try:
        runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    _report_peak()
    return code


# --- the parent side ------------------------------------------------------------------------------------

def simpleitk(cpu: bool) -> str:
    """'real' where SimpleITK imports and this is the GPU check; 'stand-in' otherwise (the children then find
    benchmarks/standins/SimpleITK first on their path)."""
    return "real" if not cpu and importlib.util.find_spec("SimpleITK") is not None else "stand-in"


def make_config(cpu: bool, steps: int, cases: int, folder: Path) -> Path:
    """The profile config cut to a check: few cases, `steps` per network, one checkpoint at the end, the
    bundles' own sampling settings, one nnU-Net epoch (default plan on GPU) and no final validation."""
    config = yaml.safe_load((ROOT / "training" / "configs" / ("tiny.yaml" if cpu else "paper.yaml")).read_text())
    config["data"].update(workers=1 if cpu else 8)
    config["data"]["natural"] = {"count": cases, "val_fraction": 0.25}
    gen = config["generators"]
    gen["datasets"] = ["natural"]
    for _, key in GENERATOR_STAGES:
        train = gen[key]["train"]
        train.update(steps=steps, checkpoint_every=steps)
        if "adv_start" in train:  # the adversarial regime is most of a real run: time it from the first step
            train["adv_start"] = 0
    seg = config["segmenter"]
    seg["trainer"] = {"epochs": 1, "iterations_per_epoch": 2 if cpu else 250, "val_iterations_per_epoch": 1 if cpu
                      else 50, "checkpoint_every": 1}
    seg["final_validation"] = False
    seg["image_reader_writer"] = "NibabelIO"  # nnU-Net reads the NIfTI files without SimpleITK (see the docstring)
    path = folder / "gpu_check.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _signal(proc: subprocess.Popen, sig: int, group: bool = True) -> None:
    try:
        os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
    except ProcessLookupError:
        pass


def _stack(text: str) -> list[str]:
    """The innermost frames of the stack that a part over budget dumped (faulthandler; most recent call first)."""
    if STACK not in text:
        return []
    lines = text[text.rindex(STACK):].splitlines()
    return [line.strip() for line in lines[1:9] if line.strip().startswith("File ")]


def run_part(name: str, argv: list[str], budget: float, env: dict, log: Path) -> dict:
    """One part in its own process group. At the budget: SIGUSR1 (the part dumps its Python stack to its log),
    SIGTERM 2 s later (it reports its peak GPU memory and exits), SIGKILL 10 s after that. A part over its
    budget is a row of the table, never a hang of the check."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *argv]
    start = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        status = "ok"
        try:
            proc.wait(timeout=max(1.0, budget))
        except subprocess.TimeoutExpired:
            status = "over budget"
            _signal(proc, signal.SIGUSR1, group=False)
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
            _signal(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL)
                proc.wait()
        _signal(proc, signal.SIGKILL)  # nnU-Net's augmentation workers and pools: nothing of a part outlives it
    seconds = time.monotonic() - start
    text = log.read_text(errors="replace")
    if status == "ok" and proc.returncode != 0:
        status = f"failed (exit {proc.returncode})"
    peaks = [json.loads(line[len(PEAK):]) for line in text.splitlines() if line.startswith(PEAK)]
    peak = peaks[-1]["peak_bytes"] if peaks else None
    tail = [line for line in text.splitlines() if line.strip() and not line.startswith(PEAK)][-3:]
    row = {"part": name, "status": status, "seconds": round(seconds, 1), "budget_s": budget,
           "peak_gib": None if peak is None else round(peak / 2**30, 2), "tail": tail}
    if status == "over budget":
        row["stack"] = _stack(text)
    epochs = re.findall(r"Epoch time: ([\d.]+) s", text)  # nnU-Net's own epoch timer (train + validation)
    if epochs:
        row["epoch_s"] = float(epochs[-1])
    return row


def steps_per_second(folder: Path) -> tuple[int | None, float | None]:
    """Steps done and steady steps/s from the stage's metrics.jsonl (first logged interval dropped: warm-up)."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return None, None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return None, None
    first = rows[0] if len(rows) > 1 else {"step": 0, "seconds": 0.0}
    last = rows[-1]
    span = last["seconds"] - first["seconds"]
    return last["step"], (round((last["step"] - first["step"]) / span, 2) if span > 0 else None)


def plan(cpu: bool, config: Path, work: Path, device: str) -> list[tuple[str, list[str], dict]]:
    """(part, child argv, extra environment) in order. Sampling sees only WORK/bundles (no QC segmenter)."""
    train = ["training.train"]
    parts = [("data", train + ["data", "--config", str(config), "--work", str(work), "--distributions", "natural"],
              {})]
    parts += [(stage, train + [stage, "--config", str(config), "--work", str(work)], {})
              for stage, _ in GENERATOR_STAGES]
    models = {"VENTRICLESYNTH_MODELS": str(work / "bundles")}
    gen = ["VentricleSynthLib", "generate", "--models", str(work / "bundles"), "--device", device, "--seed", "1"]
    gen += ["--distribution", "uniform", "--format", "samples", "--no-progress"] + (["--steps", "2"] if cpu else [])
    for name, count in (("sample-1", 1), ("sample-8", 2 if cpu else 8)):  # CPU: a batch of 2, 2 steps
        parts.append((name, gen + ["--count", str(count), "--batch-size", str(count), "--out", str(work / name)],
                      models))
    # nnU-Net compiles its network by default on CUDA (minutes, repaid over a 1000-epoch run): the check times
    # the eager epoch. CPU: one process, augmentation in the main process (set in `main`).
    nn = {"nnUNet_compile": "f"} if cpu else {"nnUNet_n_proc_DA": "12", "nnUNet_def_n_proc": "8", "nnUNet_compile": "f"}
    parts.append(("nnunet", train + ["segmenter", "--config", str(config), "--work", str(work)], nn))
    return parts


def table(rows: list[dict], header: str) -> str:
    lines = [header, "", "| part | status | seconds | budget s | steps | steps/s | peak GPU GiB |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        cells = [r["part"], r["status"], r["seconds"], r["budget_s"], r.get("steps"), r.get("steps_per_s"),
                 r.get("peak_gib")]
        lines.append("| " + " | ".join("–" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def measure_carry() -> int:
    """What a device call carries: tracked + untracked-not-ignored files, plus gpu_wheels/ (limit 64 MiB)."""
    def size(args):
        out = subprocess.run(["git", *args, "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        return sum((ROOT / p).stat().st_size for p in out.decode().split("\0") if p and (ROOT / p).is_file())
    tree = size(["ls-files"]) + size(["ls-files", "-o", "--exclude-standard"])
    wheels = sum(p.stat().st_size for p in (ROOT / "gpu_wheels").glob("*") if p.is_file())
    total = (tree + wheels) / 2**20
    print(f"carry: working tree {tree / 2**20:.1f} MiB + gpu_wheels {wheels / 2**20:.1f} MiB = {total:.1f} MiB "
          f"(limit 64 MiB: {'fits' if total <= 64 else 'OVER'})")
    return 0 if total <= 64 else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="tiny profile, a few steps, CPU (CI)")
    p.add_argument("--out", type=Path, help="folder for gpu_check.md/.json (default $OUT, else a new temp folder)")
    p.add_argument("--steps", type=int, help="steps per network (default 200 on GPU, 3 with --cpu)")
    p.add_argument("--cases", type=int, help="template cases (default 16 on GPU, 4 with --cpu)")
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiply every part's budget")
    p.add_argument("--deadline", type=float, help="seconds for the whole check (default 430 on GPU, 300 with "
                                                  "--cpu): a part gets at most what is left, none under 5 s")
    p.add_argument("--measure-carry", action="store_true", help="print the size a device call carries, and stop")
    args = p.parse_args(argv)
    if args.measure_carry:
        return measure_carry()
    mode = "cpu" if args.cpu else "gpu"
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT")
                       else Path(tempfile.mkdtemp(prefix="gpu_check_")))
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.cpu else "cuda"
    if not args.cpu:
        import torch

        if not torch.cuda.is_available():
            print("error: no CUDA device (use --cpu for the CPU mode)", file=sys.stderr)
            return 2
        device_name = torch.cuda.get_device_name(0)
    else:
        device_name = "cpu"
    steps = args.steps or (3 if args.cpu else 200)
    cases = args.cases or (4 if args.cpu else 16)
    sitk = simpleitk(args.cpu)
    scratch = Path(tempfile.mkdtemp(prefix="gpu_check_work_"))
    path = [str(STANDINS)] if sitk == "stand-in" else []
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(scratch / "tmp"), "MPLCONFIGDIR": str(scratch / "mpl"),
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": os.pathsep.join(
               p for p in (*path, str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    if args.cpu:  # one thread, no pools: the same work in the same order on every run
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", nnUNet_n_proc_DA="0",
                   nnUNet_def_n_proc="1")
    (scratch / "tmp").mkdir()
    rows: list[dict] = []
    started = time.monotonic()
    deadline = args.deadline or (300.0 if args.cpu else 430.0)
    header = (f"GPU check ({'tiny profile, CPU mode' if args.cpu else 'paper profile'}; {device_name}; "
              f"{steps} steps per network, {cases} template cases; SimpleITK: {sitk}; {time.strftime('%Y-%m-%d')}")
    summary = {"mode": mode, "device": device_name, "steps": steps, "cases": cases, "simpleitk": sitk}
    logs = out / "gpu_check.log"
    logs.write_text("")
    try:
        work = scratch / "work"
        config = make_config(args.cpu, steps, cases, scratch)
        done: dict[str, str] = {}
        for name, child_argv, extra in plan(args.cpu, config, work, device):
            left = deadline - (time.monotonic() - started)
            budget = round(min(BUDGETS[mode][name] * args.budget_scale, left), 1)
            need = DEPENDS.get(name)
            if need and done.get(need) != "ok":
                row = {"part": name, "status": f"skipped ({need} not ok)", "seconds": 0.0, "budget_s": budget}
            elif budget < 5:
                row = {"part": name, "status": "skipped (deadline)", "seconds": 0.0, "budget_s": budget}
            else:
                log = scratch / f"{name}.log"
                row = run_part(name, child_argv, budget, {**env, **extra}, log)
                lines = log.read_text(errors="replace").splitlines()[-LOG_LINES:]
                with logs.open("a") as fh:
                    fh.write(f"===== {name}: {row['status']} in {row['seconds']} s =====\n" + "\n".join(lines) + "\n")
                if name in dict(GENERATOR_STAGES):
                    row["steps"], row["steps_per_s"] = steps_per_second(work / name)
                if row.get("epoch_s"):  # nnU-Net: iterations of its one epoch, and their rate from its timer
                    row["steps"] = 2 if args.cpu else 250
                    row["steps_per_s"] = round(row["steps"] / row["epoch_s"], 2)
            done[name] = row["status"]
            rows.append(row)
            print(f"gpu_check: {name}: {row['status']} in {row['seconds']} s", flush=True)
            for line in (row.get("tail") or []) + (row.get("stack") or []) if row["status"] != "ok" else []:
                print("  " + line, flush=True)
            write(out, rows, header, summary, time.monotonic() - started, final=False)  # a killed check leaves these
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    text = write(out, rows, header, summary, time.monotonic() - started, final=True)
    print(text)
    print(f"gpu_check: wrote {out / 'gpu_check.md'}, gpu_check.json and gpu_check.log")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


def write(out: Path, rows: list[dict], header: str, summary: dict, seconds: float, final: bool) -> str:
    """gpu_check.md (the table) and gpu_check.json; rewritten after every part, `final` once all have run."""
    total = round(seconds, 1)
    text = table(rows, f"{header}; total {total} s{'' if final else '; INCOMPLETE: the check did not finish'})")
    (out / "gpu_check.md").write_text(text)
    (out / "gpu_check.json").write_text(json.dumps({**summary, "total_s": total, "complete": final, "parts": rows},
                                                   indent=1))
    return text


if __name__ == "__main__":
    sys.exit(main())
