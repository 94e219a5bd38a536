r"""Denoiser adapters: every model type becomes a data predictor ``D(x, t) ~ E[x0 | x_t = x]``.

With ``x_t = alpha_t x0 + sigma_t eps``:

* networks that predict ``epsilon``, ``v_prediction``, ``sample`` (x0) or ``flow_prediction``
  (velocity on the :class:`~s4s.schedules.Flow` schedule): the one conversion table in
  :mod:`s4s.prediction`;
* EDM nets ``net(x, sigma, labels) -> D`` in VE coordinates: ``D = net(x / alpha, sigma / alpha, labels)``

Classifier-free guidance combines the conditional and unconditional outputs of
*one* batched call (one NFE): ``D = D_u + w (D_c - D_u)``; since every conversion
above is affine in the network output at fixed ``(x, t)``, guiding D equals
guiding eps, v or u.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from s4s.checks import check_model_output
from s4s.diffusers_config import read_scheduler_config, spec_for_schedule
from s4s.prediction import PREDICTION_TYPES, check_prediction_type, to_denoised
from s4s.schedules import EDM, Flow, Schedule

__all__ = ["Denoiser", "fingerprint_module", "fingerprint_of", "clip_of", "device_of", "condition_digest_of"]

ModelFn = Callable[[Tensor, Tensor, Any], Tensor]


def fingerprint_module(module: torch.nn.Module) -> str:
    """Short SHA-256 of a module's state dict (names, shapes, dtypes and values)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def module_device(module: Optional[torch.nn.Module]) -> Optional[torch.device]:
    """The device of a module's first parameter (None without a module or parameters)."""
    param = None if module is None else next(module.parameters(), None)
    return None if param is None else param.device


def fingerprint_of(denoiser: Callable[..., Tensor]) -> Optional[str]:
    """The weights' fingerprint of a :class:`Denoiser` (None for a plain callable, which has no identity)."""
    return denoiser.fingerprint if isinstance(denoiser, Denoiser) else None


def clip_of(denoiser: Callable[..., Tensor]) -> Optional[list[float]]:
    """The clamp a :class:`Denoiser` applies to D (same weights, other clamp: other samples); None for a plain
    callable."""
    clip = denoiser.clip_range if isinstance(denoiser, Denoiser) else None
    return None if clip is None else [float(c) for c in clip]


def condition_digest_of(denoiser: Callable[..., Tensor]) -> Optional[str]:
    """What a :class:`Denoiser`'s conditions index (e.g. a prompt-embedding table), or None."""
    return denoiser.condition_digest if isinstance(denoiser, Denoiser) else None


def device_of(denoiser: Callable[..., Tensor]) -> Optional[torch.device]:
    """Where a :class:`Denoiser`'s network runs (None for a plain callable or a module-less denoiser)."""
    return denoiser.device if isinstance(denoiser, Denoiser) else None


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    """Per-sample scalars (shape ``(B,)``) broadcast against ``x`` of any rank."""
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def _cat_cond(cond: Any, null: Any) -> Any:
    """``[cond; null]`` along the batch; ``null`` broadcasts to ``cond`` (tensors or dicts of tensors)."""
    if isinstance(cond, dict):
        return {k: _cat_cond(cond[k], null[k]) for k in cond}
    cond = torch.as_tensor(cond)
    null = torch.as_tensor(null, device=cond.device, dtype=cond.dtype)
    return torch.cat([cond, null.expand_as(cond)], 0)


class Denoiser:
    """A data-prediction model ``D(x, t, cond)`` in a schedule's time convention.

    ``fn(x, t_model, cond)`` receives a batch, the per-sample *model* times
    ``time_fn(t)`` (identity by default) and the condition, and returns D.
    ``null_cond`` is the unconditional input used by classifier-free guidance. ``clip_range``
    clamps the (guided) D to the data range, e.g. ``(-1, 1)`` for images: the exact posterior
    mean of data in that box lies in it, so this only removes network error (static thresholding).

    ``guidance_input=True`` is for guidance-distilled networks that take the scale as an input
    (FLUX.1-dev): ``fn`` then receives ``(cond, guidance)`` as its condition and there is no
    unconditional branch. ``condition_digest`` names what a condition *means* when it is an index
    into tables the network does not own (text-to-image prompt embeddings), so that teacher samples
    for other prompts are cached apart.
    """

    def __init__(self, fn: ModelFn, schedule: Schedule, null_cond: Any = None,
                 time_fn: Optional[Callable[[Tensor], Tensor]] = None, fingerprint: Optional[str] = None,
                 name: str = "denoiser", clip_range: Optional[tuple[float, float]] = None,
                 module: Optional[torch.nn.Module] = None, guidance_input: bool = False,
                 condition_digest: Optional[str] = None):
        self.fn, self.schedule, self.null_cond, self.clip_range = fn, schedule, null_cond, clip_range
        self.time_fn = time_fn or (lambda t: t)
        self.fingerprint, self.name, self.module = fingerprint, name, module
        self.guidance_input, self.condition_digest = bool(guidance_input), condition_digest

    @property
    def device(self) -> Optional[torch.device]:
        """The device of the wrapped network's weights (None when no module was given)."""
        return module_device(self.module)

    def __call__(self, x: Tensor, t: Any, cond: Any = None, guidance: Optional[float] = None) -> Tensor:
        """``D(x, t)``; ``t`` a scalar or per-sample times; with ``guidance`` one batched guided call."""
        t = t.to(x.device) if isinstance(t, Tensor) else torch.as_tensor(t, device=x.device)  # .to keeps gradients
        t = (t.expand(x.shape[0]) if t.ndim == 0 else t).to(torch.float64)
        if self.guidance_input:
            d = check_model_output(self.fn(x, self.time_fn(t), (cond, guidance)), x, self.name)
        elif guidance is None or cond is None:
            d = check_model_output(self.fn(x, self.time_fn(t), cond), x, self.name)
        else:
            if self.null_cond is None:
                raise ValueError(f"{self.name}: classifier-free guidance needs a null_cond (the unconditional input)")
            batch = x.shape[0]
            x2 = torch.cat([x, x])
            both = check_model_output(self.fn(x2, self.time_fn(torch.cat([t, t])), _cat_cond(cond, self.null_cond)),
                                      x2, self.name)
            d_cond, d_uncond = both[:batch], both[batch:]
            d = d_uncond + guidance * (d_cond - d_uncond)
        return d if self.clip_range is None else d.clamp(*self.clip_range)

    # --- constructors --------------------------------------------------------------------
    @classmethod
    def from_prediction(cls, fn: ModelFn, schedule: Schedule, prediction_type: str,
                        time_fn: Optional[Callable[[Tensor], Tensor]] = None, **kw: Any) -> "Denoiser":
        """``fn(x, t_model, cond)`` returns an output of ``prediction_type`` (see :mod:`s4s.prediction`)."""
        check_prediction_type(prediction_type)
        if prediction_type == "flow_prediction" and not isinstance(schedule, Flow):
            raise ValueError(f"flow-velocity models (flow_prediction) need the Flow schedule (alpha = 1 - t, sigma = t), "
                             f"got {schedule!r}")
        time_fn = time_fn or (lambda t: t)

        who = kw.get("name", "the network")

        def d(x: Tensor, t: Tensor, cond: Any) -> Tensor:
            out = check_model_output(fn(x, time_fn(t), cond), x, who)
            alpha = _bcast(schedule.alpha(t).to(x.dtype), x)
            sigma = _bcast(schedule.sigma(t).to(x.dtype), x)
            return to_denoised(prediction_type, out, x, alpha, sigma)

        return cls(d, schedule, **kw)

    @classmethod
    def from_x0(cls, fn: ModelFn, schedule: Schedule, time_fn: Optional[Callable[[Tensor], Tensor]] = None, **kw: Any) -> "Denoiser":
        """``fn(x, t, cond)`` predicts x0 directly (``sample``)."""
        return cls.from_prediction(fn, schedule, "sample", time_fn, **kw)

    @classmethod
    def from_eps(cls, fn: ModelFn, schedule: Schedule, time_fn: Optional[Callable[[Tensor], Tensor]] = None, **kw: Any) -> "Denoiser":
        """``fn(x, t, cond)`` predicts the noise (``epsilon``): ``D = (x - sigma eps) / alpha``."""
        return cls.from_prediction(fn, schedule, "epsilon", time_fn, **kw)

    @classmethod
    def from_v(cls, fn: ModelFn, schedule: Schedule, time_fn: Optional[Callable[[Tensor], Tensor]] = None, **kw: Any) -> "Denoiser":
        """``fn`` predicts ``v = alpha eps - sigma x0`` (``v_prediction``): ``D = (alpha x - sigma v) / (alpha^2 + sigma^2)``."""
        return cls.from_prediction(fn, schedule, "v_prediction", time_fn, **kw)

    @classmethod
    def from_flow(cls, fn: ModelFn, schedule: Schedule, time_fn: Optional[Callable[[Tensor], Tensor]] = None, **kw: Any) -> "Denoiser":
        """``fn`` predicts the rectified-flow velocity ``u = eps - x0`` (``flow_prediction``) on a :class:`Flow` schedule: ``D = x - t u``."""
        return cls.from_prediction(fn, schedule, "flow_prediction", time_fn, **kw)

    @classmethod
    def from_edm(cls, net: Callable[..., Tensor], schedule: Optional[Schedule] = None, **kw: Any) -> "Denoiser":
        """EDM / k-diffusion style ``net(x, sigma, class_labels) -> D`` in VE coordinates.

        On a VP schedule the net sees ``x / alpha`` at noise level ``sigma / alpha`` (EDM's VP
        preconditioning); on :class:`EDM` that is ``x`` at ``sigma = t``.
        """
        schedule = schedule or EDM()
        if isinstance(net, torch.nn.Module):
            if "fingerprint" not in kw:  # hashing every weight is slow for large models: only when not given
                kw["fingerprint"] = fingerprint_module(net)
            kw.setdefault("name", type(net).__name__)
            kw.setdefault("module", net)

        def d(x: Tensor, t: Tensor, cond: Any) -> Tensor:
            alpha, sigma = schedule.alpha(t), schedule.sigma(t)
            ve = (sigma / alpha).to(x.dtype)
            return net(x / _bcast(alpha.to(x.dtype), x), ve, cond)

        return cls(d, schedule, **kw)

    @classmethod
    def from_diffusers(cls, model: Any, scheduler: Any = None, *, prediction_type: Optional[str] = None,
                       null_cond: Any = None, **kw: Any) -> "Denoiser":
        """A diffusers network as a denoiser, with everything read from the pipeline or its scheduler.

        * ``from_diffusers(pipe)``: a pipeline with a ``scheduler`` and a ``unet`` (or ``transformer``);
        * ``from_diffusers(unet, scheduler)``: the network and its diffusers scheduler (or config dict);
        * ``from_diffusers(unet, schedule, prediction_type=...)``: an s4s :class:`Schedule`; the
          prediction type must then be given, it is never guessed.

        From a scheduler config (:func:`s4s.diffusers_config.read_scheduler_config`): the schedule,
        ``prediction_type``, the clamp of D (``clip_sample``, ``clip_sample_range``) and the timestep
        convention (training index for discrete VP, ``num_train_timesteps * t`` for flow); a config
        with ``thresholding: true`` is refused. ``cond`` reaches the network as ``class_labels``
        (tensor) or as keyword arguments (dict, e.g. ``{"encoder_hidden_states": emb}``).
        ``clip_range=`` and ``time_fn=`` override what the config says.
        """
        if scheduler is None:
            net = getattr(model, "unet", None) or getattr(model, "transformer", None)
            scheduler = getattr(model, "scheduler", None)
            if net is None or scheduler is None:
                raise ValueError("from_diffusers(model) needs a pipeline with a scheduler and a unet or transformer; "
                                 "for a bare network pass its scheduler: from_diffusers(unet, pipe.scheduler)")
            model = net
        if isinstance(scheduler, Schedule):
            if prediction_type is None:
                raise ValueError("from_diffusers(unet, schedule) needs prediction_type= (one of "
                                 f"{', '.join(PREDICTION_TYPES)}); or pass the pipeline's scheduler, which states it")
            spec = spec_for_schedule(scheduler, prediction_type)
        else:
            spec = read_scheduler_config(scheduler, prediction_type)
        schedule, kind, scale, clip = spec.schedule, spec.prediction_type, spec.timestep_scale, spec.clip_range
        param = next(model.parameters(), None)

        def fn(x: Tensor, t: Tensor, cond: Any) -> Tensor:
            dtype = param.dtype if param is not None else x.dtype
            kwargs = dict(cond) if isinstance(cond, dict) else ({} if cond is None else {"class_labels": cond})
            out = model(x.to(dtype), timestep=t.to(dtype), **kwargs)
            out = out.sample if hasattr(out, "sample") else (out[0] if isinstance(out, tuple) else out)
            return out.to(x.dtype)

        time_fn = kw.pop("time_fn", None) or ((lambda t: t * scale) if scale != 1.0 else None)
        kw.setdefault("clip_range", clip)
        if "fingerprint" not in kw:  # hashing every weight is slow for large models: only when not given
            kw["fingerprint"] = fingerprint_module(model)
        kw.setdefault("name", type(model).__name__)
        kw.setdefault("module", model)
        return cls.from_prediction(fn, schedule, kind, time_fn=time_fn, null_cond=null_cond, **kw)
