"""The bundled MNIST classifier: a small CNN whose 128-d penultimate activations are the feature
space of "FD (MNIST classifier features)". Trained by ``scripts/train_mnist_classifier.py``.
Inputs are images in [-1, 1], shape (B, 1, 28, 28).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from s4s.bundled import DATA_SETS, assets_dir, load_weights

__all__ = ["MnistClassifier", "load_mnist_classifier", "CLASSIFIER_FILE", "REFERENCE_STATS_FILE"]

CLASSIFIER_FILE = "mnist-classifier/model.safetensors"
REFERENCE_STATS_FILE = DATA_SETS["mnist"].reference_stats


class MnistClassifier(nn.Module):
    """conv32-conv32-pool-conv64-conv64-pool-fc128(features)-fc10."""

    num_features = 128

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1),
                                 nn.ReLU(), nn.MaxPool2d(2))

        self.body = nn.Sequential(block(1, 32), block(32, 64), nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(128, 10))

    def features(self, x: Tensor) -> Tensor:
        """128-d penultimate activations (the FD feature space)."""
        return self.body(x.clamp(-1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits."""
        return self.head(self.features(x))


def load_mnist_classifier(path: Optional[Path] = None, device: torch.device | str = "cpu") -> MnistClassifier:
    """Load the shipped weights (float16 on disk, float32 in memory), in eval mode."""
    path = Path(path) if path is not None else assets_dir() / CLASSIFIER_FILE
    return load_weights(MnistClassifier(), path, "run scripts/train_mnist_classifier.py", device)
