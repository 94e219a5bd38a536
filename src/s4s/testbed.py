r"""A Gaussian-mixture "model" with an exact denoiser, for tests and benchmarks.

Data ``x0 ~ sum_k pi_k N(mu_k, Sigma_k)`` in ``d`` dimensions (any sample shape; it is flattened).
In VE coordinates ``y = x_t / alpha_t = x0 + rho eps`` with ``rho = sigma_t / alpha_t``::

    p(y | k)      = N(y; mu_k, Sigma_k + rho^2 I)
    E[x0 | y, k]  = mu_k + Sigma_k (Sigma_k + rho^2 I)^{-1} (y - mu_k)
    D(x_t, t)     = sum_k w_k(y) E[x0 | y, k],   w_k ∝ pi_k N(y; mu_k, Sigma_k + rho^2 I)

With a class label the sum is replaced by the labelled component (labels = components).
The probability-flow ODE in ``u = log rho`` is ``dy/du = y - D`` for every schedule, so the
exact solution between two times is computed once with SciPy's DOP853 in float64.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from s4s.denoisers import Denoiser
from s4s.prediction import check_prediction_type, from_denoised
from s4s.schedules import Schedule

__all__ = ["GaussianMixture"]


class GaussianMixture:
    """Mixture of Gaussians with full covariances ``Sigma_k = U_k diag(s_k) U_k^T`` (float64)."""

    def __init__(self, means: Any, covs: Any, weights: Any = None, shape: Optional[tuple[int, ...]] = None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        k, d = self.means.shape
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if covs.shape == (k, d):
            covs = torch.diag_embed(covs)
        if covs.shape != (k, d, d):
            raise ValueError(f"covs must have shape ({k}, {d}) or ({k}, {d}, {d}), got {tuple(covs.shape)}")
        self.covs = covs
        self.eigvals, self.eigvecs = torch.linalg.eigh(covs)
        if bool((self.eigvals < 0).any()):
            raise ValueError("covariances must be positive semi-definite")
        w = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.log_weights = torch.log(w / w.sum())
        self.shape = shape or (d,)
        if math.prod(self.shape) != d:
            raise ValueError(f"sample shape {self.shape} does not hold {d} values")

    @classmethod
    def random(cls, dim: int = 16, components: int = 6, seed: int = 0, scale: float = 1.0,
               spread: float = 0.3, diagonal: bool = False, shape: Optional[tuple[int, ...]] = None) -> "GaussianMixture":
        """Random means in ``[-scale, scale]`` and random covariances of typical std ``spread``."""
        g = torch.Generator().manual_seed(seed)
        means = (torch.rand(components, dim, generator=g, dtype=torch.float64) * 2 - 1) * scale
        if diagonal:
            covs = (spread * (0.3 + torch.rand(components, dim, generator=g, dtype=torch.float64))) ** 2
        else:
            q, _ = torch.linalg.qr(torch.randn(components, dim, dim, generator=g, dtype=torch.float64))
            s = (spread * (0.1 + torch.rand(components, dim, generator=g, dtype=torch.float64))) ** 2
            covs = q @ torch.diag_embed(s) @ q.transpose(-1, -2)
        return cls(means, covs, torch.rand(components, generator=g, dtype=torch.float64) + 0.5, shape)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def sample(self, n: int, generator: Optional[torch.Generator] = None, labels: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """``(x0, labels)``: ``n`` data samples (float64) and their components."""
        if labels is None:
            labels = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[labels] + torch.einsum("nij,nj->ni", self.eigvecs[labels], self.eigvals[labels].sqrt() * z)
        return x.reshape((n,) + self.shape), labels

    # --- the exact posterior mean --------------------------------------------------------
    def posterior_mean(self, y: Tensor, rho: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        """``E[x0 | x0 + rho eps = y]`` for flat ``y`` (B, d), per-sample ``rho`` (B,), optional labels."""
        rho2 = (rho**2).reshape(-1, 1, 1)                               # (B,1,1)
        diff = y[:, None, :] - self.means[None]                         # (B,K,d)
        proj = torch.einsum("kji,bkj->bki", self.eigvecs, diff)         # U^T (y - mu)
        denom = self.eigvals[None] + rho2                               # (B,K,d)
        post = self.means[None] + torch.einsum("kij,bkj->bki", self.eigvecs, self.eigvals[None] / denom * proj)
        if labels is not None:
            return post[torch.arange(y.shape[0]), labels.long()]
        log_p = self.log_weights[None] - 0.5 * ((proj**2 / denom).sum(-1) + torch.log(denom).sum(-1))
        w = torch.softmax(log_p, dim=1)
        return torch.einsum("bk,bki->bi", w, post)

    def _x0(self, x: Tensor, t: Tensor, cond: Any, schedule: Schedule) -> Tensor:
        alpha, sigma = schedule.alpha(t.to(torch.float64)), schedule.sigma(t.to(torch.float64))
        flat = x.reshape(x.shape[0], -1).to(torch.float64) / alpha[:, None]
        return self.posterior_mean(flat, sigma / alpha, cond).reshape(x.shape).to(x.dtype)

    def raw_model(self, schedule: Schedule, prediction: str = "sample"):
        """A network-like ``fn(x, t, cond)`` whose output is of diffusers' ``prediction_type`` ``prediction``
        (``epsilon``, ``v_prediction``, ``sample`` or ``flow_prediction``; :mod:`s4s.prediction`)."""
        check_prediction_type(prediction)

        def fn(x: Tensor, t: Tensor, cond: Any) -> Tensor:
            d = self._x0(x, t, cond, schedule)
            shape = (-1,) + (1,) * (x.ndim - 1)
            alpha = schedule.alpha(t.to(torch.float64)).reshape(shape).to(x.dtype)
            sigma = schedule.sigma(t.to(torch.float64)).reshape(shape).to(x.dtype)
            return from_denoised(prediction, d, x, alpha, sigma)

        return fn

    def denoiser(self, schedule: Schedule, null_cond: Any = -1) -> Denoiser:
        """The exact data predictor as a :class:`Denoiser`; label ``-1`` means unconditional."""

        def fn(x: Tensor, t: Tensor, cond: Any) -> Tensor:
            if cond is None:
                return self._x0(x, t, None, schedule)
            cond = torch.as_tensor(cond)
            out = self._x0(x, t, cond.clamp(min=0), schedule)
            uncond = cond < 0
            if bool(uncond.any()):
                out[uncond] = self._x0(x[uncond], t[uncond], None, schedule)
            return out

        return Denoiser(fn, schedule, null_cond=null_cond, name="GaussianMixture", fingerprint=self.fingerprint())

    def fingerprint(self) -> str:
        import hashlib

        h = hashlib.sha256(self.means.numpy().tobytes() + self.covs.numpy().tobytes() + self.log_weights.numpy().tobytes())
        return "gmm-" + h.hexdigest()[:12]

    # --- ground truth ----------------------------------------------------------------------
    def ode_solution(self, x: Tensor, schedule: Schedule, t_from: float, t_to: float,
                     cond: Optional[Tensor] = None, rtol: float = 1e-10, atol: float = 1e-10) -> Tensor:
        """Solve the probability-flow ODE from ``x`` at ``t_from`` to ``t_to`` (DOP853, float64)."""
        from scipy.integrate import solve_ivp

        t0, t1 = torch.tensor(float(t_from), dtype=torch.float64), torch.tensor(float(t_to), dtype=torch.float64)
        u0, u1 = float(-schedule.lam(t0)), float(-schedule.lam(t1))
        n = x.shape[0]
        y0 = (x.reshape(n, -1).to(torch.float64) / schedule.alpha(t0)).cpu().numpy()

        def rhs(u: float, state: np.ndarray) -> np.ndarray:
            y = torch.from_numpy(state.reshape(n, -1))
            d = self.posterior_mean(y, torch.full((n,), math.exp(u), dtype=torch.float64), cond)
            return (y - d).numpy().ravel()

        sol = solve_ivp(rhs, (u0, u1), y0.ravel(), method="DOP853", rtol=rtol, atol=atol)
        if not sol.success:  # pragma: no cover - scipy failure
            raise RuntimeError(f"reference ODE solve failed: {sol.message}")
        y1 = torch.from_numpy(sol.y[:, -1].reshape(n, -1))
        return (y1 * schedule.alpha(t1)).reshape(x.shape).to(x.dtype)

