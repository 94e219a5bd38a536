"""Shared fixtures: the exact Gaussian-mixture model on the bundled model's schedule."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

import s4s

# The tests use small tensors: one thread avoids oversubscription on shared 2-core machines.
torch.set_num_threads(1)
# Teacher samples are cached by default (the API and the CLI alike): never into the user's ~/.cache from tests.
os.environ["S4S_CACHE"] = tempfile.mkdtemp(prefix="s4s-test-cache-")


@pytest.fixture(scope="session")
def vp() -> s4s.VPDiscrete:
    """DDPM linear betas over 1000 steps (the bundled model's schedule)."""
    return s4s.VPDiscrete(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, num_train_timesteps=1000)


@pytest.fixture(scope="session")
def gmm() -> s4s.GaussianMixture:
    return s4s.GaussianMixture.random(dim=8, components=4, seed=0)


@pytest.fixture(scope="session")
def noise8() -> torch.Tensor:
    return torch.randn(16, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
