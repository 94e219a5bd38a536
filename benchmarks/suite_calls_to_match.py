"""How many calls the best hand-designed solver needs to match a learned solver on the generalization suite.

A ratio of RMSEs at one NFE says little across models: where the ODE is smooth a hand-designed solver's
error falls fast with every call, where it is rough (an under-trained model) slowly. This script extends
the hand-designed side of ``docs/generalization/results.json`` beyond NFE 6 and, for every learned row,
finds the number of calls at which the best hand-designed solver first comes as close to the teacher:
the measure behind "what the best hand-designed solver needs twice the calls for".

Candidates, for each model: every solver that was the best hand-designed one for some suite model at some
NFE of the suite's table, on every grid that was best for this model at some NFE (on the suite: five
solvers on one or two grids, against the 32 pairs of the suite's full search, which would cost several
times more at these NFEs), each measured as benchmarks/generalization_suite.py measures (RMSE to the 100-call teacher on the 1,000
evaluation noises, clamped). Rows (one per model, pair and NFE) go to ``--out`` (JSON); the table of
calls to match is printed as Markdown, and a plot per model (RMSE against NFE, hand-designed and learned)
is written beside ``--out``.

    python benchmarks/suite_calls_to_match.py --nfe 7 8 10 12 --threads 1 --out docs/generalization/calls_to_match.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import torch

import s4s
from generalization_suite import SUITE_DIR, add_measure_arguments, measure_baseline
from s4s.plotting import line_plot
from s4s.teacher import default_cache_dir

log = logging.getLogger("suite_calls_to_match")
LEARNED = ("s4s", "s4s-alt", "s4s-alt-pc")


def best_by_nfe(rows: list[dict], model: str) -> dict[int, float]:
    """The best hand-designed RMSE at every NFE measured for ``model``: the suite's full search and this
    script's candidates together."""
    best: dict[int, float] = {}
    for r in rows:
        if r["model"] == model and r["method"] == "best hand-designed":
            best[r["nfe"]] = min(best.get(r["nfe"], math.inf), r["teacher_rmse"])
    return best


def candidates(suite: list[dict], model: str) -> list[str]:
    """``solver/grid`` pairs: every solver that won some cell of the suite, on every grid that won for ``model``."""
    winners = [(r["model"], *r["solver"].split("/")) for r in suite if r["method"] == "best hand-designed"]
    solvers = {solver for _, solver, _ in winners}
    grids = {grid for m, _, grid in winners if m == model}
    return sorted(f"{solver}/{grid}" for solver in solvers for grid in grids)


def calls_to_match(rmse: float, best: dict[int, float]) -> tuple[str, float]:
    """The smallest measured NFE whose best hand-designed RMSE is at most ``rmse`` (``">N"`` when none is),
    and the NFE where the hand-designed curve crosses ``rmse``, interpolated linearly in log RMSE between
    the two measured NFEs around the crossing (``inf`` when it never does)."""
    nfes = sorted(best)
    for k, n in enumerate(nfes):
        if best[n] <= rmse:
            if k == 0:
                return str(n), float(n)
            m = nfes[k - 1]
            hi, lo = math.log(best[m]), math.log(best[n])
            return str(n), m + (n - m) * (hi - math.log(rmse)) / (hi - lo)
    return f">{nfes[-1]}", math.inf


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=sorted(d.name for d in SUITE_DIR.iterdir() if d.is_dir()))
    p.add_argument("--nfe", type=int, nargs="+", default=[7, 8, 10, 12], help="hand-designed NFEs to add")
    p.add_argument("--results", type=Path, default=Path("docs/generalization/results.json"),
                   help="the suite's rows (benchmarks/generalization_suite.py)")
    add_measure_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="JSON file of the extra hand-designed rows (reused)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    suite = json.loads(args.results.read_text())
    extra = json.loads(args.out.read_text()) if args.out.exists() else []
    done = {(r["model"], r["nfe"], r["solver"]) for r in extra}
    command = "python benchmarks/suite_calls_to_match.py " + " ".join(sys.argv[1:])
    for name in args.models:
        model = s4s.load_model(SUITE_DIR / name)
        pairs = candidates(suite, name)
        for nfe in args.nfe:
            for pair in pairs:
                if (name, nfe, pair) in done:
                    continue
                m = measure_baseline(model, pair, nfe, args, default_cache_dir())
                if m is None:
                    continue
                extra.append({"model": name, "nfe": nfe, "method": "best hand-designed", "solver": pair, **m,
                              "command": command, "threads": torch.get_num_threads()})
                args.out.write_text(json.dumps(extra, indent=1) + "\n")
                log.info("%s %s NFE %d: RMSE %.4f", name, pair, nfe, m["teacher_rmse"])
    rows = suite + extra
    print("| model | method | NFE | RMSE | best hand-designed at the same NFE | calls it needs to match | (interpolated) |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        best = best_by_nfe(rows, name)
        for r in sorted((r for r in suite if r["model"] == name and r["method"] in LEARNED),
                        key=lambda r: (r["method"], r["nfe"])):
            first, crossing = calls_to_match(r["teacher_rmse"], best)
            print(f"| {name} | {r['method']} | {r['nfe']} | {r['teacher_rmse']:.4f} | {best[r['nfe']]:.4f} | {first} | "
                  f"{crossing:.1f} ({crossing / r['nfe']:.2f}x) |")
        series = {"best hand-designed": sorted(best.items())}
        for method in LEARNED:
            series[method] = sorted((r["nfe"], r["teacher_rmse"]) for r in suite
                                    if r["model"] == name and r["method"] == method)
        line_plot(series, args.out.parent / f"calls_to_match_{name}.png", "NFE (model calls)", "RMSE to the teacher",
                  f"{name}: learned vs hand-designed beyond NFE 6")


if __name__ == "__main__":
    main()
