r"""Fréchet distance between Gaussian fits of feature sets, computed by torchmetrics.

``FD = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})``. We keep features as
sufficient statistics (mean, covariance, count) so a reference set is a small ``npz``, and let
``torchmetrics.image.fid.FrechetInceptionDistance`` do the accumulation and the matrix square
root (its states are the running sums ``sum f`` and ``sum f f^T``, which we fill from the stats).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from s4s.checks import NonFiniteError, check_finite

__all__ = ["FeatureStats", "frechet_distance"]


@dataclass
class FeatureStats:
    """Mean (d,), unbiased covariance (d, d) and count of a feature set, float64."""

    mean: Tensor
    cov: Tensor
    count: int

    @classmethod
    def from_features(cls, features: Tensor) -> "FeatureStats":
        f = features.detach().to(torch.float64).reshape(features.shape[0], -1)
        if f.shape[0] < 2:
            raise ValueError("need at least 2 feature vectors for a covariance")
        check_finite(f, "the features of the samples")  # before any matrix square root
        return cls(f.mean(0), torch.cov(f.T), f.shape[0])

    @property
    def dim(self) -> int:
        return self.mean.numel()

    def save(self, path: str | Path) -> None:
        np.savez(path, mean=self.mean.numpy(), cov=self.cov.numpy(), count=np.array(self.count))

    @classmethod
    def load(cls, path: str | Path) -> "FeatureStats":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"reference feature statistics not found: {path}")
        with np.load(path) as z:
            return cls(torch.from_numpy(z["mean"]).double(), torch.from_numpy(z["cov"]).double(), int(z["count"]))

    def _sums(self) -> tuple[Tensor, Tensor, Tensor]:
        """torchmetrics' running states: ``sum f``, ``sum f f^T``, ``n``."""
        n = self.count
        return self.mean * n, self.cov * (n - 1) + n * torch.outer(self.mean, self.mean), torch.tensor(n)


class _Identity(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, x: Tensor) -> Tensor:
        return x


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """FD between two feature statistics (torchmetrics' implementation)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if a.dim != b.dim:
        raise ValueError(f"feature dimensions differ: {a.dim} vs {b.dim}")
    for name, stats in (("first", a), ("second", b)):
        if not (bool(torch.isfinite(stats.mean).all()) and bool(torch.isfinite(stats.cov).all())):
            raise NonFiniteError(f"the {name} feature statistics contain NaN or inf")
    # sync_on_compute=False: under torchrun every rank holds the full statistics; summing them over ranks
    # (torchmetrics' default) would count each sample once per process
    metric = FrechetInceptionDistance(feature=_Identity(a.dim), sync_on_compute=False)
    metric.real_features_sum, metric.real_features_cov_sum, metric.real_features_num_samples = a._sums()
    metric.fake_features_sum, metric.fake_features_cov_sum, metric.fake_features_num_samples = b._sums()
    metric.orig_dtype = torch.float64
    with warnings.catch_warnings():  # states are filled directly, not through update()
        warnings.filterwarnings("ignore", message=".*compute.*called before.*update")
        return float(metric.compute())
