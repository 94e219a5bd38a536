"""The ``s4s`` command line: ``s4s demo``, ``s4s bench-baselines``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

log = logging.getLogger("s4s")


def _cmd_bench_baselines(args: argparse.Namespace) -> int:
    from s4s.benchmarks import baseline_errors, default_testbed, gmm_schedule, markdown_report, plot_best

    rows = baseline_errors(default_testbed(), gmm_schedule(), nfes=args.nfe, num_samples=args.samples, seed=args.seed)
    title = "Hand-designed solvers on the exact Gaussian-mixture model (16-D, 6 components, DDPM linear schedule)"
    command = "s4s bench-baselines " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "s4s bench-baselines"
    report = markdown_report(rows, title, command.strip())
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
        plot = plot_best(rows, args.out.with_suffix(".png"), "Exact GMM, DDPM linear schedule")
        log.info("wrote %s%s", args.out, f" and {plot}" if plot else "")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from s4s.benchmarks import baseline_errors, best_grid_table, default_testbed, gmm_schedule

    rows = baseline_errors(default_testbed(), gmm_schedule(), nfes=args.nfe, num_samples=args.samples)
    best = best_grid_table(rows)
    print(f"RMSE to the exact ODE solution, exact Gaussian-mixture model, best grid per solver ({args.samples} samples)")
    print(f"{'solver':<11}" + "".join(f"{'NFE ' + str(n):>22}" for n in args.nfe))
    for solver, by_nfe in best.items():
        print(f"{solver:<11}" + "".join(f"{by_nfe[n][0]:>12.4f} {by_nfe[n][1]:>9}" if n in by_nfe else f"{'-':>22}"
                                         for n in args.nfe))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s4s", description="Learned few-step solvers for diffusion models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the main job: compare solvers on the default model")
    p.add_argument("--nfe", type=int, nargs="+", default=[4, 5, 6])
    p.add_argument("--samples", type=int, default=256)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("bench-baselines", help="every baseline x NFE x grid on the exact Gaussian mixture")
    p.add_argument("--nfe", type=int, nargs="+", default=[3, 4, 5, 6, 8, 10])
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the Markdown table here (and a .png plot beside it)")
    p.set_defaults(func=_cmd_bench_baselines)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        log.error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
