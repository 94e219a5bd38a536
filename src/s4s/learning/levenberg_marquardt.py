r"""Levenberg-Marquardt steps on the S4S objective when its distance is a sum of squares.

On a mini-batch of ``B`` teacher pairs the objective is

    L(theta) = (1/B) sum_i ||r_i(theta)||^2,   r_i = r(student_theta(x_T^i), x0^i)

(:func:`s4s.learning.objectives.make_residual`; ``||r||^2`` is the distance). The learned solver has few
parameters (``P``: tens at NFE 5), so the Gauss-Newton model of ``L`` can be solved exactly at every step:

    (J^T J + mu diag(J^T J)) delta = -J^T r,      J = d r / d theta   (all samples' rows stacked)

with Marquardt's scaling. The step is taken when it lowers the loss of a *second, independent* mini-batch
(then ``mu <- mu / 3``); otherwise ``mu <- 4 mu`` and the system is solved again (the Jacobian is kept), up
to ``MAX_TRIES`` times; when none helps, the parameters stay and the next step starts from one increase
(``4 mu``), not from the last one tried. Judged on its own mini-batch an exact Gauss-Newton step nearly
always succeeds, and can fit that batch at the expense of every other; judged on another one, the
damping grows until the step generalises.

With ``memory = beta > 0`` the system is that of the average of the mini-batches' quadratic models, each
kept at the point it was made: ``A <- beta A + (1 - beta) J^T J``, ``c <- beta c + (1 - beta) (J^T r -
J^T J theta)``, and the step solves ``(A + mu diag A) delta = -(A theta + c)`` (about ``1 / (1 - beta)``
mini-batches' rows for the cost of one; off by default).

``J`` is made by forward differences, one extra student pass per learned parameter,
``J[:, k] = (r(theta + h e_k) - r(theta)) / h``: only forward passes of the model as it is (many networks'
kernels, fused attention among them, have no forward-mode derivative), in ``torch.no_grad``. A step costs
``P + 2`` or more student passes of the mini-batch against Adam's one forward and backward pass, and
replaces many Adam steps (docs/generalization.md measures both).

Which entries are learned: the parameters of the method's groups (:func:`learned_entries`) whose tables
depend on them; the masked, structurally zero entries of the residual tables are left out. Under
``torchrun`` each rank makes the rows of its share of the mini-batch and ``J^T J``, ``J^T r`` and the losses
are summed over the ranks, so every rank solves the same system and takes the same step.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from s4s import distributed

log = logging.getLogger(__name__)

__all__ = ["learned_entries", "LevenbergMarquardt", "MAX_TRIES"]

MAX_TRIES = 8          # damping increases tried on one Jacobian before the step is given up
JACOBIAN_BYTES = 2**30  # the most memory the Jacobian rows of one pass may take; larger passes are split
DAMPING_MIN, DAMPING_MAX = 1e-8, 1e8

Entry = tuple[nn.Parameter, int]   # a parameter and a flat index into it


def learned_entries(model: nn.Module, parameters: Sequence[nn.Parameter],
                    guidances: Sequence[Optional[float]]) -> list[Entry]:
    """The entries of ``parameters`` that the solver's grid, input times or tables depend on at any of
    ``guidances``: the gradient of a random linear function of all of them (made with a fixed seed) is
    exactly zero on a masked entry and, but on a set of measure zero, nonzero on every other. It is taken
    on a copy of ``model`` with every parameter at zero (the base tables, an even log-SNR grid, no input-time
    shift), so the set is the structure's, the same wherever the run is (an input time clamped at an end
    has no gradient there, but stays learned)."""
    index = {id(p): k for k, p in enumerate(parameters)}
    probe = copy.deepcopy(model)
    pairs = [(p, q) for p, q in zip(model.parameters(), probe.parameters()) if id(p) in index]  # (own, copy)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for q in probe.parameters():
            q.zero_()
            q.grad = None
    with torch.enable_grad():
        total = 0.0
        for w in guidances:
            t, s, tables = probe.at(w)
            for v in (t, s, tables.a, tables.b, tables.ac, tables.bc):
                if v is not None:
                    total = total + (v * torch.randn(v.shape, generator=gen, dtype=v.dtype)).sum()
        total.backward()
    pairs.sort(key=lambda pq: index[id(pq[0])])  # in the order of ``parameters``
    return [(p, int(i)) for p, q in pairs if q.grad is not None for i in q.grad.reshape(-1).nonzero().flatten()]


class LevenbergMarquardt:
    """Levenberg-Marquardt on ``entries`` (see the module doc); ``damping`` is ``mu``, kept between steps.

    ``residuals(part)`` returns this process's residual rows of mini-batch slice ``part`` (a tensor
    ``(n, R)``, ``||row||^2`` the distance) for the parameters as they are; ``parts`` are the slices
    (micro-batches) of this process's share; ``batch_size`` the global mini-batch size."""

    def __init__(self, entries: list[Entry], damping: float = 1e-3, fd_step: float = 1e-3, memory: float = 0.0,
                 model: Optional[tuple[Tensor, Tensor]] = None, jacobian_bytes: int = JACOBIAN_BYTES):
        if not entries:
            raise ValueError("nothing to learn: no parameter entry changes the solver")
        self.entries, self.damping, self.fd_step, self.memory = entries, damping, fd_step, memory
        self.jacobian_bytes = jacobian_bytes
        self._split_logged = False
        self.model = model   # the averaged Gauss-Newton model (A, c) of the earlier mini-batches, or None

    @torch.no_grad()
    def _values(self) -> list[float]:
        return [float(p.view(-1)[i]) for p, i in self.entries]

    @torch.no_grad()
    def _set(self, values: Sequence[float]) -> None:
        for (p, i), v in zip(self.entries, values):
            p.view(-1)[i] = v

    @torch.no_grad()
    def _loss(self, residuals: Callable[[slice], Tensor], parts: list[slice], batch_size: int) -> float:
        total = sum(float(residuals(part).double().pow(2).sum()) for part in parts)
        return distributed.all_reduce_sum([total])[0] / batch_size   # one process: the total itself

    @torch.no_grad()
    def normal_equations(self, residuals: Callable[[slice], Tensor], parts: list[slice], batch_size: int
                         ) -> tuple[Tensor, Tensor, float]:
        """``(J^T J, J^T r, L)`` at the current parameters, summed over micro-batches and ranks, each
        divided by ``batch_size`` (so ``J^T r`` is half the gradient of ``L``). The Jacobian rows of one
        pass (``samples x R x P`` doubles) are held at once; a micro-batch whose rows would take more than
        ``jacobian_bytes`` is taken in smaller passes (each sample's residuals are its own, so the sums are
        the same)."""
        n = len(self.entries)
        jtj = torch.zeros(n, n, dtype=torch.float64)
        jtr = torch.zeros(n, dtype=torch.float64)
        loss = 0.0
        h = self.fd_step
        for part in parts:
            r_part = residuals(part).double()
            m = r_part.shape[0]
            per_sample = 8 * n * max(r_part[0].numel(), 1) if m else 1
            fit = max(1, min(m, self.jacobian_bytes // per_sample))
            if fit < m and not self._split_logged:
                log.info("Levenberg-Marquardt: the Jacobian of one sample takes %.3g MB (%d residuals x %d entries); "
                         "its passes take %d sample(s) at a time", per_sample / 2**20, r_part[0].numel(), n, fit)
                self._split_logged = True
            start = part.start or 0
            for lo in range(0, m, fit):
                sub = slice(start + lo, start + min(m, lo + fit))
                # a smaller pass's own base residuals: a pass of another size may round differently
                r0 = (r_part if fit == m else residuals(sub).double()).reshape(-1)
                cols = torch.empty(r0.numel(), n, dtype=torch.float64, device=r0.device)  # where the model runs
                for k, (p, i) in enumerate(self.entries):
                    value = float(p.view(-1)[i])
                    p.view(-1)[i] = value + h
                    try:
                        cols[:, k] = (residuals(sub).double().reshape(-1) - r0) / h
                    finally:  # exactly the value it had, even when the pass raised (out of memory)
                        p.view(-1)[i] = value
                jtj += (cols.T @ cols).cpu()
                jtr += (cols.T @ r0).cpu()
                del cols
            loss += float(r_part.pow(2).sum())
        distributed.all_reduce_([jtj, jtr])   # no-ops in one process
        loss = distributed.all_reduce_sum([loss])[0]
        return jtj / batch_size, jtr / batch_size, loss / batch_size

    def step(self, residuals: Callable[[slice], Tensor], parts: list[slice], batch_size: int,
             check: Callable[[slice], Tensor], check_parts: list[slice]) -> tuple[float, float]:
        """One step: the system of the mini-batch ``residuals``, the step taken when it lowers the loss of a
        second, independent mini-batch ``check`` (so that a step which only fits its own mini-batch, as an
        exact Gauss-Newton step can, is damped until it generalises). Returns the check batch's loss
        before and after (equal when no damping lowered it)."""
        jtj, jtr, loss = self.normal_equations(residuals, parts, batch_size)
        if not math.isfinite(loss):
            return loss, loss
        before = self._loss(check, check_parts, batch_size)
        start, start_damping = self._values(), self.damping
        if self.memory > 0:  # the mini-batch's quadratic model, averaged with the earlier ones' (module doc)
            theta = torch.tensor(start, dtype=torch.float64)
            c = jtr - jtj @ theta
            if self.model is not None:
                a_old, c_old = self.model
                jtj, c = self.memory * a_old + (1 - self.memory) * jtj, self.memory * c_old + (1 - self.memory) * c
            self.model = (jtj, c)
            jtr = jtj @ theta + c
        diag = torch.diag(jtj)
        scale = diag.clamp_min(1e-12 * max(float(diag.max()), 1e-30))
        for _ in range(MAX_TRIES):
            try:
                delta = -torch.linalg.solve(jtj + self.damping * torch.diag(scale), jtr)
            except RuntimeError:  # singular despite the damping
                delta = None
            if delta is not None and bool(torch.isfinite(delta).all()):
                self._set([v + d for v, d in zip(start, delta.tolist())])
                try:
                    after = self._loss(check, check_parts, batch_size)
                except BaseException:
                    self._set(start)
                    raise
                if math.isfinite(after) and after < before:
                    self.damping = max(self.damping / 3, DAMPING_MIN)
                    return before, after
                self._set(start)
            self.damping = min(self.damping * 4, DAMPING_MAX)
        log.info("Levenberg-Marquardt: no damping up to %.3g lowered the check batch's loss; parameters kept",
                 self.damping)
        # the two mini-batches disagree (noise, not curvature): the next step starts from one increase only
        self.damping = min(start_damping * 4, DAMPING_MAX)
        return before, before
