"""Feature networks for the Fréchet distance, chosen by what the model's data is (docs/design.md §6).

* a data set the project ships a classifier for (:data:`s4s.bundled.DATA_SETS`, e.g. ``mnist``),
  declared by the model: that classifier's features, reported as "FD (<data> classifier features)",
  never as FID;
* RGB images with local Inception-v3 weights (``torch-fidelity`` format
  ``pt_inception-2015-12-05-*.pth``) and reference statistics of real data: FID.

Anything else is a clear error rather than a silent number; a sample's shape alone never picks one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor

from s4s.bundled import DATA_SETS, DataSet, assets_dir, data_set
from s4s.eval.frechet import FeatureStats

__all__ = ["FeatureNetwork", "classifier_feature_network", "inception_feature_network", "feature_network_for"]

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
    classifier: Optional[torch.nn.Module] = None   # logits for class accuracy, where the data has classes
    device: torch.device = torch.device("cpu")   # inputs are moved here in batches


def classifier_feature_network(data: DataSet, device: torch.device | str = "cpu") -> FeatureNetwork:
    """The shipped classifier of ``data``: its features, the real data's statistics, its logits."""
    clf = data.load_classifier(device)
    ref = FeatureStats.load(assets_dir() / data.reference_stats)
    return FeatureNetwork(f"{data.name.upper()} classifier features", clf.features, ref, clf, torch.device(device))


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


def feature_network_for(image_shape: tuple[int, ...], data: Optional[str] = None,
                        inception_weights: Optional[Path] = None, reference_stats: Optional[Path] = None,
                        device: torch.device | str = "cpu") -> FeatureNetwork:
    """The feature network for a model whose decoded images have ``image_shape`` (C, H, W) and whose
    declared data set is ``data`` (see module doc)."""
    rgb = len(image_shape) == 3 and image_shape[0] == 3
    if inception_weights is not None and not rgb:
        raise ValueError(f"Inception FID is for RGB images; this model makes {tuple(image_shape)}")
    if inception_weights is not None or (rgb and data is None):  # without weights: one error saying how to get them
        return inception_feature_network(inception_weights, reference_stats, device)
    found = data_set(data, image_shape)
    if found is not None:
        net = classifier_feature_network(found, device)
        if reference_stats is not None:
            net.reference = FeatureStats.load(reference_stats)
        return net
    raise ValueError(f"no feature network fits this model's data as far as s4s knows (images {tuple(image_shape)}, no "
                     f"declared data set): declare the data (--data, one of {sorted(DATA_SETS)}) if it is one s4s ships networks "
                     "for, or use --metrics teacher")
