r"""A learned guidance family, checked at the scales it never learned at (docs/design.md §5.9).

A family learns at its anchors and at the midpoints between them (``training_scales``) and validates
there; between those scales it is an interpolation nobody has looked at. On the exact mixture some
learning seeds give a family that is fine at every training scale and far off between two of them,
on a few samples (docs/guidance.md), so after learning the family is measured at the *check scales*

    c_j = (s_j + s_{j+1}) / 2,   j = 1 .. 2K - 2,

halfway between consecutive training scales ``s_j``, on every noise and label the family learned from
(training and validation: a failure on a few samples needs many to be seen): the teacher runs there
once, and the RMSE to it (``s4s.teacher_distance``: clamped to the data range of a pixel model) of the
family's solver at ``c_j`` is set beside that of each hand-designed solver the run screened as a base
(every base on every grid). Where the family is farther from the teacher than the best of them,
learning says so in one warning line; the solver file records every check
(``metadata["between_scales"]``).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

from s4s import distributed
from s4s.family import GuidanceFamily
from s4s.learning.objectives import l2
from s4s.learning.trainer import batched_validation
from s4s.solver import Solver
from s4s.teacher import TeacherData, teacher_sampler
from s4s.teacher_distance import DataRange

__all__ = ["check_scales", "check_between_scales"]

log = logging.getLogger(__name__)


def check_scales(training: Sequence[float]) -> list[float]:
    """The scales halfway between consecutive training scales."""
    return [(a + b) / 2 for a, b in zip(training[:-1], training[1:])]


def check_between_scales(denoiser: Callable[..., Tensor], family: GuidanceFamily, candidates: dict[str, Solver],
                         training: Sequence[float], x_T: Tensor, cond: Optional[Tensor], teacher: str,
                         data_range: DataRange, batch_size: int = 256) -> dict[str, dict[str, Any]]:
    """The family against the hand-designed ``candidates`` (name -> solver) at every :func:`check_scales`
    scale of ``training``, on ``x_T`` (and ``cond``) with the ``teacher``'s samples there as the reference:
    ``{"w": {"family": rmse, "best": rmse, "best_solver": name, "worse": family > best}}``. Logs one
    warning naming the scales where the family is worse than the best candidate."""
    sampler = teacher_sampler(teacher, family.schedule)
    starts = list(range(0, x_T.shape[0], batch_size))
    out: dict[str, dict[str, Any]] = {}
    log.info("checking the family halfway between its training scales (w = %s): the teacher %s on %d noises at "
             "each, beside %d hand-designed solvers", ", ".join(f"{w:g}" for w in check_scales(training)), teacher,
             x_T.shape[0], len(candidates))
    for w in check_scales(training):
        def teacher_part(k: int, w: float = w) -> Tensor:
            sl = slice(starts[k], starts[k] + batch_size)
            with torch.no_grad():
                return sampler(denoiser, x_T[sl], None if cond is None else cond[sl], w)[0]

        reference = torch.cat(distributed.map_batches(teacher_part, len(starts))).to(x_T.device)

        def rmse(solver: Solver, w: float = w, data: TeacherData = TeacherData(x_T, cond, reference)) -> float:
            return math.sqrt(batched_validation(lambda x, c: solver.sample(denoiser, x, c, w, check_finite=False), l2,
                                                data, batch_size, data_range).mse)

        fam = rmse(family.at_guidance(w))
        scores = {name: rmse(solver) for name, solver in candidates.items()}
        best = min(scores, key=scores.get)
        out[f"{w:g}"] = {"family": fam, "best": scores[best], "best_solver": best, "worse": fam > scores[best]}
        log.info("family checked at w = %g (between training scales): RMSE to the teacher %.5f, best hand-designed "
                 "%.5f (%s)", w, fam, scores[best], best)
    worse = [(w, r) for w, r in out.items() if r["worse"]]
    if worse:
        log.warning("the learned family is farther from the teacher than a hand-designed solver at w = %s, between "
                    "its training scales (RMSE %s): there use solvers learned at one scale, or more --anchors",
                    ", ".join(w for w, _ in worse),
                    ", ".join(f"{r['family']:.4f} vs {r['best']:.4f} for {r['best_solver']}" for _, r in worse))
    return out
