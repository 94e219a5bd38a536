"""What the package ships beside the code: the bundled MNIST networks, where their files live, and which
data set each network fits.

Both learning (the perceptual loss) and evaluation (the FD classifier and its reference statistics)
use these networks, and the model loader finds the bundled diffusion models here, so they sit below
``s4s.learning`` and ``s4s.eval``, which never import each other's modules for them.

Feature networks are chosen by what they were made for, never by a sample's shape alone:
:data:`DATA_SETS` maps a data-set name to the image shape its networks take. A model declares its data
set (a pipeline folder's ``model_index.json`` key ``"_s4s_data"``, or ``--data`` / ``load_model(...,
data=...)``); a model that declares none gets no bundled feature network (docs/design.md §5.3, §6).
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

__all__ = ["assets_dir", "load_weights", "DataSet", "DATA_SETS", "data_set"]


def assets_dir() -> Path:
    """Folder of the files shipped inside the package (bundled models, networks, statistics)."""
    return Path(str(importlib.resources.files("s4s") / "assets"))


def load_weights(model: nn.Module, path: Path, missing_hint: str, device: torch.device | str = "cpu") -> nn.Module:
    """``model`` with the safetensors weights at ``path`` (float16 on disk, float32 in memory), in eval
    mode and frozen; a missing file is one ``FileNotFoundError`` ending in ``missing_hint``."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"weights not found at {path}; {missing_hint}")
    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return model.to(device).eval().requires_grad_(False)


Loader = Callable[[torch.device | str], nn.Module]


@dataclass(frozen=True)
class DataSet:
    """A data set the project ships networks for: its name, the image shape they take (C, H, W), a
    classifier (``features`` for the FD, logits for accuracy) with the real data's feature statistics
    (a file under :func:`assets_dir`), and a perceptual network (``features`` for the learning loss)."""

    name: str
    image_shape: tuple[int, ...]
    load_classifier: Loader
    reference_stats: str
    load_perceptual: Optional[Loader] = None

    def check_fits(self, image_shape: tuple[int, ...], who: str = "the model") -> None:
        """Refuse images of another shape: the networks were made for this shape only."""
        if tuple(image_shape) != self.image_shape:
            raise ValueError(f"{who} declares data {self.name!r}, whose networks take {self.image_shape} images, but "
                             f"makes {tuple(image_shape)}")


def _mnist_classifier(device: torch.device | str = "cpu") -> nn.Module:
    from s4s.bundled.classifier import load_mnist_classifier

    return load_mnist_classifier(device=device)


def _mnist_perceptual(device: torch.device | str = "cpu") -> nn.Module:
    from s4s.bundled.perceptual import load_mnist_perceptual

    return load_mnist_perceptual(device=device)


DATA_SETS: dict[str, DataSet] = {
    "mnist": DataSet("mnist", (1, 28, 28), _mnist_classifier, "mnist-classifier/mnist_test_features.npz",
                     _mnist_perceptual),
}


def data_set(name: Optional[str], image_shape: Optional[tuple[int, ...]] = None,
             who: str = "the model") -> Optional[DataSet]:
    """The registered data set ``name`` (None for None), checked against ``image_shape`` when given."""
    if name is None:
        return None
    if name not in DATA_SETS:
        raise ValueError(f"unknown data set {name!r}; s4s ships networks for {sorted(DATA_SETS)}")
    found = DATA_SETS[name]
    if image_shape is not None:
        found.check_fits(image_shape, who)
    return found
