"""Which learning loss (and which feature network) a loaded model gets from the CLI and benchmarks.

``auto`` picks a perceptual distance where the project ships a network that fits the samples, and
L2 elsewhere:

* 1x28x28 pixel-space models (the bundled MNIST models, or any model with MNIST-like samples):
  ``perceptual`` with :class:`s4s.bundled.perceptual.MnistPerceptualNet`, a network *independent* of the
  FD classifier, so the metric still judges the solver with features it never trained on. On the
  stage-2 bundled eps model S4S-Alt at NFE 5 went from FD 51.85 (L2) to 33.04 (docs/bench_mnist_stage2).
* everything else (RGB, latent pipelines): ``l2`` (``lpips`` needs its weights locally; pass it
  explicitly).

``feature`` on an MNIST-like model uses the FD classifier itself and is allowed, with a warning.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

from torch import Tensor

from s4s.models import LoadedModel

log = logging.getLogger(__name__)

__all__ = ["resolve_loss"]

FeatureFn = Callable[[Tensor], Tensor]


def resolve_loss(model: LoadedModel, loss: Optional[str]) -> tuple[str, Optional[FeatureFn]]:
    """``(loss name, feature function or None)`` for ``model``; ``None`` or ``"auto"`` chooses as above."""
    pixel_mnist = model.is_mnist_like and not model.is_latent
    if loss in (None, "auto"):
        loss = "perceptual" if pixel_mnist else "l2"
    if loss not in ("feature", "perceptual"):
        return loss, None
    if not pixel_mnist:
        raise ValueError(f"loss {loss!r} uses a bundled MNIST network: only for 1x28x28 pixel-space models "
                         "(elsewhere: --loss lpips or l2, or s4s.learn(..., loss='feature', feature_fn=...) in Python)")
    if loss == "feature":
        from s4s.bundled.classifier import load_mnist_classifier

        log.warning("loss 'feature' uses the FD classifier itself: the learned solver fits the metric that judges "
                    "it; loss 'perceptual' uses an independent network")
        return loss, load_mnist_classifier(device=model.device).features
    from s4s.bundled.perceptual import load_mnist_perceptual

    return loss, load_mnist_perceptual(device=model.device).features
