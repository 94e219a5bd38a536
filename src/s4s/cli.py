"""The ``s4s`` command line: ``s4s demo``, ``s4s bench-baselines``."""

from __future__ import annotations

import argparse
import json
import logging
import os
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


def default_cache_dir() -> Path:
    """Where teacher samples are cached: ``$S4S_CACHE`` or ``~/.cache/s4s``."""
    return Path(os.environ.get("S4S_CACHE", Path.home() / ".cache" / "s4s"))


def _cmd_eval(args: argparse.Namespace) -> int:
    from s4s.eval.features import feature_network_for
    from s4s.eval.runner import evaluate, resolve_sampler
    from s4s.models import load_model

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    model = load_model(args.model)
    sampler = resolve_sampler(args.solver, model, args.nfe, args.grid)
    feature_net = None
    if "fd" in metrics:
        feature_net = feature_network_for(model.sample_shape, args.inception_weights, args.reference_stats)
    result = evaluate(model, sampler, num_samples=args.num_samples, seed=args.seed, guidance=args.guidance,
                      metrics=metrics, teacher=args.teacher, batch_size=args.batch_size, feature_net=feature_net,
                      cache_dir=None if args.no_cache else default_cache_dir() / "teacher",
                      save_images=args.save_images, solver_label=args.solver)
    if args.json:
        print(json.dumps(result))
    else:
        fd = "-" if result["fd"] is None else f"{result['fd']:.4f} ({result['feature_space']})"
        rmse = "-" if result["teacher_rmse"] is None else f"{result['teacher_rmse']:.4f} (vs {result['teacher']})"
        print(f"solver {result['solver']}  NFE {result['nfe']}  samples {result['num_samples']}  seed {result['seed']}")
        print(f"  FD:           {fd}")
        print(f"  teacher RMSE: {rmse}")
        if result["accuracy"] is not None:
            print(f"  accuracy:     {result['accuracy']:.4f}")
        print(f"  time:         {result['seconds']:.1f} s (sampling {result['sample_seconds']:.1f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s4s", description="Learned few-step solvers for diffusion models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the main job: compare solvers on the default model")
    p.add_argument("--nfe", type=int, nargs="+", default=[4, 5, 6])
    p.add_argument("--samples", type=int, default=256)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("eval", help="sample a model with a solver and measure FD / distance to a teacher")
    p.add_argument("--model", default=None, help="local diffusers model or pipeline folder (default: the bundled MNIST UNet)")
    p.add_argument("--solver", default="dpmpp_3m", help="baseline name or a solver .json file")
    p.add_argument("--nfe", type=int, default=None, help="model calls (needed with a baseline name)")
    p.add_argument("--grid", default="logsnr", help="time grid for a baseline: edm, time, logsnr, quadratic")
    p.add_argument("--num-samples", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (class-balanced labels)")
    p.add_argument("--metrics", default="fd", help="comma list of: fd, teacher")
    p.add_argument("--teacher", default="unipc_bh2:100", help="NAME:NFE of the reference solver for --metrics teacher")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--inception-weights", type=Path, default=None, help="local Inception-v3 weights for RGB FID")
    p.add_argument("--reference-stats", type=Path, default=None, help="npz (mean, cov, count) of real-data features")
    p.add_argument("--no-cache", action="store_true", help="do not cache teacher samples")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--save-images", type=Path, default=None, help="write the first 100 samples as a PNG grid")
    p.set_defaults(func=_cmd_eval)

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
