r"""What S4S learns: residual coefficient tables on top of a base solver, and (S4S-Alt) the grid.

Tables are ``base(grid) + residual * mask``: the base solver's coefficients are recomputed from
the current grid at every step (so coefficients stay meaningful when S4S-Alt moves the grid),
and a zero residual *is* the base solver. By default the residual is on the data-prediction
weights ``b`` (and ``bc`` for the predictor-corrector form); ``learn_a`` adds the state weights.

The grid is monotone with fixed end points by construction, in half log-SNR::

    lam_i = lam_T + (lam_min - lam_T) * sum_{k<i} softmax(logits)_k

Model-input times are decoupled: ``s_i = t(clamp(lam_i + shift_i))`` with ``shift = 0`` at start.

Correctors: a base that has its own corrector (UniPC's UniC) keeps it in every method, so step 0
*is* the base solver as users run it; ``corrector=True`` (the ``-pc`` methods) makes the corrector
rows learnable too, and otherwise they stay the base's (recomputed from the grid, not learned).
Bases without a corrector start the PC form from the identity correction (``ac, bc`` = the
predictor row), so step 0 is still exactly the base solver.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Optional

import torch
from torch import Tensor, nn

from s4s.baselines import BASELINES, GridPoints, build_tables
from s4s.schedules import Schedule
from s4s.family import GuidanceFamily, interval, mix
from s4s.solver import Solver, Tables

__all__ = ["LearnableSolver", "GuidanceFamilyModule"]


def _identity_corrector(tables: Tables) -> Tables:
    n = tables.nfe
    bc = torch.cat([tables.b[: n - 1], torch.zeros(n - 1, 1, dtype=tables.b.dtype)], dim=1)[:, :n]
    return Tables(tables.a, tables.b, tables.a[: n - 1].clone(), bc)


class LearnableSolver(nn.Module):
    """Learnable (grid, input times, tables) of a fixed NFE; ``forward()`` returns them."""

    def __init__(self, schedule: Schedule, base: str, grid: Tensor, corrector: bool = False, learn_a: bool = False,
                 base_options: Optional[dict[str, Any]] = None):
        super().__init__()
        if base not in BASELINES:
            raise ValueError(f"unknown base solver {base!r}; choose from {sorted(BASELINES)}")
        self.schedule, self.base, self.corrector, self.learn_a = schedule, base, corrector, learn_a
        self.base_options = dict(base_options or {})
        params = inspect.signature(BASELINES[base]).parameters
        if "corrector" in params:  # keep the base's own corrector (UniC) unless the caller says otherwise
            self.base_options.setdefault("corrector", params["corrector"].default)
        grid = torch.as_tensor(grid, dtype=torch.float64)
        n = grid.numel() - 1
        lam = schedule.lam(grid)
        self.register_buffer("t_ends", grid[[0, -1]].clone())
        self.register_buffer("lam_ends", lam[[0, -1]].clone())
        steps = lam[1:] - lam[:-1]
        self.grid_logits = nn.Parameter(torch.log(steps / steps.sum()))
        self.input_shift = nn.Parameter(torch.zeros(n, dtype=torch.float64))
        self.register_buffer("mask_pred", torch.ones(n, n, dtype=torch.float64).tril())
        self.register_buffer("mask_corr_a", torch.ones(n - 1, n, dtype=torch.float64).tril())
        self.register_buffer("mask_corr_b", torch.ones(n - 1, n, dtype=torch.float64).tril(1))
        self.db = nn.Parameter(torch.zeros(n, n, dtype=torch.float64))
        self.da = nn.Parameter(torch.zeros(n, n, dtype=torch.float64)) if learn_a else None
        self.dbc = nn.Parameter(torch.zeros(n - 1, n, dtype=torch.float64)) if corrector and n > 1 else None
        self.dac = nn.Parameter(torch.zeros(n - 1, n, dtype=torch.float64)) if corrector and learn_a and n > 1 else None

    @property
    def nfe(self) -> int:
        return self.grid_logits.numel()

    def coefficient_parameters(self) -> list[nn.Parameter]:
        return [p for p in (self.db, self.da, self.dbc, self.dac) if p is not None]

    def grid_parameters(self) -> list[nn.Parameter]:
        return [self.grid_logits, self.input_shift]

    def lambdas(self) -> Tensor:
        """Half log-SNR of the grid: monotone, ends fixed."""
        lam_T, lam_min = self.lam_ends[0], self.lam_ends[1]
        inner = lam_T + (lam_min - lam_T) * torch.cumsum(torch.softmax(self.grid_logits, 0), 0)[:-1]
        return torch.cat([lam_T[None], inner, lam_min[None]])

    def forward(self) -> tuple[Tensor, Tensor, Tables]:
        lam = self.lambdas()
        pts = GridPoints.from_lambda(self.schedule, lam)
        t = torch.cat([self.t_ends[:1], pts.t[1:-1], self.t_ends[1:]])  # the ends exactly as given
        pts = dataclasses.replace(pts, t=t)
        lam_in = torch.minimum(torch.maximum(lam[:-1] + self.input_shift, self.lam_ends[0]), self.lam_ends[1])
        s = self.schedule.t_from_lambda(lam_in)
        base = build_tables(self.base, pts, **self.base_options)
        if self.corrector and base.ac is None and self.nfe > 1:
            base = _identity_corrector(base)
        a = base.a + (self.da * self.mask_pred if self.da is not None else 0)
        b = base.b + self.db * self.mask_pred
        ac, bc = base.ac, base.bc  # the base's own corrector, if any, is kept as it is
        if self.dbc is not None:
            ac = ac + (self.dac * self.mask_corr_a if self.dac is not None else 0)
            bc = bc + self.dbc * self.mask_corr_b
        return t, s, Tables(a, b, ac, bc)

    def at(self, guidance: Optional[float]) -> tuple[Tensor, Tensor, Tables]:
        """``(grid, input times, tables)``; one solver serves every scale (``guidance`` is not used)."""
        return self()

    def solver_at(self, guidance: Optional[float]) -> Solver:
        return self.to_solver()

    def to_solver(self, metadata: Optional[dict[str, Any]] = None) -> Solver:
        with torch.no_grad():
            t, s, tables = self()
        detach = lambda v: None if v is None else v.detach().clone()  # noqa: E731
        return Solver(t.detach().clone(), Tables(*(detach(v) for v in (tables.a, tables.b, tables.ac, tables.bc))),
                      s.detach().clone(), self.schedule, dict(metadata or {}))


class GuidanceFamilyModule(nn.Module):
    """Learnable solvers at anchor guidance scales; at a scale ``w`` the interpolation of the two
    neighbouring anchors (:func:`s4s.family.mix`), differentiable in both."""

    def __init__(self, scales: list[float], members: list[LearnableSolver]):
        super().__init__()
        if len(scales) != len(members) or len(scales) < 2:
            raise ValueError("one learnable solver per anchor scale, at least two")
        self.scales = [float(w) for w in scales]
        self.members = nn.ModuleList(members)

    @property
    def t_ends(self) -> Tensor:
        return self.members[0].t_ends

    def coefficient_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.members for p in m.coefficient_parameters()]

    def grid_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.members for p in m.grid_parameters()]

    @torch.no_grad()
    def share_(self) -> None:
        """Set every anchor's parameters to their mean over the anchors: one solver for every scale (the
        first part of a family's learning, docs/design.md §5.9)."""
        for params in zip(*(m.parameters() for m in self.members)):
            mean = torch.stack([p.detach() for p in params]).mean(0)
            for p in params:
                p.copy_(mean)

    def at(self, guidance: float) -> tuple[Tensor, Tensor, Tables]:
        k, u = interval(self.scales, guidance)
        return mix(self.members[k](), self.members[k + 1](), u)

    def solver_at(self, guidance: float) -> Solver:
        return self.to_solver().at_guidance(guidance)

    def to_solver(self, metadata: Optional[dict[str, Any]] = None) -> GuidanceFamily:
        return GuidanceFamily(self.scales, [m.to_solver() for m in self.members], dict(metadata or {}))
