"""Checks on what models return and on what sampling produces: one clear error instead of garbage.

* :func:`check_model_output` - every model call: the output is a tensor of the input's shape (a
  tuple, a missing batch dimension that would broadcast, or another size is refused).
* :func:`first_line` - an exception's message as the one line a user is shown.
* :class:`NonFiniteError` - NaN/inf found in samples; the message names where they first appeared
  (which model call, or which solver step). Sampling checks the final result once per batch and,
  only when it is not finite, looks back through the history for the first bad call.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["NonFiniteError", "check_model_output", "check_finite", "first_line"]


class NonFiniteError(FloatingPointError):
    """Samples or model outputs contain NaN or inf; the message says where they first appeared."""


def first_line(err: BaseException, limit: int = 600) -> str:
    """The first line of an exception's message (its type name when empty), cut at ``limit`` characters."""
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text if len(text) <= limit else text[:limit] + " ..."


def check_model_output(out: Any, x: Tensor, who: str = "the model") -> Tensor:
    """``out`` if it is a tensor shaped like the input ``x``; else one ``TypeError`` / ``ValueError``."""
    if not isinstance(out, Tensor):
        hint = " (return the tensor itself, e.g. out.sample or out[0])" if isinstance(out, (tuple, list)) else ""
        raise TypeError(f"{who} returned a {type(out).__name__}, expected a tensor{hint}")
    if out.shape != x.shape:
        raise ValueError(f"{who} returned shape {tuple(out.shape)} for an input of shape {tuple(x.shape)}; "
                         "it must return one output per input element (same shape)")
    return out


def check_finite(x: Tensor, what: str) -> Tensor:
    """``x`` if every value is finite, else :class:`NonFiniteError` naming ``what`` and the bad samples."""
    ok = torch.isfinite(x.detach()).reshape(x.shape[0], -1).all(1) if x.ndim else torch.isfinite(x).reshape(1)
    if not bool(ok.all()):
        bad = (~ok).nonzero().flatten().tolist()
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        raise NonFiniteError(f"{what} contains NaN or inf (in {len(bad)} of {ok.numel()} samples: {shown})")
    return x
