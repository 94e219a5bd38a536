"""The ``s4s`` command line: ``demo`` (the main job), ``learn``, ``eval``, ``bench``, ``bench-baselines``."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from s4s.checks import first_line
from s4s.io import atomic_write_text
from s4s.teacher import default_cache_dir

log = logging.getLogger("s4s")


# --- argument checks: every range in one table, checked right after parsing, before any work ---------
NO_GUIDANCE = "none"

# dest -> (valid range in words, check); a list value (nargs) is checked element by element.
ARG_RULES: dict[str, tuple[str, Any]] = {
    "nfe": ("an integer >= 1", lambda v: v >= 1),
    "num_samples": ("an integer >= 2", lambda v: v >= 2),
    "teacher_samples": ("an integer >= 2", lambda v: v >= 2),
    "steps": ("an integer >= 1", lambda v: v >= 1),
    "batch_size": ("an integer >= 1", lambda v: v >= 1),
    "micro_batch": ("an integer >= 1", lambda v: v >= 1),
    "teacher_batch_size": ("an integer >= 1", lambda v: v >= 1),
    "val_every": ("an integer >= 1", lambda v: v >= 1),
    "seed": ("an integer >= 0", lambda v: v >= 0),
    "lr": ("a finite number > 0", lambda v: math.isfinite(v) and v > 0),
    "ball_radius": ("a finite number >= 0", lambda v: math.isfinite(v) and v >= 0),
    "guidance": ("a finite number, LO:HI with LO < HI (s4s learn: a guidance family), or 'none' (s4s eval)",
                 lambda v: v == NO_GUIDANCE or (isinstance(v, float) and math.isfinite(v)) or (
                     isinstance(v, tuple) and all(math.isfinite(x) for x in v) and v[0] < v[1])),
    "anchors": ("an integer >= 2", lambda v: v >= 2),
    "family": ("a range LO:HI with finite LO < HI", lambda v: isinstance(v, tuple) and all(math.isfinite(x) for x in v)
               and v[0] < v[1]),
    "save_images": ("a .png file name", lambda v: Path(v).suffix.lower() == ".png"),
}


def guidance_arg(text: str) -> Any:
    """``--guidance``: a number, ``LO:HI`` (a range, for a guidance family), or ``none`` (explicitly unguided)."""
    text = text.strip().lower()
    if text == NO_GUIDANCE:
        return NO_GUIDANCE
    if ":" in text:
        lo, _, hi = text.partition(":")
        return float(lo), float(hi)
    return float(text)


def check_args(args: argparse.Namespace) -> None:
    """One ``ValueError`` for the first argument outside its range (:data:`ARG_RULES`)."""
    for dest, (valid, ok) in ARG_RULES.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if dest == "guidance" and value == NO_GUIDANCE and args.command != "eval":
            raise ValueError("--guidance none is for s4s eval; leave --guidance out instead")
        if dest == "guidance" and isinstance(value, tuple) and args.command != "learn":
            raise ValueError("--guidance LO:HI (a range) is for s4s learn; evaluate a family at one scale, --guidance W")
        flag = f"--{dest.replace('_', '-')}"
        for v in value if isinstance(value, list) else [value]:
            if not ok(v):
                raise ValueError(f"{flag} must be {valid}, got {v}")


def json_text(value: Any) -> str:
    """``value`` as valid JSON: NaN / inf (never valid JSON) become null."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(value), allow_nan=False)


def emit(args: argparse.Namespace, result: Any, text: str) -> int:
    """Print a command's result (rank 0 only under torchrun): one JSON document with ``--json``, else the
    human-readable ``text``."""
    from s4s import distributed

    if distributed.is_main():
        print(json_text(result) if getattr(args, "json", False) else text)
    return 0


def _cmd_bench_baselines(args: argparse.Namespace) -> int:
    from s4s.bench.gmm import baseline_errors, default_testbed, gmm_schedule, markdown_report, plot_best

    rows = baseline_errors(default_testbed(), gmm_schedule(), nfes=args.nfe, num_samples=args.num_samples, seed=args.seed)
    title = "Hand-designed solvers on the exact Gaussian-mixture model (16-D, 6 components, DDPM linear schedule)"
    command = "s4s bench-baselines " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "s4s bench-baselines"
    report = markdown_report(rows, title, command.strip())
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, report)
        plot = plot_best(rows, args.out.with_suffix(".png"), "Exact GMM, DDPM linear schedule")
        log.info("wrote %s%s", args.out, f" and {plot}" if plot else "")
    return emit(args, rows, report)


# s4s learn flag (dest) -> LearnConfig field; the flags left unset keep the preset's value.
LEARN_FLAGS = {"method": "method", "teacher": "teacher", "teacher_samples": "num_samples",
               "teacher_batch_size": "teacher_batch_size", "val_every": "val_every", "steps": "steps",
               "batch_size": "batch_size", "micro_batch": "micro_batch", "lr": "lr", "lr_decay": "lr_decay", "loss": "loss",
               "range_aware": "range_aware", "backoff_ratio": "backoff_ratio", "backoff_scope": "backoff_scope",
               "ema": "ema", "optimizer": "optimizer", "damping": "damping", "fd_step": "fd_step",
               "lm_memory": "lm_memory", "lm_steps": "lm_steps",
               "ball_radius": "ball_radius", "base": "base", "grid": "grid", "screen_samples": "screen_samples",
               "probe_starts": "probe_starts", "probe_steps": "probe_steps", "learn_a": "learn_a",
               "decode_loss": "decode_loss", "guidance": "guidance", "anchors": "anchors",
               "shared_fraction": "shared_fraction", "seed": "seed"}


def learn_config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~s4s.LearnConfig` the flags ask for: the preset with every given flag replacing its field."""
    from s4s.learning.config import preset_config

    options = {field: getattr(args, dest) for dest, field in LEARN_FLAGS.items()}
    if isinstance(options["guidance"], tuple):  # --guidance LO:HI: one family for the range
        options["guidance_range"], options["guidance"] = options["guidance"], None
    return preset_config(args.preset, nfe=args.nfe, **options)


def _cmd_learn(args: argparse.Namespace) -> int:
    import time

    from s4s.bench.model import peak_gpu_memory_mb, peak_memory_mb
    from s4s.io import check_writable, check_writable_dir
    from s4s.learning.api import learn

    if args.out.exists() and not (args.force or args.resume):
        raise ValueError(f"{args.out} exists; pass --force to overwrite it (or --resume to continue its run)")
    run_dir = args.run_dir or args.out.with_name(args.out.stem + "-run")
    check_writable(args.out, "--out")  # before any teacher or learning work
    check_writable_dir(run_dir, "--run-dir")
    config = learn_config_from_args(args)
    config.validate()
    t0 = time.time()
    model = load_model_from_args(args, cache=not args.no_cache)
    result = learn(model, config=config, run_dir=run_dir, resume=args.resume, cache=not args.no_cache)
    result.solver.save(args.out)
    meta = result.solver.metadata
    summary = {**result.summary(), "solver": str(args.out), "run_dir": str(run_dir), "wall_seconds": time.time() - t0,
               "peak_memory_mb": peak_memory_mb(), "peak_gpu_memory_mb": peak_gpu_memory_mb()}
    lines = [f"learned {meta['method']} NFE {result.solver.nfe} from {result.base}/{result.grid}: validation RMSE to the "
             f"teacher {meta['base_val_rmse']:.4f} -> {meta['val_rmse']:.4f} ({meta['loss']}"
             f"{', range-aware targets' if meta.get('range_aware') else ''}: {meta['base_val_loss']:.4g} "
             f"-> {meta['val_loss']:.4g})"]
    if meta.get("data_range") is not None:
        lines.append(f"RMS distance of the samples to the data range {meta['data_range']}: "
                     f"{meta['base_val_range_excursion']:.4f} -> {meta['val_range_excursion']:.4f}")
    if meta.get("probe_losses"):
        starts = ", ".join(f"{k} {'stopped (non-finite)' if v is None else f'{v:.4g}'}"
                           for k, v in meta["probe_losses"].items())
        lines.append(f"probe ({min(config.probe_steps, config.steps)} steps from each start, validation "
                     f"{meta['loss']}): {starts} -> continued {result.base}/{result.grid}")
    if meta.get("rmse_guard_refusals"):
        lines.append(f"{meta['rmse_guard_refusals']} validation(s) with a lower {meta['loss']} but a worse RMSE to the "
                     "teacher than the base were not kept")
    if meta.get("lr_backoffs"):
        halved = "the learning rates" if config.backoff_scope == "all" else "the rate of the parameters that had moved"
        lines.append(f"validation diverged at step(s) {', '.join(map(str, meta['lr_backoffs']))}: went back to the best "
                     f"solver with {halved} halved each time (kept step {meta['kept_step']})")
    if result.stopped:
        lines.append(f"stopped early: {result.stopped}")
    gpu = summary["peak_gpu_memory_mb"]
    per_step = summary["seconds_per_step"]
    lines.append(f"wrote {args.out} and {run_dir}/ ; wall time {summary['wall_seconds']:.0f} s (teacher "
                 f"{summary['teacher_seconds']:.0f} s{'' if per_step is None else f', {per_step:.3g} s per learning step'}), "
                 f"peak memory {summary['peak_memory_mb']:.0f} MB{'' if gpu is None else f', GPU {gpu:.0f} MB'}")
    return emit(args, summary, "\n".join(lines))


def _cmd_bench(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from s4s.bench.model import feature_space_of, markdown_table, plot_fd, run_model_bench

    from s4s.baselines import BASELINES, HEUN
    from s4s.bench.model import load_cells
    from s4s.grids import GRIDS
    from s4s.io import check_writable_dir

    if not args.baselines and not args.methods:
        raise ValueError("s4s bench: nothing to run (--baselines and --methods are both empty)")
    unknown = sorted(set(args.baselines) - set(BASELINES) - {HEUN}) + sorted(set(args.grids) - set(GRIDS))
    if unknown:
        raise ValueError(f"unknown baseline(s) or grid(s) {unknown}; baselines: {sorted(BASELINES)}, grids: {sorted(GRIDS)}")
    results = args.out / "results.json"
    if results.exists() and not (args.force or args.merge):
        raise ValueError(f"{results} holds earlier results; pass --merge to add these cells to them (same method and "
                         "NFE: replaced) or --force to overwrite them")
    earlier = load_cells([results]) if results.exists() and args.merge else []
    check_writable_dir(args.out, "--out")
    model = load_model_from_args(args, cache=not args.no_cache)
    scales = args.guidance or []
    if len(scales) > 1 or args.family is not None:
        return _bench_guidance(args, model, scales)
    guidance = scales[0] if scales else None
    model.check_guidance(guidance)
    cells = run_model_bench(model, args.nfe, args.baselines, args.grids, args.methods, args.num_samples, args.out,
                            seed=args.seed, guidance=guidance, preset=args.preset,
                            cache_dir=None if args.no_cache else default_cache_dir(),
                            teacher_metric=args.teacher_rmse, earlier=earlier)
    notes = [f"Model: {model.name}. FD in {feature_space_of(cells)} (lower is better), {args.num_samples} samples "
             f"per cell, seed {args.seed}, guidance {guidance}. Baselines on their best grid of "
             f"{', '.join(args.grids)} (shown); learned solvers with preset '{args.preset}'. Bold: learned and better "
             "than every baseline at that NFE.", "",
             "Command: `s4s " + " ".join(sys.argv[1:]) + "`"]
    table = markdown_table(cells, "Baselines vs learned solvers", notes)
    atomic_write_text(args.out / "bench.md", table)
    plot_fd(cells, args.out / "fd_vs_nfe.png", f"{model.name}: FD vs NFE")
    return emit(args, [asdict(c) for c in cells], table)


def _bench_guidance(args: argparse.Namespace, model: Any, scales: list[float]) -> int:
    """``s4s bench --guidance W1 W2 ... [--family LO:HI]``: per scale, baselines, single-scale learned
    solvers and one guidance family (learned once) side by side."""
    from dataclasses import asdict

    from s4s.bench.model import feature_space_of, guidance_table, plot_fd_vs_guidance, run_guidance_bench

    if not scales:
        raise ValueError("--family needs the scales to evaluate at: --guidance W1 W2 ...")
    family = args.family or (min(scales), max(scales))
    if not isinstance(family, tuple):
        raise ValueError("--family must be a range LO:HI")
    outside = [w for w in scales if not family[0] <= w <= family[1]]
    if outside:
        raise ValueError(f"--guidance {outside} lie outside --family {family[0]:g}:{family[1]:g}")
    model.check_guidance(scales[0])
    cells = run_guidance_bench(model, args.nfe, args.baselines, args.grids, args.methods, scales, family,
                               args.num_samples, args.out, seed=args.seed, preset=args.preset,
                               cache_dir=None if args.no_cache else default_cache_dir())
    notes = [f"Model: {model.name}. FD in {feature_space_of(cells)} / class accuracy, {args.num_samples} samples per "
             f"cell, seed {args.seed}, class-balanced labels. Single-scale solvers learned at each scale, the family once "
             f"for {family[0]:g}:{family[1]:g} (preset '{args.preset}'). Bold: learned and better than every baseline.",
             "", "Command: `s4s " + " ".join(sys.argv[1:]) + "`"]
    tables = []
    for nfe in args.nfe:
        tables.append(guidance_table(cells, nfe, f"NFE {nfe}: FD / accuracy against the guidance scale", notes))
        plot_fd_vs_guidance(cells, nfe, args.out / f"fd_vs_guidance_nfe{nfe}.png", f"{model.name}, NFE {nfe}")
    text = "\n".join(tables)
    atomic_write_text(args.out / "bench.md", text)
    return emit(args, [asdict(c) for c in cells], text)


def _cmd_bench_report(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from s4s.bench.model import guidance_table, load_cells, markdown_table, plot_fd, plot_fd_vs_guidance, save_cells

    cells = load_cells(args.results)
    merged = " ".join(str(p) for p in args.results)
    notes = list(args.note) + ["", f"Merged by `s4s bench-report {merged} --out {args.out}`"]
    args.out.mkdir(parents=True, exist_ok=True)
    if len({c.guidance for c in cells}) > 1:  # cells at several guidance scales: one table per NFE, FD against w
        nfes = sorted({c.nfe for c in cells})
        table = "\n".join(guidance_table(cells, n, f"{args.title}, NFE {n}", notes) for n in nfes)
        for n in nfes:
            plot_fd_vs_guidance(cells, n, args.out / f"fd_vs_guidance_nfe{n}.png", f"{args.title}, NFE {n}")
    else:
        table = markdown_table(cells, args.title, notes)
        plot_fd(cells, args.out / "fd_vs_nfe.png", args.title)
    atomic_write_text(args.out / "bench.md", table)
    save_cells(cells, args.out / "results.json")
    return emit(args, [asdict(c) for c in cells], table)


DEMO_BASELINES = ["ddim", "dpmpp_3m", "unipc_bh1", "unipc_bh2", "ipndm", "deis"]


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    from dataclasses import asdict

    from s4s.bench.model import feature_space_of, markdown_table, peak_gpu_memory_mb, peak_memory_mb, run_model_bench
    from s4s.models import load_model

    t0 = time.time()
    model = load_model(None)
    cells = run_model_bench(model, args.nfe, DEMO_BASELINES, ["time"], [args.method], args.num_samples, args.out,
                            preset="fast", cache_dir=default_cache_dir())
    notes = [f"Bundled MNIST UNet, unconditional (null label). FD in {feature_space_of(cells)}, {args.num_samples} "
             "samples per cell (a quick demo: `s4s bench` for the 10k-sample table); baselines on the time-uniform grid "
             f"(the best grid for this model's validation loss). {args.method} learned with the 'fast' preset and the "
             "default loss (perceptual: an MNIST network independent of the FD classifier). Sample grids "
             "side by side: " + ", ".join(str(args.out / f"samples_nfe{n}.png") for n in args.nfe)]
    text = (markdown_table(cells, f"s4s demo: {args.method} vs hand-designed solvers", notes)
            + f"total time {time.time() - t0:.0f} s, peak memory {peak_memory_mb():.0f} MB")
    return emit(args, {"cells": [asdict(c) for c in cells], "seconds": time.time() - t0,
                       "peak_memory_mb": peak_memory_mb(), "peak_gpu_memory_mb": peak_gpu_memory_mb()}, text)


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when PyTorch sees a GPU, else ``cpu``; anything else is checked to exist."""
    import torch

    from s4s import distributed

    if name == "auto" or (name == "cuda" and distributed.active()):
        return distributed.local_device()  # under torchrun: this rank's GPU, cuda:LOCAL_RANK
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r} is not a device name (auto, cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"--device {name}: PyTorch sees no such CUDA GPU ({torch.cuda.device_count()} visible)")
    try:
        torch.empty(1, device=device)
    except Exception as err:  # noqa: BLE001 - backends report a missing device in many ways
        raise ValueError(f"--device {name}: this PyTorch cannot use it ({type(err).__name__}: {first_line(err)})") from None
    return name


def _cmd_eval(args: argparse.Namespace) -> int:
    from s4s.eval.features import feature_network_for
    from s4s.eval.runner import evaluate, resolve_sampler

    from s4s.eval.runner import METRICS
    from s4s.io import check_writable

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown or not metrics:
        raise ValueError(f"--metrics: unknown or no metric(s) {unknown}; choose a comma list of {list(METRICS)}")
    if args.save_images is not None:
        if args.save_images.exists() and not args.force:
            raise ValueError(f"--save-images {args.save_images} exists; pass --force to overwrite it")
        check_writable(args.save_images, "--save-images")
    from s4s.family import GuidanceFamily

    model = load_model_from_args(args, cache=not args.no_cache)
    sampler = resolve_sampler(args.solver, model, args.nfe, args.grid)
    guidance = resolve_guidance(args.guidance, sampler)
    if isinstance(sampler, GuidanceFamily):  # the ordinary solver of the family at this scale
        sampler = sampler.at_guidance(guidance, clamp=args.clamp_guidance)
    feature_net = None
    if "fd" in metrics:
        feature_net = feature_network_for(model.image_shape, model.data, args.inception_weights, args.reference_stats,
                                          model.device)
    clip_scorer = None
    if "clip" in metrics:
        from s4s.eval.clip_score import CLIP_HELP, ClipScorer

        if args.clip_model is None:
            raise ValueError(f"--metrics clip: {CLIP_HELP}")
        clip_scorer = ClipScorer(args.clip_model, model.device)
    result = evaluate(model, sampler, num_samples=args.num_samples, seed=args.seed, guidance=guidance,
                      metrics=metrics, teacher=args.teacher, batch_size=args.batch_size, feature_net=feature_net,
                      cache_dir=None if args.no_cache else default_cache_dir(),
                      save_images=args.save_images, solver_label=args.solver, clip_scorer=clip_scorer)
    from s4s.solver import names_solver_file

    result["grid"] = None if names_solver_file(args.solver) else args.grid
    fd = "-" if result["fd"] is None else f"{result['fd']:.4f} ({result['feature_space']})"
    rmse = "-"
    if result["teacher_rmse"] is not None:
        clamp = "raw samples" if result["data_range"] is None else f"clamped to {result['data_range']}"
        rmse = f"{result['teacher_rmse']:.4f} (vs {result['teacher']}, {clamp}; raw {result['teacher_rmse_raw']:.4f})"
    lines = [f"solver {result['solver']}  NFE {result['nfe']}  samples {result['num_samples']}  seed {result['seed']}",
             f"  FD:           {fd}", f"  teacher RMSE: {rmse}"]
    if result["teacher_rmse_pixels"] is not None:
        lines.append(f"  teacher RMSE, decoded images (clamped to [-1, 1]): {result['teacher_rmse_pixels']:.4f}")
    if result["teacher_fd"] is not None:
        lines.append(f"  teacher's FD: {result['teacher_fd']:.4f} (the floor of a solver that matched it)")
    if result["accuracy"] is not None:
        teacher_part = "" if result["teacher_accuracy"] is None else f" (teacher: {result['teacher_accuracy']:.4f})"
        lines.append(f"  accuracy:     {result['accuracy']:.4f}{teacher_part}")
    if result["clip_score"] is not None:
        lines.append(f"  CLIP score:   {result['clip_score']:.2f}")
    if result["range_excursion"] is not None:
        teacher_part = ("" if result["teacher_range_excursion"] is None
                        else f" (teacher: {result['teacher_range_excursion']:.4f})")
        lines.append(f"  RMS distance to the data range {result['data_range']}: {result['range_excursion']:.4f}"
                     + teacher_part)
    lines.append(f"  time:         {result['seconds']:.1f} s (sampling {result['sample_seconds']:.1f} s)")
    return emit(args, result, "\n".join(lines))


def resolve_guidance(arg: Any, sampler: Any) -> Optional[float]:
    """``--guidance``: a scale, ``none`` (unguided), or absent: the scale the solver was learned with."""
    from s4s.family import GuidanceFamily

    if isinstance(sampler, GuidanceFamily) and arg in (None, NO_GUIDANCE):
        lo, hi = sampler.guidance_range
        raise ValueError(f"the solver is a guidance family: give the scale to sample at, --guidance W (W in "
                         f"[{lo:g}, {hi:g}])")
    if arg == NO_GUIDANCE:
        return None
    if arg is not None:
        return float(arg)
    recorded = sampler.metadata.get("guidance")
    if recorded is not None:
        log.info("guidance %g: the scale the solver was learned with (--guidance none: unguided)", recorded)
    return recorded


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (unset flags, store_true)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS or \
                "%(default)" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def _add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="where the model runs: auto (a GPU if PyTorch sees one), cpu, cuda, "
                                                    "cuda:1, ...")


def _add_data_option(p: argparse.ArgumentParser) -> None:
    from s4s.bundled import DATA_SETS

    p.add_argument("--data", choices=sorted(DATA_SETS), default=None,
                   help="the data set the model was trained on, when s4s ships networks for it (picks the FD classifier "
                        "and the perceptual loss); default: what the model folder declares, else none")


DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """``--model`` and what loading it needs: ``--dtype``, ``--data`` and the text-to-image options."""
    p.add_argument("--model", default=None, help="local diffusers model or pipeline folder: pixel / latent UNet "
                                                 "pipelines, StableDiffusion(XL|3)Pipeline, FluxPipeline (default: "
                                                 "the bundled MNIST UNet)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                   help="precision of the network's weights and calls (solver states and tables stay float32 / "
                        "float64; a solver learned in one precision samples in any)")
    g = p.add_argument_group("text-to-image pipelines")
    g.add_argument("--prompts", type=Path, default=None,
                   help="prompt file: one prompt a line, or a .csv / .jsonl with a caption column (learning splits it "
                        "into learning and validation prompts)")
    g.add_argument("--caption-column", default=None, help="the caption column of a .csv / .jsonl prompt file "
                                                         "(default: the first of caption, text, prompt)")
    g.add_argument("--negative-prompt", default=None, help="the unconditional branch of classifier-free guidance "
                                                          "(default: the pipeline's: an empty prompt, or zeros for SDXL)")
    g.add_argument("--height", type=int, default=None, help="image height in pixels (default: the pipeline's)")
    g.add_argument("--width", type=int, default=None, help="image width in pixels (default: the pipeline's)")
    g.add_argument("--max-sequence-length", type=int, default=None,
                   help="T5 tokens of SD3 / FLUX prompts (default: the pipeline's)")
    _add_data_option(p)


def load_model_from_args(args: argparse.Namespace, cache: bool = True) -> Any:
    """The model ``--model`` names, loaded with ``--dtype``, ``--data`` and, for a text-to-image
    pipeline, the prompts and image size."""
    import torch

    from s4s.models import load_model

    text = None
    if args.prompts is not None:
        from s4s.text2image import TextToImageOptions, read_prompts

        text = TextToImageOptions(tuple(read_prompts(args.prompts, args.caption_column)), args.negative_prompt,
                                  args.height, args.width, args.max_sequence_length)
    else:
        given = [f"--{n.replace('_', '-')}" for n in ("caption_column", "negative_prompt", "height", "width",
                                                      "max_sequence_length") if getattr(args, n) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} need --prompts (text-to-image pipelines)")
    return load_model(args.model, device=resolve_device(args.device), dtype=getattr(torch, DTYPES[args.dtype]),
                      data=args.data, text=text, cache=cache)


def _add_json_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as one JSON document on stdout")


def _preset_help(text: str, field: str) -> str:
    """``text`` with the value of ``field`` in each learning preset."""
    from s4s.learning.config import PRESETS

    values = ", ".join(f"{name} {getattr(cfg, field)}" for name, cfg in PRESETS.items())
    return f"{text} (default: the preset's: {values})"


def build_parser() -> argparse.ArgumentParser:
    from s4s import __version__
    from s4s.learning.config import BACKOFF_SCOPES, DEFAULT_LR, LR_DECAYS, METHODS, OPTIMIZERS, PRESETS
    from s4s.learning.objectives import LOSSES

    parser = argparse.ArgumentParser(prog="s4s", description="Learned few-step solvers for diffusion models.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"s4s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)

    p = command("demo", "the main job: learn a solver at NFE 4 and 5 on the bundled model and compare it with the "
                        "hand-designed solvers (results: docs/demo)")
    p.add_argument("--nfe", type=int, nargs="+", default=[4, 5], help="model-call budgets to learn and compare")
    p.add_argument("--num-samples", type=int, default=1000, help="samples per table cell")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder for solvers, run folders, sample grids")
    p.add_argument("--method", choices=METHODS, default=PRESETS["fast"].method, help="learning method")
    _add_json_option(p)
    p.set_defaults(func=_cmd_demo)

    p = command("learn", "learn a solver (S4S / S4S-Alt) for a model and an NFE budget")
    _add_model_options(p)
    p.add_argument("--nfe", type=int, required=True, help="model calls of the solver to learn")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="learning recipe; every flag below replaces one of its settings (s4s.learning.config)")
    p.add_argument("--method", choices=METHODS, default=None, help=_preset_help("learning method", "method"))
    p.add_argument("--base", default=None, help="base solver, or auto: the best on validation of the candidates "
                                                "(docs/design.md §5.5)")
    p.add_argument("--grid", default=None, help="initial grid, or auto: the best on validation")
    p.add_argument("--screen-samples", type=int, default=None,
                   help=_preset_help("validation noises each (base, grid) pair is scored on to rank the starts",
                                     "screen_samples"))
    p.add_argument("--probe-starts", type=int, default=None,
                   help=_preset_help("learn from this many of the best-scored (base, grid) starts for --probe-steps "
                                     "each, then continue the best (1: no probe; docs/design.md §5.5)", "probe_starts"))
    p.add_argument("--probe-steps", type=int, default=None,
                   help=_preset_help("optimiser steps of each start in the probe", "probe_steps"))
    p.add_argument("--teacher", default=None, help=_preset_help("NAME:NFE (a baseline) or rk45:TOL (adaptive "
                                                                "Dormand-Prince to a tolerance)", "teacher"))
    p.add_argument("--teacher-samples", type=int, default=None,
                   help=_preset_help("teacher noises, >= 2, learning and validation together", "num_samples"))
    p.add_argument("--teacher-batch-size", type=int, default=None,
                   help=_preset_help("noises per teacher batch (the unit of caching and of splitting over processes)",
                                     "teacher_batch_size"))
    p.add_argument("--loss", default=None, choices=["auto", *LOSSES],
                   help=_preset_help("distance to the teacher; auto: perceptual where the model declares a data set "
                                     "s4s ships a perceptual network for, else l2", "loss"))
    p.add_argument("--range-aware", action=argparse.BooleanOptionalAction, default=None,
                   help="pixel models: teacher values beyond the data range are targets only up to its edge, as "
                        "the clamped image shows them; --no-range-aware: the raw values (default: range-aware when "
                        "the teacher's own samples leave the range, see docs/design.md §5.3)")
    p.add_argument("--steps", type=int, default=None, help=_preset_help("optimiser steps", "steps"))
    p.add_argument("--batch-size", type=int, default=None, help=_preset_help("teacher samples per step", "batch_size"))
    p.add_argument("--micro-batch", type=int, default=None,
                   help="samples per forward/backward pass; gradients are summed over the batch, so the step is the "
                        "same with less memory (large models on one GPU: 1 or 2; default: the whole batch)")
    p.add_argument("--val-every", type=int, default=None,
                   help=_preset_help("steps between validations (and checkpoints)", "val_every"))
    p.add_argument("--lr", type=float, default=None,
                   help=f"Adam learning rate of the coefficients (default: {DEFAULT_LR:g} at every NFE; the run halves "
                        "it when validation diverges, see --backoff-ratio)")
    p.add_argument("--backoff-ratio", type=float, default=None,
                   help=_preset_help("a validation loss above RATIO x the best so far restores the best solver and "
                                     "halves the learning rates; 'inf': never", "backoff_ratio"))
    p.add_argument("--backoff-scope", choices=BACKOFF_SCOPES, default=None,
                   help=_preset_help("which learning rates a back-off halves: all, or those of the parameters "
                                     "(coefficients or grid) updated since the last validation", "backoff_scope"))
    p.add_argument("--ema", type=float, default=None,
                   help=_preset_help("decay of the moving average of the parameters that is validated and kept "
                                     "(0: the raw parameters)", "ema"))
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                   help=_preset_help("adam, or lm: Levenberg-Marquardt, each step the Gauss-Newton solve of one "
                                     "mini-batch with a finite-difference Jacobian (--preset lm sets its steps)",
                                     "optimizer"))
    p.add_argument("--damping", type=float, default=None,
                   help=_preset_help("lm: initial Levenberg-Marquardt damping", "damping"))
    p.add_argument("--fd-step", type=float, default=None,
                   help=_preset_help("lm: finite-difference step of the Jacobian", "fd_step"))
    p.add_argument("--lm-memory", type=float, default=None,
                   help=_preset_help("lm: weight of the earlier mini-batches' averaged Gauss-Newton model (0: none)",
                                     "lm_memory"))
    p.add_argument("--lm-steps", type=int, default=None,
                   help=_preset_help("adam: Levenberg-Marquardt steps before the Adam steps (from each start of the "
                                     "probe; 0: Adam only)", "lm_steps"))
    p.add_argument("--lr-decay", choices=LR_DECAYS, default=None, help=_preset_help("learning-rate decay after warm-up",
                                                                                    "lr_decay"))
    p.add_argument("--ball-radius", type=float, default=None,
                   help=_preset_help("relaxed objective radius r (x sigma_T, RMS per element); 0 = plain", "ball_radius"))
    p.add_argument("--learn-a", action=argparse.BooleanOptionalAction, default=None,
                   help=_preset_help("also learn the state weights a (--no-learn-a: the paper's form)", "learn_a"))
    p.add_argument("--guidance", type=guidance_arg, default=None,
                   help="classifier-free guidance scale to learn for (class-conditional models), or LO:HI: one solver "
                        "family for every scale in the range (docs/guidance.md)")
    p.add_argument("--anchors", type=int, default=None,
                   help=_preset_help("anchor scales of a guidance family (it learns at anchors and midpoints)", "anchors"))
    p.add_argument("--shared-fraction", type=float, default=None,
                   help=_preset_help("guidance family: the fraction of the steps in which its anchors learn one shared "
                                     "solver before each learns its own (docs/design.md §5.9)", "shared_fraction"))
    p.add_argument("--decode-loss", action="store_true", help="latent pipelines: measure the loss on decoded images "
                                                              "(default: on latents)")
    p.add_argument("--seed", type=int, default=None, help=_preset_help("seed of the teacher noise and of the batches",
                                                                       "seed"))
    p.add_argument("--out", type=Path, required=True, help="solver JSON to write")
    p.add_argument("--run-dir", type=Path, default=None, help="run folder (default: OUT-run/ beside the solver)")
    p.add_argument("--resume", action="store_true", help="continue the run in the run folder from its checkpoint")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.add_argument("--no-cache", action="store_true", help="do not cache teacher samples (default: $S4S_CACHE/teacher)")
    _add_device_option(p)
    _add_json_option(p)
    p.set_defaults(func=_cmd_learn)

    from s4s.baselines import BASELINES

    p = command("bench", "every baseline and learned method over NFE on a model: table, JSON, plot")
    _add_model_options(p)
    p.add_argument("--nfe", type=int, nargs="+", default=[3, 4, 5, 6, 8, 10], help="model-call budgets")
    p.add_argument("--baselines", nargs="*", default=sorted(BASELINES), help="none: learned methods only")
    p.add_argument("--grids", nargs="+", default=["time", "logsnr"], help="grids each baseline is tried on")
    p.add_argument("--methods", nargs="*", default=["s4s", "s4s-alt", "s4s-alt-pc"], help="none: baselines only")
    p.add_argument("--num-samples", type=int, default=10000, help="samples per cell")
    p.add_argument("--seed", type=int, default=0, help="seed of the evaluation noise")
    p.add_argument("--guidance", type=float, nargs="+", default=None,
                   help="classifier-free guidance scale; several: a table per NFE of FD / accuracy against the scale, "
                        "with single-scale solvers and a guidance family side by side")
    p.add_argument("--family", type=guidance_arg, default=None,
                   help="LO:HI, the range of the guidance family (default with several --guidance: their min:max)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default", help="learning recipe of the learned cells")
    p.add_argument("--teacher-rmse", action="store_true", help="also measure RMSE to the teacher (costly)")
    p.add_argument("--no-cache", action="store_true", help="do not cache teacher samples")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="folder for results.json, bench.md, plots")
    p.add_argument("--merge", action="store_true", help="add to the cells of an existing results.json in --out "
                                                        "(a cell of the same method and NFE is replaced)")
    p.add_argument("--force", action="store_true", help="overwrite an existing results.json in --out")
    _add_device_option(p)
    _add_json_option(p)
    p.set_defaults(func=_cmd_bench)

    p = command("bench-report", "merge results.json files of `s4s bench` runs into one table and plot")
    p.add_argument("results", type=Path, nargs="+", help="`s4s bench` results.json files and `s4s eval --json` outputs "
                                                         "(later ones win on the same method and NFE)")
    p.add_argument("--out", type=Path, required=True, help="folder for bench.md, results.json, fd_vs_nfe.png")
    p.add_argument("--title", default="Baselines vs learned solvers", help="table and plot title")
    p.add_argument("--note", action="append", default=[], help="a line of notes under the title (repeatable)")
    _add_json_option(p)
    p.set_defaults(func=_cmd_bench_report)

    p = command("eval", "sample a model with a solver and measure FD / distance to a teacher")
    _add_model_options(p)
    p.add_argument("--solver", default="dpmpp_3m", help="baseline name or a solver .json file")
    p.add_argument("--nfe", type=int, default=None, help="model calls (needed with a baseline name)")
    p.add_argument("--grid", default="logsnr", help="time grid for a baseline: edm, time, logsnr, quadratic")
    p.add_argument("--num-samples", type=int, default=10000, help="samples to draw and measure")
    p.add_argument("--seed", type=int, default=0, help="seed of the evaluation noise")
    p.add_argument("--guidance", type=guidance_arg, default=None,
                   help="classifier-free guidance scale (class-balanced labels); default: the scale a learned solver "
                        "records, else unguided; 'none': unguided")
    p.add_argument("--clamp-guidance", action="store_true",
                   help="a guidance family outside its learned range: use the nearest end (default: refused)")
    p.add_argument("--metrics", default="fd", help="comma list of: fd, teacher, clip (text-to-image, needs "
                                                   "--clip-model)")
    p.add_argument("--clip-model", type=Path, default=None, help="local transformers CLIP folder for --metrics clip")
    p.add_argument("--teacher", default="unipc_bh2:100", help="NAME:NFE or rk45:TOL, the reference solver for "
                                                              "--metrics teacher")
    p.add_argument("--batch-size", type=int, default=500, help="samples per sampling batch")
    p.add_argument("--inception-weights", type=Path, default=None, help="local Inception-v3 weights for RGB FID")
    p.add_argument("--reference-stats", type=Path, default=None, help="npz (mean, cov, count) of real-data features")
    p.add_argument("--no-cache", action="store_true", help="do not cache teacher samples")
    p.add_argument("--save-images", type=Path, default=None, help="write the first 100 samples as a PNG grid")
    p.add_argument("--force", action="store_true", help="overwrite an existing --save-images file")
    _add_device_option(p)
    _add_json_option(p)
    p.set_defaults(func=_cmd_eval)

    p = command("bench-baselines", "every baseline x NFE x grid on the exact Gaussian mixture")
    p.add_argument("--nfe", type=int, nargs="+", default=[3, 4, 5, 6, 8, 10], help="model-call budgets")
    p.add_argument("--num-samples", type=int, default=256, help="noises per cell")
    p.add_argument("--seed", type=int, default=0, help="seed of the evaluation noise")
    p.add_argument("--out", type=Path, default=None, help="write the Markdown table here (and a .png plot beside it)")
    _add_json_option(p)
    p.set_defaults(func=_cmd_bench_baselines)
    return parser


# Failures a user can cause (bad input, missing or damaged files, no such device, non-finite samples):
# one line and exit code 2. Anything else is a bug in s4s: one line saying so, exit code 1.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, RuntimeError, TypeError, FloatingPointError,
                                                    ImportError, KeyError, EOFError)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; every failure is one line on stderr (the traceback only with ``-v``). Under
    torchrun every rank runs it; rank 0 logs at INFO and prints, the others log warnings and errors."""
    from s4s import distributed

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    ok = False
    try:
        check_args(args)
        if distributed.setup():
            logging.getLogger().setLevel(logging.DEBUG if args.verbose else (
                logging.INFO if distributed.is_main() else logging.WARNING))
            log.info("running on %d processes (%s)", distributed.world_size(), distributed.backend_name())
        code = args.func(args)
        ok = True
        return code
    except KeyboardInterrupt:
        log.error("interrupted (a learning run continues with --resume; cached teacher batches are kept)")
        return 130
    except EXPECTED_ERRORS as err:
        if args.verbose:
            log.exception("%s", first_line(err))
        else:
            log.error("%s%s", "" if isinstance(err, ValueError) else f"{type(err).__name__}: ", first_line(err))
        return 2
    except Exception as err:  # noqa: BLE001 - a bug: say so in one line, the traceback with -v
        if args.verbose:
            log.exception("internal error")
        else:
            log.error("internal error (a bug in s4s; rerun with -v for the traceback): %s: %s", type(err).__name__,
                      first_line(err))
        return 1
    finally:
        distributed.teardown(wait=ok)


if __name__ == "__main__":
    sys.exit(main())
