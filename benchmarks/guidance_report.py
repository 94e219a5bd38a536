"""Tables, plot and sample grids of scripts/guidance_acceptance.sh runs (docs/guidance.md).

Reads result folders of that script, one learning seed each (the hand-designed solvers are taken from
the folders that have them), and writes ``--out``/``README``-ready Markdown to stdout:

* FD / class accuracy at every scale of the best hand-designed solver (the best of those measured on
  the full sample count), the single-scale learned solvers, the family and the second family
  (``family2``), one row per solver and seed, and each learned solver's FD relative to the
  single-scale solver of its seed and to the best hand-designed solver;
* learning cost (seconds of learning and of the teacher, from each ``learn_*.json``);

and ``fd_vs_guidance.png`` (FD against the scale, one line per solver and seed). With ``--samples W
...`` it also draws, for each such scale, one row of ten class-balanced samples (labels 0-9, the
evaluation noise of seed 0) per solver of the first folder, under the learning teacher's row:
``samples_w<W>.png``.

    python benchmarks/guidance_report.py docs/guidance_mnist/seed0 docs/guidance_mnist/seed1 \\
        --out docs/guidance_mnist --samples 1 8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional

LEARNED = {"single": "single-scale learned", "family": "family", "family2": "family, 2x steps"}


def read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def scale_of(result: dict[str, Any]) -> float:
    return float(result["guidance"])


def best_hand_designed(folders: list[Path]) -> dict[float, dict[str, Any]]:
    """Per scale, the full-size evaluation with the lowest FD among the hand-designed ones."""
    best: dict[float, dict[str, Any]] = {}
    for folder in folders:
        for path in sorted((folder / "baselines").glob("eval_*.json")):
            r = read(path)
            w = scale_of(r)
            if w not in best or r["fd"] < best[w]["fd"]:
                best[w] = r
    return best


def learned(folder: Path, kind: str) -> dict[float, dict[str, Any]]:
    """Per scale, the evaluation of the ``kind`` solver(s) of one folder."""
    pattern = "eval_single_w*.json" if kind == "single" else f"eval_{kind}_w*.json"
    return {scale_of(r): r for r in (read(p) for p in sorted(folder.glob(pattern)))}


def cell(r: Optional[dict[str, Any]]) -> str:
    return "–" if r is None else f"{r['fd']:.2f} / {r['accuracy']:.3f}"


def tables(folders: list[Path]) -> tuple[str, dict[str, list[tuple[float, float]]]]:
    best = best_hand_designed(folders)
    scales = sorted(set(best) | {w for f in folders for k in LEARNED for w in learned(f, k)})
    head = "| solver | " + " | ".join(f"w = {w:g}" for w in scales) + " |"
    rule = "|---|" + "---|" * len(scales)
    rows = ["| best hand-designed | " + " | ".join(
        "–" if w not in best else f"{cell(best[w])} ({best[w]['solver']}/{best[w]['grid']})" for w in scales) + " |"]
    ratios = []
    series = {"best hand-designed": [(w, best[w]["fd"]) for w in scales if w in best]}
    for folder in folders:
        single = learned(folder, "single")
        for kind, label in LEARNED.items():
            runs = learned(folder, kind)
            if not runs:
                continue
            name = f"{label} ({folder.name})"
            rows.append(f"| {name} | " + " | ".join(cell(runs.get(w)) for w in scales) + " |")
            series[name] = [(w, runs[w]["fd"]) for w in scales if w in runs]
            ratios.append(f"| {name} | " + " | ".join(
                "–" if w not in runs else
                (f"{runs[w]['fd'] / single[w]['fd']:.2f}" if w in single and kind != "single" else "") +
                (f"{' / ' if w in single and kind != 'single' else ''}{runs[w]['fd'] / best[w]['fd']:.2f}"
                 if w in best else "") for w in scales) + " |")
    text = ["FD (MNIST classifier features) / class accuracy:", "", head, rule, *rows, "",
            "FD relative to the single-scale solver of the same seed / to the best hand-designed solver:", "",
            head, rule, *ratios, "", "Learning cost (seconds of learning + seconds of its teacher):", "",
            "| run | " + " | ".join(f.name for f in folders) + " |", "|---|" + "---|" * len(folders)]
    runs = sorted({p.name for f in folders for p in f.glob("learn_*.json")})
    for run in runs:
        costs = []
        for f in folders:
            p = f / run
            costs.append("–" if not p.exists() else "{:.0f} + {:.0f}".format(read(p)["seconds"], read(p)["teacher_seconds"]))
        text.append(f"| {run[len('learn_'):-len('.json')]} | " + " | ".join(costs) + " |")
    return "\n".join(text) + "\n", series


def sample_grids(folder: Path, scales: list[float], out: Path) -> None:
    """One row of ten class-balanced samples per solver of ``folder`` at each scale."""
    import torch

    import s4s
    from s4s.eval.images import save_labelled_rows
    from s4s.eval.runner import generate
    from s4s.family import load_solver
    from s4s.teacher import DEFAULT_TEACHER, parse_teacher

    name, calls = parse_teacher(DEFAULT_TEACHER)  # a baseline on the log-SNR grid, as the teacher runs it
    model = s4s.load_model(None)
    best = best_hand_designed([folder])
    labels = torch.arange(10)
    for w in scales:
        shown = {f"teacher ({DEFAULT_TEACHER})": s4s.baseline(name, model.schedule, calls, grid="logsnr")}
        if w in best:
            b = best[w]
            shown[f"{b['solver']}/{b['grid']}"] = s4s.baseline(b["solver"], model.schedule, b["nfe"], grid=b["grid"])
        for kind, label in LEARNED.items():
            path = folder / (f"single_w{w:g}.json" if kind == "single" else f"{kind}.json")
            if path.exists():
                solver = load_solver(path)
                shown[label] = solver.at_guidance(w) if kind != "single" else solver
        rows = [generate(model, s, 10, 0, w, 10, False, labels) for s in shown.values()]
        save_labelled_rows(rows, list(shown), out / f"samples_w{w:g}.png", f"guidance {w:g}, same noise; NFE 5 but "
                           "the teacher")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", type=Path, nargs="+", help="result folders of scripts/guidance_acceptance.sh")
    p.add_argument("--out", type=Path, required=True, help="folder for the plot and sample grids")
    p.add_argument("--samples", type=float, nargs="*", default=[], help="scales to draw sample grids at")
    args = p.parse_args()
    text, series = tables(args.folders)
    print(text)
    from s4s.plotting import line_plot

    args.out.mkdir(parents=True, exist_ok=True)
    styles = {k: ({"lw": 1.2, "ls": "--"} if k == "best hand-designed" else {"lw": 2}) for k in series}
    line_plot(series, args.out / "fd_vs_guidance.png", "guidance scale w", "FD (MNIST classifier features)",
              "Bundled eps MNIST UNet, NFE 5", logy=False, styles=styles)
    if args.samples:
        sample_grids(args.folders[0], args.samples, args.out)


if __name__ == "__main__":
    main()
