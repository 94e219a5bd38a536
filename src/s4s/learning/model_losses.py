"""Which learning loss (and which feature network) a loaded model gets.

``auto`` uses a feature distance only where the model *declares* its data set and the project ships a
perceptual network for it (:data:`s4s.bundled.DATA_SETS`; the bundled MNIST models declare
``mnist``): a network made for other data can reward moving away from the teacher. Everything else
(undeclared data, latent pipelines) learns with ``l2``. The choice and its reason are logged.

For the bundled models the perceptual network is *independent* of the FD classifier, so the metric
still judges the solver with features it never trained on. ``feature`` uses the FD classifier itself
and is allowed, with a warning.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

from torch import Tensor

from s4s.bundled import data_set
from s4s.learning.config import AUTO_LOSS
from s4s.models import LoadedModel

log = logging.getLogger(__name__)

__all__ = ["resolve_loss"]

FeatureFn = Callable[[Tensor], Tensor]


def resolve_loss(model: LoadedModel, loss: Optional[str]) -> tuple[str, Optional[FeatureFn]]:
    """``(loss name, feature function or None)`` for ``model``; ``None`` or ``"auto"`` chooses as above."""
    data = None if model.is_latent else data_set(model.data, model.image_shape, model.name)
    if loss in (None, AUTO_LOSS):
        if data is not None and data.load_perceptual is not None:
            loss = "perceptual"
            why = f"{model.name} declares data {data.name!r}, for which s4s ships a perceptual network"
        else:
            loss = "l2"
            why = ("latent model: the distance is measured on latents" if model.is_latent else
                   f"{model.name} declares no data set s4s ships a perceptual network for")
        log.info("loss auto -> %s (%s)", loss, why)
    if loss not in ("feature", "perceptual"):
        return loss, None
    if data is None:
        raise ValueError(f"loss {loss!r} needs a feature network made for the model's data; {model.name} declares none "
                         "(--data NAME for a data set s4s ships networks for; elsewhere --loss l2 / pseudo_huber / "
                         "lpips, or s4s.learn(..., loss='feature', feature_fn=...) in Python)")
    if loss == "feature":
        log.warning("loss 'feature' uses the FD classifier itself: the learned solver fits the metric that judges "
                    "it; loss 'perceptual' uses an independent network")
        return loss, data.load_classifier(model.device).features
    if data.load_perceptual is None:
        raise ValueError(f"s4s ships no perceptual network for data {data.name!r}; use --loss feature or l2")
    return loss, data.load_perceptual(model.device).features
