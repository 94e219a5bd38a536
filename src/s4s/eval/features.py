"""Feature networks for the Fréchet distance, chosen to fit the data.

* 28x28 single-channel data (MNIST-like): the bundled MNIST classifier's 128-d features, reported
  as "FD (MNIST classifier features)" - never as FID;
* RGB data: Inception-v3 pool features (standard FID) when the user gives local weights
  (``torch-fidelity`` format ``pt_inception-2015-12-05-*.pth``) and reference statistics of real data.

Anything else is a clear error rather than a silent number.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor

from s4s.bundled import assets_dir
from s4s.bundled.classifier import REFERENCE_STATS_FILE, MnistClassifier, load_mnist_classifier
from s4s.eval.frechet import FeatureStats

__all__ = ["FeatureNetwork", "mnist_feature_network", "inception_feature_network", "feature_network_for"]

INCEPTION_HELP = (
    "Inception FID needs local weights: download torch-fidelity's 'pt_inception-2015-12-05-6726825d.pth' on a "
    "machine with network access, pass it with --inception-weights PATH, install 'torch-fidelity', and pass "
    "--reference-stats real.npz (mean/cov/count of real-image Inception features, see FeatureStats)."
)


@dataclass
class FeatureNetwork:
    """``features(images in [-1, 1]) -> (B, d)`` with the reference statistics of real data."""

    name: str
    features: Callable[[Tensor], Tensor]
    reference: FeatureStats
    classifier: Optional[MnistClassifier] = None
    device: torch.device = torch.device("cpu")   # inputs are moved here in batches


def mnist_feature_network(device: torch.device | str = "cpu") -> FeatureNetwork:
    clf = load_mnist_classifier(device=device)
    ref = FeatureStats.load(assets_dir() / REFERENCE_STATS_FILE)
    return FeatureNetwork("MNIST classifier features", clf.features, ref, clf, torch.device(device))


def inception_feature_network(weights: Optional[Path], reference_stats: Optional[Path],
                              device: torch.device | str = "cpu") -> FeatureNetwork:
    """torchmetrics' Inception-v3 (FID's 2048-d pool features) loaded from a local file."""
    if weights is None or not Path(weights).is_file():
        raise FileNotFoundError(INCEPTION_HELP if weights is None else f"no Inception weights at {weights}. {INCEPTION_HELP}")
    if reference_stats is None:
        raise ValueError(f"Inception FID needs --reference-stats. {INCEPTION_HELP}")
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
        net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                 feature_extractor_weights_path=str(weights)).to(device)
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(f"{err}. {INCEPTION_HELP}") from err

    def features(images: Tensor) -> Tensor:
        x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return net(x).reshape(images.shape[0], -1)

    return FeatureNetwork("Inception-v3 pool3 (FID)", features, FeatureStats.load(reference_stats), device=torch.device(device))


def feature_network_for(sample_shape: tuple[int, ...], inception_weights: Optional[Path] = None,
                        reference_stats: Optional[Path] = None, device: torch.device | str = "cpu") -> FeatureNetwork:
    """The feature network that fits data of ``sample_shape`` (C, H, W)."""
    if tuple(sample_shape) == (1, 28, 28) and inception_weights is None:
        net = mnist_feature_network(device)
        if reference_stats is not None:
            net.reference = FeatureStats.load(reference_stats)
        return net
    if len(sample_shape) == 3 and sample_shape[0] == 3:
        return inception_feature_network(inception_weights, reference_stats, device)
    raise ValueError(f"no feature network fits samples of shape {tuple(sample_shape)}: the bundled classifier is for "
                     f"1x28x28 MNIST-like data, Inception for RGB images (with --inception-weights). Use --metrics teacher.")
