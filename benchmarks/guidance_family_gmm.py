"""A guidance family against single-scale learned solvers and the hand-designed ones, on the exact mixture.

Class-conditional Gaussian mixture (the conditional and unconditional posterior means are exact, so
the guided denoiser is exact too); reference: RK45 to 1e-9 on the guided ODE from the same noise.
For every scale ``w`` in ``--scales``: RMSE to the reference of the best hand-designed solver (over
every baseline and grid), of a solver learned at that one scale, and of one family learned once for
``--range``. Same learning settings for all (method, steps, noises), one learning seed
(``--seed``).

Usage::

    python benchmarks/guidance_family_gmm.py --out docs/guidance_gmm.md

Results and how to read them: docs/guidance.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import s4s
from s4s.adaptive import rk45_sample
from s4s.family import anchor_scales, training_scales
from s4s.plotting import line_plot


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scales", type=float, nargs="+", default=[1, 2, 4, 6, 8])
    p.add_argument("--range", type=float, nargs=2, default=[1.0, 8.0])
    p.add_argument("--anchors", type=int, default=3)
    p.add_argument("--nfe", type=int, default=5)
    p.add_argument("--method", default="s4s-alt-pc")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--family-steps", type=int, default=None, help="steps of the family (default: --steps)")
    p.add_argument("--shared-fraction", type=float, default=None,
                   help="steps in which the family's anchors share one solver, as a fraction (default: the library's)")
    p.add_argument("--noises", type=int, default=400, help="teacher noises of a single-scale run (the family: the same)")
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--components", type=int, default=6)
    p.add_argument("--test-noises", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="learning seed of every solver (noises, batches)")
    p.add_argument("--out", type=Path, default=None, help="Markdown table here, plot beside it (.png)")
    args = p.parse_args()
    torch.set_num_threads(1)

    vp = s4s.VPDiscrete()
    gmm = s4s.GaussianMixture.random(dim=args.dim, components=args.components, seed=0)
    den = gmm.denoiser(vp)
    k = gmm.num_components
    kw = dict(seed=args.seed, method=args.method, teacher="dpmpp_3m:80", steps=args.steps, batch_size=32,
              val_every=25, cache=False, progress=False)
    t0 = time.time()
    lo, hi = args.range
    per = args.noises // (2 * args.anchors - 1)
    family_steps = args.family_steps or args.steps
    shared = {} if args.shared_fraction is None else {"shared_fraction": args.shared_fraction}
    family = s4s.learn(den, vp, args.nfe, (args.dim,), guidance_range=(lo, hi), anchors=args.anchors,
                       num_samples=per * (2 * args.anchors - 1), labels=torch.arange(per) % k,
                       **{**kw, "steps": family_steps}, **shared)
    family_seconds = time.time() - t0
    x = vp.prior_noise((args.test_noises, args.dim), generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    labels = torch.arange(args.test_noises) % k
    rows, single_seconds = [], []
    for w in args.scales:
        ref, _ = rk45_sample(den, x, vp, labels, w, rtol=1e-9, atol=1e-9)
        rmse = lambda solver: float((solver.sample(den, x, labels, w) - ref).pow(2).mean().sqrt())  # noqa: E731
        best_name, best = None, float("inf")
        for name in s4s.BASELINES:
            for grid in ("time", "logsnr", "edm", "quadratic"):
                e = rmse(s4s.baseline(name, vp, args.nfe, grid=grid))
                if e < best:
                    best_name, best = f"{name}/{grid}", e
        t0 = time.time()
        single = s4s.learn(den, vp, args.nfe, (args.dim,), guidance=w, num_samples=args.noises,
                           labels=torch.arange(args.noises) % k, **kw).solver
        single_seconds.append(time.time() - t0)
        rows.append((w, best_name, best, rmse(single), rmse(family.solver.at_guidance(w))))
    anchors = anchor_scales(lo, hi, args.anchors)
    trained = training_scales(lo, hi, args.anchors)
    mean_single = sum(single_seconds) / len(single_seconds)
    lines = [f"Command: `python benchmarks/guidance_family_gmm.py {' '.join(sys.argv[1:])}`", "",
             f"Exact mixture ({args.dim}-D, {args.components} classes), NFE {args.nfe}, {args.method}, {args.steps} "
             f"steps (the family: {family_steps}, its anchors one shared solver for the first "
             f"{100 * family.solver.metadata['shared_fraction']:g} % of them), {args.noises} teacher noises (the family: {per} at each of "
             f"{len(trained)} scales), learning seed {args.seed}; family "
             f"anchors {', '.join(f'{a:g}' for a in anchors)}; learned at {', '.join(f'{a:g}' for a in trained)}. "
             f"RMSE to RK45 (1e-9) on {args.test_noises} held-out noises.", "",
             "| w | best hand-designed | single-scale learned | family | family / single | family / best hand-designed |",
             "|---|---|---|---|---|---|"]
    for w, name, best, single, fam in rows:
        mark = "" if w in trained else " (never trained at)"
        lines.append(f"| {w:g}{mark} | {best:.4f} ({name}) | {single:.4f} | **{fam:.4f}** | {fam / single:.2f} | "
                     f"{fam / best:.2f} |")
    lines += ["", f"Learning time (this CPU, 1 thread): family {family_seconds:.0f} s, one single-scale solver "
              f"{mean_single:.0f} s on average ({family_seconds / mean_single:.2f}x); all single-scale solvers together "
              f"{sum(single_seconds):.0f} s."]
    checks = family.solver.metadata["between_scales"]
    lines += ["", "Learning's check halfway between the training scales (the family's noises, RMSE to its teacher, "
              "family / best screened hand-designed): " + "; ".join(
                  f"w = {w}: {c['family']:.4f} / {c['best']:.4f} ({c['best_solver']}){' **flagged**' if c['worse'] else ''}"
                  for w, c in checks.items()) + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
        line_plot({"best hand-designed": [(r[0], r[2]) for r in rows], "single-scale learned": [(r[0], r[3]) for r in rows],
                   "family": [(r[0], r[4]) for r in rows]}, args.out.with_suffix(".png"), "guidance scale w",
                  "RMSE to the exact ODE", f"Exact mixture, NFE {args.nfe}")


if __name__ == "__main__":
    main()
