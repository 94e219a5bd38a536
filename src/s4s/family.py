r"""One solver for a range of classifier-free guidance scales (docs/design.md §5.9).

A :class:`GuidanceFamily` holds anchor scales ``w_1 < ... < w_K`` and one :class:`~s4s.Solver` per
anchor, all with the same NFE, table structure and schedule. At a scale ``w`` in ``[w_k, w_{k+1}]``
the family is the solver whose grid, input times and tables are the linear interpolation

    P(w) = (1 - u) P_k + u P_{k+1},   u = (w - w_k) / (w_{k+1} - w_k),

of the two neighbouring anchors' (a convex combination of decreasing grids with equal ends is a
decreasing grid with the same ends, and of lower-triangular tables a lower-triangular table, so every
``P(w)`` is a valid solver). :func:`mix` is that interpolation, used both here and, differentiably,
while learning. Outside ``[w_1, w_K]`` the family refuses, unless asked to clamp to the nearest end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

from s4s.solver import FORMAT, FORMAT_VERSION, Solver, SolverFileError, Tables, read_solver_json, write_solver_json

__all__ = ["GuidanceFamily", "mix", "interval", "training_scales", "anchor_scales", "load_solver", "FAMILY_KIND"]

FAMILY_KIND = "guidance_family"


def anchor_scales(lo: float, hi: float, anchors: int) -> list[float]:
    """``anchors`` evenly spaced scales from ``lo`` to ``hi`` (the family's knots)."""
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"a guidance range needs finite lo < hi, got {lo}:{hi}")
    if anchors < 2:
        raise ValueError(f"a guidance family needs >= 2 anchors, got {anchors}")
    return [lo + (hi - lo) * k / (anchors - 1) for k in range(anchors)]


def training_scales(lo: float, hi: float, anchors: int) -> list[float]:
    """The scales the family learns at: its anchors and the midpoints between them (``2K - 1``), so that
    the interpolation between anchors is learned too, not only the knots."""
    return anchor_scales(lo, hi, 2 * anchors - 1)


def interval(scales: Sequence[float], w: float) -> tuple[int, float]:
    """``(k, u)``: ``w`` lies between ``scales[k]`` and ``scales[k + 1]`` at fraction ``u`` (``w`` in range)."""
    k = max(0, min(len(scales) - 2, sum(1 for s in scales[1:-1] if s <= w)))
    return k, (w - scales[k]) / (scales[k + 1] - scales[k])


Parts = tuple[Tensor, Tensor, Tables]  # grid, input times, tables


def _lerp(a: Optional[Tensor], b: Optional[Tensor], u: float) -> Optional[Tensor]:
    return None if a is None else a + u * (b - a)


def mix(p: Parts, q: Parts, u: float) -> Parts:
    """``(1 - u) p + u q`` for the grid, input times and every table (differentiable); exactly ``p`` at
    ``u = 0`` and ``q`` at ``u = 1``, so that the family is its anchors there to the last bit."""
    if u == 0:
        return p
    if u == 1:
        return q
    (tp, sp, xp), (tq, sq, xq) = p, q
    tables = Tables(_lerp(xp.a, xq.a, u), _lerp(xp.b, xq.b, u), _lerp(xp.ac, xq.ac, u), _lerp(xp.bc, xq.bc, u))
    return _lerp(tp, tq, u), _lerp(sp, sq, u), tables


@dataclass
class GuidanceFamily:
    """Anchor ``scales`` (increasing), one solver per anchor, and metadata (how it was learned)."""

    scales: list[float]
    solvers: list[Solver]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scales = [float(s) for s in self.scales]
        if len(self.scales) < 2 or len(self.scales) != len(self.solvers):
            raise SolverFileError(f"a guidance family needs >= 2 anchor scales, one solver each; got {len(self.scales)} "
                                  f"scales and {len(self.solvers)} solvers")
        if not all(math.isfinite(s) for s in self.scales) or any(b <= a for a, b in zip(self.scales, self.scales[1:])):
            raise SolverFileError(f"anchor scales must be finite and increasing, got {self.scales}")
        first = self.solvers[0]
        for i, s in enumerate(self.solvers[1:], 1):
            if s.nfe != first.nfe or s.tables.has_corrector != first.tables.has_corrector:
                raise SolverFileError(f"anchor {i} differs from anchor 0 in NFE or corrector")
            if s.schedule != first.schedule:
                raise SolverFileError(f"anchor {i} was built for another schedule than anchor 0")
            if not torch.equal(s.grid[[0, -1]], first.grid[[0, -1]]):
                raise SolverFileError(f"anchor {i}'s grid has other end points than anchor 0's")
        if not isinstance(self.metadata, dict):
            raise SolverFileError(f"metadata must be a dict, got {type(self.metadata).__name__}")

    @property
    def nfe(self) -> int:
        return self.solvers[0].nfe

    @property
    def schedule(self):
        return self.solvers[0].schedule

    @property
    def guidance_range(self) -> tuple[float, float]:
        return self.scales[0], self.scales[-1]

    def at_guidance(self, w: float, clamp: bool = False) -> Solver:
        """The ordinary solver for scale ``w``; outside the learned range one ``ValueError``, or with
        ``clamp`` the solver of the nearest end."""
        lo, hi = self.guidance_range
        if w is None or not math.isfinite(float(w)):
            raise ValueError(f"a guidance family needs a finite guidance scale in [{lo:g}, {hi:g}], got {w}")
        w = float(w)
        if not lo <= w <= hi:
            if not clamp:
                raise ValueError(f"guidance {w:g} is outside the range this family was learned for, [{lo:g}, {hi:g}] "
                                 "(clamp=True / --clamp-guidance uses the nearest end)")
            w = min(max(w, lo), hi)
        k, u = interval(self.scales, w)
        a, b = self.solvers[k], self.solvers[k + 1]
        grid, times, tables = mix((a.grid, a.input_times, a.tables), (b.grid, b.input_times, b.tables), u)
        meta = {**self.metadata, "guidance": w, "family_range": [lo, hi]}
        return Solver(grid, tables, times, self.schedule, meta)

    def sample(self, denoiser: Callable[..., Tensor], x_T: Tensor, cond: Any = None, guidance: Optional[float] = None,
               clamp: bool = False, **kwargs: Any) -> Tensor:
        """:meth:`Solver.sample` of :meth:`at_guidance` ``(guidance)``; the scale must be given."""
        if guidance is None:
            lo, hi = self.guidance_range
            raise ValueError(f"this solver is a guidance family: give the scale (guidance=w, w in [{lo:g}, {hi:g}])")
        return self.at_guidance(guidance, clamp).sample(denoiser, x_T, cond, guidance, **kwargs)

    # --- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        from s4s import __version__

        return {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": FAMILY_KIND, "library_version": __version__,
                "nfe": self.nfe, "scales": self.scales, "solvers": [s.to_dict() for s in self.solvers],
                "metadata": self.metadata}

    @classmethod
    def from_dict(cls, data: Any) -> "GuidanceFamily":
        if not isinstance(data, dict) or data.get("kind") != FAMILY_KIND:
            raise SolverFileError("not a guidance-family solver file")
        if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
            raise SolverFileError(f"unknown family format {data.get('format')!r} version {data.get('format_version')!r}")
        scales, solvers = data.get("scales"), data.get("solvers")
        if not isinstance(scales, list) or not isinstance(solvers, list):
            raise SolverFileError("a guidance family needs the lists 'scales' and 'solvers'")
        try:
            scales = [float(s) for s in scales]
        except (TypeError, ValueError):
            raise SolverFileError(f"'scales' must be numbers, got {scales!r}") from None
        loaded = []
        for i, d in enumerate(solvers):
            try:
                loaded.append(Solver.from_dict(d))
            except SolverFileError as err:
                raise SolverFileError(f"anchor {i}: {err}") from err
        metadata = data.get("metadata") or {}
        return cls(scales, loaded, dict(metadata) if isinstance(metadata, dict) else metadata)

    def save(self, path: str | Path) -> Path:
        """Write the family as one JSON solver file (see :func:`s4s.solver.write_solver_json`)."""
        return write_solver_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "GuidanceFamily":
        loaded = load_solver(path)
        if not isinstance(loaded, cls):
            raise SolverFileError(f"{path} holds a single solver, not a guidance family (s4s.Solver.load)")
        return loaded

    def __repr__(self) -> str:
        lo, hi = self.guidance_range
        return f"GuidanceFamily({self.metadata.get('source', 'custom')}, nfe={self.nfe}, guidance {lo:g}..{hi:g}, " \
               f"{len(self.scales)} anchors)"


def load_solver(path: str | Path) -> "Solver | GuidanceFamily":
    """A solver file of either kind: a :class:`~s4s.Solver` or a :class:`GuidanceFamily`."""
    data = read_solver_json(path)
    try:
        if isinstance(data, dict) and data.get("kind") == FAMILY_KIND:
            return GuidanceFamily.from_dict(data)
        return Solver.from_dict(data)
    except SolverFileError as err:
        raise SolverFileError(f"{path}: {err}") from err
