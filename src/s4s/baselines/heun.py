r"""EDM's deterministic 2nd-order Heun sampler (Karras et al. 2022, Alg. 1), a reference baseline.

Two model calls per step, so it is not of the one-call table form. In VE coordinates
``y = x/alpha``, ``rho = sigma/alpha``, ``d(y, t) = (y - D)/rho``::

    y'      = y_i + (rho_{i+1} - rho_i) d(y_i, t_i)
    y_{i+1} = y_i + (rho_{i+1} - rho_i) (d(y_i, t_i) + d(y', t_{i+1})) / 2

The last step is Euler (as EDM's step to sigma = 0), so N steps cost ``2N - 1`` calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from torch import Tensor

from s4s.schedules import Schedule

__all__ = ["HeunSampler"]


@dataclass
class HeunSampler:
    """Heun on ``grid`` (N steps, ``2N - 1`` calls); same ``sample`` interface as :class:`~s4s.Solver`."""

    grid: Tensor
    schedule: Schedule
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def nfe(self) -> int:
        return 2 * (self.grid.numel() - 1) - 1

    def sample(self, denoiser: Callable[..., Tensor], x_T: Tensor, cond: Any = None, guidance: Optional[float] = None,
               checkpoint: bool = False, callback: Optional[Callable[..., None]] = None) -> Tensor:
        del checkpoint, callback  # accepted for interface compatibility
        alpha, sigma = self.schedule.alpha(self.grid), self.schedule.sigma(self.grid)
        rho = sigma / alpha
        n = self.grid.numel() - 1
        y = x_T / alpha[0].to(x_T.dtype)
        for i in range(n):
            d = (y - denoiser(y * alpha[i].to(y.dtype), self.grid[i], cond, guidance)) / rho[i].to(y.dtype)
            step = (rho[i + 1] - rho[i]).to(y.dtype)
            y_next = y + step * d
            if i < n - 1:
                d2 = (y_next - denoiser(y_next * alpha[i + 1].to(y.dtype), self.grid[i + 1], cond, guidance)) / rho[i + 1].to(y.dtype)
                y_next = y + step * 0.5 * (d + d2)
            y = y_next
        return y * alpha[-1].to(y.dtype)

    def save(self, path: Any) -> None:
        """Refused: Heun makes two calls a step, which the one-call table form cannot hold."""
        raise TypeError("Heun is a reference sampler (two model calls a step), not a table solver: it has no solver "
                        "file; build it again with s4s.baseline('heun', schedule, nfe)")

    def __repr__(self) -> str:
        return f"HeunSampler(nfe={self.nfe})"
