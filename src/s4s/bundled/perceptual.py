r"""An LPIPS-style perceptual distance for 28x28 MNIST-like images, independent of the FD metric.

Learning a solver with the FD classifier's own features as the loss (``loss="feature"`` with the
bundled classifier) fits the metric that later judges it. This module ships a *second* network,
trained by ``scripts/train_mnist_classifier.py --network perceptual`` (different architecture,
activation, pooling and seed from :class:`s4s.bundled.classifier.MnistClassifier`), and uses it the way
LPIPS uses VGG (Zhang et al. 2018, with unit layer weights): for layers ``l`` with activations
``h_l(x)`` of shape ``(C_l, H_l, W_l)``,

.. math::
    d(x, y) = \sum_l \frac{1}{H_l W_l} \sum_{h,w}
              \left\| \hat h_l(x)_{hw} - \hat h_l(y)_{hw} \right\|_2^2,
    \qquad \hat h = h / (\|h\|_{\text{channels}} + \epsilon).

:meth:`MnistPerceptualNet.features` returns the concatenation of ``\hat h_l / \sqrt{H_l W_l}``, so
``d(x, y) = ||features(x) - features(y)||^2`` (loss ``perceptual`` in :mod:`s4s.learning.objectives`).
Inputs are images in [-1, 1], shape (B, 1, 28, 28).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from s4s.bundled import assets_dir, load_weights

__all__ = ["MnistPerceptualNet", "load_mnist_perceptual", "PERCEPTUAL_FILE"]

PERCEPTUAL_FILE = "mnist-perceptual/model.safetensors"


class MnistPerceptualNet(nn.Module):
    """conv5x5(24)-GELU, conv3x3/2(48)-GELU, conv3x3/2(96)-GELU, fc10 on the flattened 96x7x7 map.

    Trained as a digit classifier; its three stages (28x28, 14x14, 7x7) are the perceptual layers.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.ModuleList([
            nn.Sequential(nn.Conv2d(1, 24, 5, padding=2), nn.GELU()),
            nn.Sequential(nn.Conv2d(24, 48, 3, stride=2, padding=1), nn.GELU()),
            nn.Sequential(nn.Conv2d(48, 96, 3, stride=2, padding=1), nn.GELU()),
        ])
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(96 * 7 * 7, 10))

    def activations(self, x: Tensor) -> list[Tensor]:
        """Per-stage activations ``h_l(x)`` (inputs clamped to [-1, 1])."""
        h, out = x.clamp(-1, 1), []
        for stage in self.stages:
            h = stage(h)
            out.append(h)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Class logits."""
        return self.head(self.activations(x)[-1])

    def features(self, x: Tensor, eps: float = 1e-10) -> Tensor:
        """Channel-normalised activations of every stage, each scaled by ``1/sqrt(H W)``, flattened and
        concatenated: the squared Euclidean distance of two feature vectors is the LPIPS-style ``d``."""
        parts = []
        for h in self.activations(x):
            h = h / (h.norm(dim=1, keepdim=True) + eps)
            parts.append(h.flatten(1) / (h.shape[2] * h.shape[3]) ** 0.5)
        return torch.cat(parts, dim=1)


def load_mnist_perceptual(path: Optional[Path] = None, device: torch.device | str = "cpu") -> MnistPerceptualNet:
    """Load the shipped weights (float16 on disk, float32 in memory), in eval mode, frozen."""
    path = Path(path) if path is not None else assets_dir() / PERCEPTUAL_FILE
    return load_weights(MnistPerceptualNet(), path, "run scripts/train_mnist_classifier.py --network perceptual", device)
