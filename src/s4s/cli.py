"""The ``s4s`` command line: ``demo`` (the main job), ``learn``, ``eval``, ``bench``, ``bench-baselines``."""

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
    from s4s.bench.gmm import baseline_errors, default_testbed, gmm_schedule, markdown_report, plot_best

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


def _cmd_learn(args: argparse.Namespace) -> int:
    import time

    from s4s.bench.model import PRESETS, peak_memory_mb
    from s4s.learn.api import learn_with_result
    from s4s.learn.model_losses import resolve_loss
    from s4s.models import load_model

    if args.out.exists() and not (args.force or args.resume):
        raise ValueError(f"{args.out} exists; pass --force to overwrite it (or --resume to continue its run)")
    if args.nfe < 1:
        raise ValueError(f"--nfe must be >= 1, got {args.nfe}")
    t0 = time.time()
    model = load_model(args.model, device=resolve_device(args.device))
    options = dict(PRESETS[args.preset])
    for key in ("teacher", "num_samples", "steps", "batch_size", "lr", "loss", "ball_radius", "base", "grid", "learn_a",
                "lr_decay"):
        value = getattr(args, key)
        if value is not None:
            options[key] = value
    options["loss"], feature_fn = resolve_loss(model, options.get("loss"))
    if args.decode_loss and not model.is_latent:
        raise ValueError("--decode-loss needs a latent pipeline (a folder with a vae/ or vqvae/ component)")
    run_dir = args.run_dir or args.out.with_name(args.out.stem + "-run")
    labels = model.labels(options["num_samples"], guided=args.guidance is not None)
    result = learn_with_result(model.denoiser, model.schedule, args.nfe, model.sample_shape, method=args.method,
                               labels=labels, guidance=args.guidance, seed=args.seed, run_dir=run_dir,
                               resume=args.resume, feature_fn=feature_fn,
                               decode=model.decode if args.decode_loss else None,
                               cache_dir=None if args.no_cache else default_cache_dir() / "teacher", **options)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result.solver.save(args.out)
    meta = result.solver.metadata
    print(f"learned {args.method} NFE {args.nfe} from {meta['base']}/{meta['grid_init']}: validation RMSE to the "
          f"teacher {meta['base_val_rmse']:.4f} -> {meta['val_rmse']:.4f} ({meta['loss']}: {meta['base_val_loss']:.4g} "
          f"-> {meta['val_loss']:.4g})")
    if result.stopped:
        print(f"stopped early: {result.stopped}")
    print(f"wrote {args.out} and {run_dir}/ ; wall time {time.time() - t0:.0f} s, peak memory {peak_memory_mb():.0f} MB")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from s4s.bench.model import markdown_table, plot_fd, run_model_bench
    from s4s.models import load_model

    if not args.baselines and not args.methods:
        raise ValueError("s4s bench: nothing to run (--baselines and --methods are both empty)")
    model = load_model(args.model, device=resolve_device(args.device))
    cells = run_model_bench(model, args.nfe, args.baselines, args.grids, args.methods, args.num_samples, args.out,
                            seed=args.seed, guidance=args.guidance, preset=args.preset,
                            cache_dir=None if args.no_cache else default_cache_dir() / "teacher",
                            teacher_metric=args.teacher_rmse)
    notes = [f"Model: {model.name}. FD in MNIST classifier features (lower is better), {args.num_samples} samples "
             f"per cell, seed {args.seed}, guidance {args.guidance}. Baselines on their best grid of "
             f"{', '.join(args.grids)} (shown); learned solvers with preset '{args.preset}'. Bold: learned and better "
             "than every baseline at that NFE.", "",
             "Command: `s4s " + " ".join(sys.argv[1:]) + "`"]
    table = markdown_table(cells, "Baselines vs learned solvers", notes)
    (args.out / "bench.md").write_text(table)
    plot_fd(cells, args.out / "fd_vs_nfe.png", f"{model.name}: FD vs NFE")
    print(table)
    return 0


def _cmd_bench_report(args: argparse.Namespace) -> int:
    from s4s.bench.model import load_cells, markdown_table, plot_fd, save_cells

    cells = load_cells(args.results)
    merged = " ".join(str(p) for p in args.results)
    notes = list(args.note) + ["", f"Merged by `s4s bench-report {merged} --out {args.out}`"]
    table = markdown_table(cells, args.title, notes)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.md").write_text(table)
    save_cells(cells, args.out / "results.json")
    plot_fd(cells, args.out / "fd_vs_nfe.png", args.title)
    print(table)
    return 0


DEMO_BASELINES = ["ddim", "dpmpp_3m", "unipc_bh1", "unipc_bh2", "ipndm", "deis"]


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    from s4s.bench.model import markdown_table, peak_memory_mb, run_model_bench
    from s4s.models import load_model

    t0 = time.time()
    model = load_model(None)
    cells = run_model_bench(model, args.nfe, DEMO_BASELINES, ["time"], [args.method], args.num_samples, args.out,
                            preset="fast", cache_dir=default_cache_dir() / "teacher")
    notes = [f"Bundled MNIST UNet, unconditional (null label). FD in MNIST classifier features, {args.num_samples} "
             "samples per cell (a quick demo: `s4s bench` for the 10k-sample table); baselines on the time-uniform grid "
             f"(the best grid for this model's validation loss). {args.method} learned with the 'fast' preset and the "
             "default loss (perceptual: an MNIST network independent of the FD classifier). Sample grids "
             "side by side: " + ", ".join(str(args.out / f"samples_nfe{n}.png") for n in args.nfe)]
    print(markdown_table(cells, f"s4s demo: {args.method} vs hand-designed solvers", notes))
    print(f"total time {time.time() - t0:.0f} s, peak memory {peak_memory_mb():.0f} MB")
    return 0


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when PyTorch sees a GPU, else ``cpu``; anything else as given."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_cache_dir() -> Path:
    """Where teacher samples are cached: ``$S4S_CACHE`` or ``~/.cache/s4s``."""
    return Path(os.environ.get("S4S_CACHE", Path.home() / ".cache" / "s4s"))


def _cmd_eval(args: argparse.Namespace) -> int:
    from s4s.eval.features import feature_network_for
    from s4s.eval.runner import evaluate, resolve_sampler
    from s4s.models import load_model

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    model = load_model(args.model, device=resolve_device(args.device))
    sampler = resolve_sampler(args.solver, model, args.nfe, args.grid)
    feature_net = None
    if "fd" in metrics:
        feature_net = feature_network_for(model.image_shape, args.inception_weights, args.reference_stats, model.device)
    result = evaluate(model, sampler, num_samples=args.num_samples, seed=args.seed, guidance=args.guidance,
                      metrics=metrics, teacher=args.teacher, batch_size=args.batch_size, feature_net=feature_net,
                      cache_dir=None if args.no_cache else default_cache_dir() / "teacher",
                      save_images=args.save_images, solver_label=args.solver)
    result["grid"] = None if args.solver.endswith(".json") else args.grid
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


def _add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="where the model runs: auto (a GPU if PyTorch sees one), cpu, cuda, cuda:1, ...")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s4s", description="Learned few-step solvers for diffusion models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    from s4s.learn.objectives import LOSSES
    from s4s.learn.trainer import LR_DECAYS, METHODS

    p = sub.add_parser("demo", help="the main job: learn S4S-Alt (PC form) at NFE 4 and 5 on the bundled model, "
                                    "compare with the hand-designed solvers")
    p.add_argument("--nfe", type=int, nargs="+", default=[4, 5])
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--method", choices=METHODS, default="s4s-alt-pc",
                   help="learning method (default s4s-alt-pc, as `s4s learn`; with the fast preset it scored "
                        "FD 83.85 / 54.77 at NFE 4 / 5 against 75.04 / 77.88 for s4s-alt, docs/demo)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("learn", help="learn a solver (S4S / S4S-Alt) for a model and an NFE budget")
    p.add_argument("--model", default=None, help="local diffusers model or pipeline folder (default: bundled MNIST UNet)")
    p.add_argument("--nfe", type=int, required=True)
    p.add_argument("--method", choices=METHODS, default="s4s-alt-pc",
                   help="default s4s-alt-pc: on the stage-2 bundled model it beat s4s-alt at NFE 4 (FD 31.28 vs "
                        "42.88) and NFE 5 (29.23 vs 33.04); on the current one the two are level at NFE 5 (19.70 vs "
                        "18.86), docs/bench_mnist")
    p.add_argument("--base", default=None, help="base solver (default auto: best on validation of dpmpp_3m / unip_bh1 / unip_bh2, or of dpmpp_3m / unipc_bh1 / unipc_bh2 for the -pc methods)")
    p.add_argument("--grid", default=None, help="initial grid (default auto: best on validation)")
    p.add_argument("--teacher", default=None,
                   help="NAME:NFE (a baseline) or rk45:TOL (adaptive Dormand-Prince to a tolerance); default from the preset")
    p.add_argument("--loss", default="auto", choices=["auto", *LOSSES],
                   help="auto (default): perceptual for 1x28x28 pixel models (the bundled independent MNIST network), "
                        "else l2")
    p.add_argument("--samples", dest="num_samples", type=int, default=None, help="teacher samples (25%% validation)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate of the coefficients (default 1e-2 up to NFE 6, 2e-3 above: measured, "
                        "see s4s.learn.trainer.default_lr)")
    p.add_argument("--lr-decay", choices=LR_DECAYS, default=None,
                   help="learning-rate decay after warm-up (default from the preset)")
    p.add_argument("--ball-radius", type=float, default=None,
                   help="relaxed objective radius r (x sigma_T, RMS per element); 0 = plain, the default (0.1 cost "
                        "FD 55.17 vs 19.70 at NFE 5 on the bundled model, docs/bench_mnist)")
    p.add_argument("--learn-a", action=argparse.BooleanOptionalAction, default=None,
                   help="also learn the state weights a (default from the preset: on; --no-learn-a is the paper's form)")
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--decode-loss", action="store_true", help="latent pipelines: decode before the loss (default: latent loss)")
    p.add_argument("--preset", choices=["default", "fast"], default="default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="solver JSON to write")
    p.add_argument("--run-dir", type=Path, default=None, help="run folder (default: OUT-run/ beside the solver)")
    p.add_argument("--resume", action="store_true", help="continue the run in the run folder from its checkpoint")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.add_argument("--no-cache", action="store_true")
    _add_device_option(p)
    p.set_defaults(func=_cmd_learn)

    from s4s.baselines import BASELINES

    p = sub.add_parser("bench", help="every baseline and learned method over NFE on a model: table, JSON, plot")
    p.add_argument("--model", default=None)
    p.add_argument("--nfe", type=int, nargs="+", default=[3, 4, 5, 6, 8, 10])
    p.add_argument("--baselines", nargs="*", default=sorted(BASELINES), help="none: learned methods only")
    p.add_argument("--grids", nargs="+", default=["time", "logsnr"])
    p.add_argument("--methods", nargs="*", default=["s4s", "s4s-alt", "s4s-alt-pc"], help="none: baselines only")
    p.add_argument("--num-samples", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--preset", choices=["default", "fast"], default="default")
    p.add_argument("--teacher-rmse", action="store_true", help="also measure RMSE to the teacher (costly)")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--out", type=Path, default=Path("docs/bench_mnist"))
    _add_device_option(p)
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("bench-report", help="merge results.json files of `s4s bench` runs into one table and plot")
    p.add_argument("results", type=Path, nargs="+", help="`s4s bench` results.json files and `s4s eval --json` outputs (later ones win on the same method and NFE)")
    p.add_argument("--out", type=Path, required=True, help="folder for bench.md, results.json, fd_vs_nfe.png")
    p.add_argument("--title", default="Baselines vs learned solvers")
    p.add_argument("--note", action="append", default=[], help="a line of notes under the title (repeatable)")
    p.set_defaults(func=_cmd_bench_report)

    p = sub.add_parser("eval", help="sample a model with a solver and measure FD / distance to a teacher")
    p.add_argument("--model", default=None, help="local diffusers model or pipeline folder (default: the bundled MNIST UNet)")
    p.add_argument("--solver", default="dpmpp_3m", help="baseline name or a solver .json file")
    p.add_argument("--nfe", type=int, default=None, help="model calls (needed with a baseline name)")
    p.add_argument("--grid", default="logsnr", help="time grid for a baseline: edm, time, logsnr, quadratic")
    p.add_argument("--num-samples", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (class-balanced labels)")
    p.add_argument("--metrics", default="fd", help="comma list of: fd, teacher")
    p.add_argument("--teacher", default="unipc_bh2:100", help="NAME:NFE or rk45:TOL, the reference solver for --metrics teacher")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--inception-weights", type=Path, default=None, help="local Inception-v3 weights for RGB FID")
    p.add_argument("--reference-stats", type=Path, default=None, help="npz (mean, cov, count) of real-data features")
    p.add_argument("--no-cache", action="store_true", help="do not cache teacher samples")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--save-images", type=Path, default=None, help="write the first 100 samples as a PNG grid")
    _add_device_option(p)
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
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        log.error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
