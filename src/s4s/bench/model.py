"""Baselines vs learned solvers on a real model: FD (and optionally teacher RMSE) per NFE.

Every cell uses the same seeded noise and labels, the same number of samples and the same
feature network. Baselines are tried on each grid in ``grids`` and reported on their best one
(the grid is printed); learned solvers are trained once per (method, NFE) on teacher data drawn
from seeds disjoint from the evaluation seeds.
"""

from __future__ import annotations

import json
import logging
import resource
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from s4s.baselines import baseline, nfe_supported
from s4s.eval.features import feature_network_for
from s4s.eval.frechet import FeatureStats, frechet_distance
from s4s.eval.images import save_labelled_rows
from s4s.eval.runner import batched, evaluate, generate, sampling_labels
from s4s.io import atomic_write_text
from s4s.learning.api import LEARN_SEED_OFFSET, learn
from s4s.learning.config import preset_config
from s4s.learning.model_losses import resolve_loss
from s4s.teacher import make_teacher_data
from s4s.models import LoadedModel
from s4s.plotting import line_plot

log = logging.getLogger(__name__)

__all__ = ["BenchCell", "run_model_bench", "run_guidance_bench", "markdown_table", "guidance_table", "plot_fd",
           "plot_fd_vs_guidance", "peak_memory_mb", "peak_gpu_memory_mb", "load_cells", "save_cells"]

def peak_memory_mb() -> float:
    """Peak resident memory of this process (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_gpu_memory_mb() -> Optional[float]:
    """Peak memory PyTorch allocated on this process's current CUDA GPU, or None without one."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda.max_memory_allocated() / 2**20


@dataclass
class BenchCell:
    method: str
    kind: str              # "baseline" or "learned"
    nfe: int
    grid: str
    fd: Optional[float]
    teacher_rmse: Optional[float]
    seconds: float
    learn_seconds: Optional[float] = None
    solver_file: Optional[str] = None
    feature_space: Optional[str] = None   # the features the FD is computed in
    guidance: Optional[float] = None      # the classifier-free guidance scale sampled at
    accuracy: Optional[float] = None      # the classifier's accuracy on the requested classes (guided only)


def feature_space_of(cells: Sequence[BenchCell]) -> str:
    """The one feature space of ``cells`` (FDs in different features are not comparable: refused)."""
    spaces = {c.feature_space for c in cells if c.feature_space is not None}
    if len(spaces) > 1:
        raise ValueError(f"these cells measure FD in different features ({sorted(spaces)}); they cannot share a table")
    return spaces.pop() if spaces else "features not recorded"


def run_model_bench(model: LoadedModel, nfes: Sequence[int], baselines: Sequence[str], grids: Sequence[str],
                    methods: Sequence[str], num_samples: int, out_dir: Path, seed: int = 0,
                    guidance: Optional[float] = None, preset: str = "default", learn_options: Optional[dict[str, Any]] = None,
                    cache_dir: Optional[Path] = None, teacher_metric: bool = False, progress: bool = True,
                    image_count: int = 10, earlier: Sequence["BenchCell"] = ()) -> list[BenchCell]:
    """Run the benchmark; writes learned solvers, run folders and sample grids under ``out_dir``.

    ``results.json`` is rewritten after every cell with ``earlier`` cells (e.g. of an earlier run,
    ``s4s bench --merge``) plus the new ones; a new cell replaces an earlier one of the same
    (method, NFE). Returns that merged list."""
    out_dir.mkdir(parents=True, exist_ok=True)
    feature_net = feature_network_for(model.image_shape, model.data, device=model.device)
    config = preset_config(preset, **(learn_options or {})).with_options(guidance=guidance, seed=seed)
    loss, feature_fn = resolve_loss(model, config.loss)
    config = config.with_options(loss=loss)
    metrics = ["fd"] + (["teacher"] if teacher_metric else [])
    teacher_data = None
    if methods:  # one teacher set for every learned cell, the one s4s.learn would make with these settings
        teacher_data = make_teacher_data(
            model.denoiser, model.schedule, model.sample_shape, num_samples=config.num_samples, teacher=config.teacher,
            seed=seed + LEARN_SEED_OFFSET,
            labels=model.learning_labels(config.num_samples, config.val_fraction, guided=guidance is not None),
            guidance=guidance, batch_size=config.teacher_batch_size, cache_dir=cache_dir, progress=progress,
            device=model.device)
    cells: list[BenchCell] = []

    def merged() -> list[BenchCell]:
        by_key = {(c.method, c.nfe, c.guidance): c for c in earlier}
        by_key.update({(c.method, c.nfe, c.guidance): c for c in cells})
        return list(by_key.values())

    def save_results() -> None:  # after every cell, so an interrupted bench keeps what it measured
        save_cells(merged(), out_dir / "results.json")
    for nfe in nfes:
        shown: dict[str, torch.Tensor] = {}
        for name in baselines:
            if not nfe_supported(name, nfe):
                log.info("NFE %d: %s does not exist at this NFE (two calls a step: odd NFE only); skipped", nfe, name)
                continue
            best: Optional[BenchCell] = None
            for grid in grids:
                sampler = baseline(name, model.schedule, nfe, grid=grid)
                if sampler.nfe != nfe:
                    continue
                r = evaluate(model, sampler, num_samples, seed, guidance, metrics, config.teacher, feature_net=feature_net,
                             cache_dir=cache_dir, progress=progress, solver_label=name)
                cell = BenchCell(name, "baseline", nfe, grid, r["fd"], r["teacher_rmse"], r["seconds"],
                                 feature_space=r["feature_space"], guidance=guidance, accuracy=r["accuracy"])
                log.info("NFE %d %s/%s: FD %.3f", nfe, name, grid, cell.fd)
                if best is None or cell.fd < best.fd:
                    best = cell
            if best is not None:
                cells.append(best)
                save_results()
                shown[f"{name} ({best.grid})"] = baseline(name, model.schedule, nfe, grid=best.grid)
        for method in methods:
            run_dir = out_dir / f"{method}-nfe{nfe}"
            res = learn(model, nfe=nfe, config=config, method=method, run_dir=run_dir, progress=progress,
                        teacher_data=teacher_data, feature_fn=feature_fn)
            path = res.solver.save(out_dir / f"{method}-nfe{nfe}.json")
            r = evaluate(model, res.solver, num_samples, seed, guidance, metrics, config.teacher, feature_net=feature_net,
                         cache_dir=cache_dir, progress=progress, solver_label=method)
            label = learned_label(res.solver.metadata)
            cells.append(BenchCell(label, "learned", nfe, f"learned from {res.solver.metadata['base']}/"
                                   f"{res.solver.metadata['grid_init']}", r["fd"], r["teacher_rmse"], r["seconds"],
                                   res.seconds, str(path), r["feature_space"], guidance, r["accuracy"]))
            save_results()
            log.info("NFE %d %s: FD %.3f (learned in %.0f s)", nfe, method, r["fd"], res.seconds)
            shown[label] = res.solver
        if shown and image_count:
            labels = sampling_labels(model, image_count, guidance)
            rows = [generate(model, s, image_count, seed, guidance, image_count, False, labels) for s in shown.values()]
            save_labelled_rows(rows, list(shown), out_dir / f"samples_nfe{nfe}.png", f"NFE {nfe}, same noise")
    save_results()
    return merged()


def run_guidance_bench(model: LoadedModel, nfes: Sequence[int], baselines: Sequence[str], grids: Sequence[str],
                       methods: Sequence[str], scales: Sequence[float], family_range: tuple[float, float],
                       num_samples: int, out_dir: Path, seed: int = 0, preset: str = "default",
                       cache_dir: Optional[Path] = None, progress: bool = True) -> list[BenchCell]:
    """FD and class accuracy per guidance scale: at every scale in ``scales`` the baselines and the
    solvers learned at that one scale (:func:`run_model_bench`, under ``out_dir/w<scale>``), and, per
    method and NFE, one guidance family learned once for ``family_range`` and evaluated at every scale.
    Writes ``results.json`` (every cell with its ``guidance``) and returns the cells."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cells: list[BenchCell] = []
    for w in scales:
        cells += run_model_bench(model, nfes, baselines, grids, methods, num_samples, out_dir / f"w{w:g}", seed=seed,
                                 guidance=w, preset=preset, cache_dir=cache_dir, progress=progress)
        save_cells(cells, out_dir / "results.json")
    feature_net = feature_network_for(model.image_shape, model.data, device=model.device)
    config = preset_config(preset).with_options(seed=seed, guidance_range=tuple(family_range))
    for nfe in nfes:
        for method in methods:
            res = learn(model, nfe=nfe, config=config, method=method, run_dir=out_dir / f"family-{method}-nfe{nfe}",
                        cache_dir=cache_dir, cache=cache_dir is not None, progress=progress)
            path = res.solver.save(out_dir / f"family-{method}-nfe{nfe}.json")
            label = f"{learned_label(res.solver.metadata)} family {family_range[0]:g}:{family_range[1]:g}"
            for w in scales:
                r = evaluate(model, res.solver.at_guidance(w), num_samples, seed, w, ["fd"], feature_net=feature_net,
                             progress=progress, solver_label=label)
                cells.append(BenchCell(label, "learned", nfe, f"learned from {res.base}/{res.grid}", r["fd"], None,
                                       r["seconds"], res.seconds + res.teacher_seconds, str(path), r["feature_space"],
                                       w, r["accuracy"]))
                log.info("NFE %d %s at guidance %g: FD %.3f", nfe, label, w, r["fd"])
                save_cells(cells, out_dir / "results.json")
    return cells


def guidance_table(cells: Sequence[BenchCell], nfe: int, title: str, notes: Sequence[str] = ()) -> str:
    """Markdown: one row per solver, one column per guidance scale, ``FD / accuracy``; the best
    hand-designed solver at each scale gets a row of its own (named in the cell); bold: the best
    learned cell per scale when it beats every hand-designed one."""
    at = [c for c in cells if c.nfe == nfe and c.guidance is not None]
    scales = sorted({c.guidance for c in at})
    fmt = lambda c: f"{c.fd:.2f}" + ("" if c.accuracy is None else f" / {c.accuracy:.3f}")  # noqa: E731
    best_base = {w: min((c for c in at if c.guidance == w and c.kind == "baseline"), key=lambda c: c.fd, default=None)
                 for w in scales}
    lines = [f"# {title}", "", *notes, "", "| solver | " + " | ".join(f"w = {w:g}" for w in scales) + " |",
             "|---|" + "---|" * len(scales)]
    row = [f"{best_base[w].method} {fmt(best_base[w])}" if best_base[w] else "–" for w in scales]
    lines.append("| best hand-designed (named) | " + " | ".join(row) + " |")
    for label in dict.fromkeys(c.method for c in at if c.kind == "learned"):
        by_w = {c.guidance: c for c in at if c.method == label}
        row = []
        for w in scales:
            c = by_w.get(w)
            if c is None:
                row.append("–")
                continue
            bold = best_base[w] is not None and c.fd < best_base[w].fd
            row.append(f"**{fmt(c)}**" if bold else fmt(c))
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot_fd_vs_guidance(cells: Sequence[BenchCell], nfe: int, path: Path, title: str) -> Optional[Path]:
    """FD vs guidance scale, one line per learned solver and one for the best hand-designed solver."""
    at = [c for c in cells if c.nfe == nfe and c.guidance is not None]
    scales = sorted({c.guidance for c in at})
    series = {"best hand-designed": [(w, min(c.fd for c in at if c.guidance == w and c.kind == "baseline"))
                                     for w in scales if any(c.guidance == w and c.kind == "baseline" for c in at)]}
    for label in dict.fromkeys(c.method for c in at if c.kind == "learned"):
        series[label] = sorted((c.guidance, c.fd) for c in at if c.method == label)
    styles = {k: ({"lw": 1.2, "ls": "--"} if k == "best hand-designed" else {"lw": 2.0}) for k in series}
    return line_plot(series, path, "guidance scale w", f"FD ({feature_space_of(at)})", title, styles=styles)


def save_cells(cells: Sequence[BenchCell], path: Path) -> None:
    """Write cells as the ``results.json`` that :func:`load_cells` reads."""
    atomic_write_text(path, json.dumps([asdict(c) for c in cells], indent=1) + "\n")


def learned_label(meta: dict[str, Any]) -> str:
    """Table label of a learned solver: its method, with the loss when it is not L2."""
    loss = meta.get("loss", "l2")
    return meta["method"] if loss == "l2" else f"{meta['method']} ({loss})"


def cell_from_eval(result: dict[str, Any]) -> BenchCell:
    """A bench cell from one ``s4s eval --json`` result; a learned solver file named by its
    ``solver`` key gives the method and base (as ``s4s bench`` labels learned cells; a guidance family
    is labelled with its range)."""
    from s4s.family import GuidanceFamily, load_solver
    from s4s.learning.config import METHODS
    from s4s.solver import names_solver_file

    label, path = result["solver"], Path(str(result["solver"]))
    common = dict(feature_space=result.get("feature_space"), guidance=result.get("guidance"),
                  accuracy=result.get("accuracy"))
    if names_solver_file(path) and path.is_file():
        solver = load_solver(path)
        meta = solver.metadata
        if meta.get("method") in METHODS:
            label = learned_label(meta)
            if isinstance(solver, GuidanceFamily):
                label += " family {:g}:{:g}".format(*solver.guidance_range)
            return BenchCell(label, "learned", int(result["nfe"]), f"learned from {meta.get('base')}/"
                             f"{meta.get('grid_init')}", result["fd"], result.get("teacher_rmse"), result["seconds"],
                             solver_file=str(path), **common)
    return BenchCell(label, "baseline", int(result["nfe"]), str(result.get("grid", "")), result["fd"],
                     result.get("teacher_rmse"), result["seconds"], **common)


def load_cells(paths: Sequence[Path]) -> list[BenchCell]:
    """Cells from ``s4s bench`` ``results.json`` files (e.g. a bench split over processes or
    machines) and ``s4s eval --json`` outputs; a later cell replaces an earlier one with the same
    (method, NFE, guidance)."""
    merged: dict[tuple[str, int, Optional[float]], BenchCell] = {}
    for path in paths:
        try:
            rows = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read bench results {path}: {err}") from err
        for row in rows if isinstance(rows, list) else [rows]:
            cell = BenchCell(**row) if "kind" in row else cell_from_eval(row)  # bench cells have a kind, eval results not
            merged[(cell.method, cell.nfe, cell.guidance)] = cell
    return list(merged.values())


def real_data_floor(feature_net, images: torch.Tensor) -> float:
    """FD of real images to the reference statistics (the noise floor of the metric)."""
    feats = batched(feature_net.features, images, device=feature_net.device)
    return frechet_distance(FeatureStats.from_features(feats), feature_net.reference)


def markdown_table(cells: list[BenchCell], title: str, notes: Sequence[str] = ()) -> str:
    nfes = sorted({c.nfe for c in cells})
    methods = list(dict.fromkeys(c.method for c in cells))
    lines = [f"# {title}", ""] + [f"{n}" for n in notes] + ["", "| solver | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
                                                            "|---|" + "---|" * len(nfes)]
    by = {(c.method, c.nfe): c for c in cells}
    best_baseline = {n: min((c.fd for c in cells if c.nfe == n and c.kind == "baseline"), default=None) for n in nfes}
    for m in methods:
        row = []
        for n in nfes:
            c = by.get((m, n))
            if c is None:
                row.append("–")
                continue
            grid = "" if c.kind == "learned" else f" ({c.grid})"
            bold = c.kind == "learned" and best_baseline[n] is not None and c.fd < best_baseline[n]
            val = f"{c.fd:.2f}" + (f" / {c.teacher_rmse:.3f}" if c.teacher_rmse is not None else "")
            row.append((f"**{val}**" if bold else val) + grid)
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot_fd(cells: list[BenchCell], path: Path, title: str) -> Optional[Path]:
    """FD vs NFE per solver (learned ones drawn bold), log scale."""
    feature_space = feature_space_of(cells)
    series = {m: sorted((c.nfe, c.fd) for c in cells if c.method == m) for m in dict.fromkeys(c.method for c in cells)}
    learned = {c.method for c in cells if c.kind == "learned"}
    styles = {m: ({"lw": 2.5} if m in learned else {"lw": 1.2, "ls": "--"}) for m in series}
    return line_plot(series, path, "NFE", f"FD ({feature_space})", title, styles=styles)
