"""Learned solvers on models they were not tuned on: the generalization suite (benchmarks/suite/).

For every suite model (scripts/train_suite_model.py) and NFE: RMSE to a 100-call teacher
(``unipc_bh2:100``) on held-out noises (evaluation seed 0, disjoint from learning's) of

* the best hand-designed solver over every baseline x grid (``s4s.BASELINES`` x time, logsnr, edm,
  quadratic), chosen on these same noises (an optimistic baseline);
* each learned method with every default (``s4s learn --nfe N --method M``, the default preset, loss
  ``auto`` = L2 for these undeclared models).

The RMSE is the one of s4s.teacher_distance (these pixel models: clamped to [-1, 1]); the raw RMSE and the
range excursion (RMS distance of the samples to [-1, 1]) are recorded too. Writes ``results.json``, ``README.md`` (a table per model) and
``rmse_vs_nfe_<model>.png`` into ``--out``.

    python benchmarks/generalization_suite.py --nfe 5 --methods s4s-alt-pc --out docs/generalization
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import sys
import time
from pathlib import Path
from typing import Optional

import torch

import s4s
from s4s.baselines import BASELINES
from s4s.eval.runner import evaluate
from s4s.plotting import line_plot
from s4s.teacher import default_cache_dir

log = logging.getLogger("generalization_suite")
SUITE_DIR = Path(__file__).resolve().parent / "suite"
TEACHER = "unipc_bh2:100"
GRIDS = ("time", "logsnr", "edm", "quadratic")


def add_measure_arguments(p: argparse.ArgumentParser) -> None:
    """The options :func:`measure` reads (``--num-samples``) and the CPU threads of every suite script."""
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")


def measure(model, sampler, args, cache) -> dict:
    r = evaluate(model, sampler, num_samples=args.num_samples, seed=0, metrics=["teacher"], teacher=TEACHER,
                 batch_size=500, cache_dir=cache, progress=False)
    return {k: r[k] for k in ("teacher_rmse", "teacher_rmse_raw", "range_excursion", "teacher_range_excursion")}


def measure_baseline(model, name: str, nfe: int, args, cache) -> Optional[dict]:
    """:func:`measure` of the hand-designed ``name`` (``solver/grid``) at ``nfe``; None (logged) where it cannot
    be run or its samples are not finite."""
    base, grid = name.split("/")
    try:
        return measure(model, s4s.baseline(base, model.schedule, nfe, grid=grid), args, cache)
    except (ValueError, FloatingPointError, RuntimeError) as err:  # e.g. non-finite samples
        log.info("%s %s at NFE %d: %s", model.name, name, nfe, err)
        return None


def learned_fields(result, seconds: float) -> dict:
    """What a row records of a learning run (besides the measurement): start, timings, selection."""
    meta = result.solver.metadata
    return {"solver": f"from {result.base}/{result.grid}", "learn_seconds": seconds,
            "teacher_seconds": result.teacher_seconds,
            **{k: meta[k] for k in ("val_rmse", "base_val_rmse", "kept_step", "rmse_guard_refusals", "lr_backoffs",
                                    "probe_losses")}}


def append_row(results_path: Path, row: dict) -> None:
    """Add ``row`` to ``results.json`` under a lock (several runs of this script may share one ``--out``)."""
    with open(results_path, "a+") as f:  # created if absent; the lock is on the file itself
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        text = f.read()
        rows = json.loads(text) if text.strip() else []
        rows.append(row)
        f.seek(0)
        f.truncate()
        f.write(json.dumps(rows, indent=1) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=sorted(d.name for d in SUITE_DIR.iterdir() if d.is_dir()))
    p.add_argument("--nfe", type=int, nargs="+", default=[3, 4, 5, 6])
    p.add_argument("--methods", nargs="+", default=["s4s", "s4s-alt", "s4s-alt-pc"])
    add_measure_arguments(p)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python benchmarks/generalization_suite.py " + " ".join(sys.argv[1:])
    run = {"command": command, "threads": torch.get_num_threads()}
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    done = {(r["model"], r["nfe"], r["method"]) for r in
            (json.loads(results_path.read_text()) if results_path.exists() else [])}
    cache = default_cache_dir()
    for name in args.models:
        model = s4s.load_model(SUITE_DIR / name)
        for nfe in args.nfe:
            if (name, nfe, "best hand-designed") not in done:
                best = None
                for base in sorted(BASELINES):
                    for grid in GRIDS:
                        m = measure_baseline(model, f"{base}/{grid}", nfe, args, cache)
                        if m is not None and (best is None or m["teacher_rmse"] < best["teacher_rmse"]):
                            best = {**m, "solver": f"{base}/{grid}"}
                append_row(results_path, {"model": name, "nfe": nfe, "method": "best hand-designed", **best, **run})
            for method in args.methods:
                if (name, nfe, method) in done:
                    continue
                t0 = time.time()
                result = s4s.learn(model, nfe=nfe, method=method, progress=False)
                seconds = time.time() - t0
                m = measure(model, result.solver, args, cache)
                append_row(results_path, {"model": name, "nfe": nfe, "method": method, **m,
                                          **learned_fields(result, seconds), **run})
                log.info("%s NFE %d %s: RMSE %.4f (%.0f s)", name, nfe, method, m["teacher_rmse"], seconds)
    write_report(json.loads(results_path.read_text()), args.out)


def write_report(rows: list[dict], out: Path) -> None:
    """``README.md`` (a table per model, the commands that made the rows) and one plot per model."""
    commands = list(dict.fromkeys(r["command"] for r in rows if "command" in r))
    lines = ["# Generalization suite: learned solvers on models they were not tuned on", "",
             f"RMSE to a 100-call teacher ({TEACHER}) on 1,000 held-out noises, samples clamped to [-1, 1] as a pipeline shows "
             "them (s4s.teacher_distance; lower is better); in brackets "
             "the ratio to the best hand-designed solver at that NFE; method and limits: "
             "[../generalization.md](../generalization.md). Rows accumulate in `results.json`, made by:", "",
             *[f"    {c}" for c in commands], ""]
    for name in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == name]
        nfes = sorted({r["nfe"] for r in mine})
        methods = ["best hand-designed"] + sorted({r["method"] for r in mine} - {"best hand-designed"})
        lines += [f"## {name}", "", "| method | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
                  "|---|" + "---|" * len(nfes)]
        series = {}
        for method in methods:
            cells, points = [], []
            for n in nfes:
                r = next((r for r in mine if r["nfe"] == n and r["method"] == method), None)
                best = next((b for b in mine if b["nfe"] == n and b["method"] == "best hand-designed"), None)
                if r is None:
                    cells.append("–")
                    continue
                points.append((n, r["teacher_rmse"]))
                ratio = "" if best is None or method == "best hand-designed" else \
                    f" ({r['teacher_rmse'] / best['teacher_rmse']:.2f}x)"
                extra = f" {r['solver']}" if method == "best hand-designed" else ""
                cells.append(f"{r['teacher_rmse']:.4f}{ratio}{extra}")
            series[method] = points
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
        line_plot(series, out / f"rmse_vs_nfe_{name}.png", "NFE", "RMSE to the teacher", name)
        lines += [f"![{name}](rmse_vs_nfe_{name}.png)", ""]
    (out / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
