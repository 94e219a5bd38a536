r"""The solver: a time grid, model-input times and coefficient tables, run by one stepping loop.

Grid ``t_0 = T > ... > t_N``; model calls ``D_j = D(x_j, s_j)`` at input times ``s_j``
(default ``s_j = t_j``). Predictor, for ``i = 0..N-1``::

    x_{i+1} = sum_{j<=i} a[i, j] x_j + sum_{j<=i} b[i, j] D_j

Optional corrector (UniPC-style), for ``i = 0..N-2``: the call at the predicted point
``D_{i+1} = D(x^pred_{i+1}, s_{i+1})`` is made anyway (it is the next step's history
entry), and reused to correct the state at no extra cost::

    x_{i+1} <- sum_{j<=i} ac[i, j] x_j + sum_{j<=i+1} bc[i, j] D_j

The last step has no corrector (no call is made at ``x_N``). Exactly N model calls.
Shapes: ``a, b: (N, N)`` lower triangular; ``ac: (N-1, N)`` with ``ac[i, j] = 0`` for
``j > i``; ``bc: (N-1, N)`` with ``bc[i, j] = 0`` for ``j > i + 1``.

Tables and times are float64 tensors; the loop casts them to the sample's dtype and
is differentiable in all of them (the learner backpropagates through it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint as _checkpoint

from s4s.checks import NonFiniteError, check_finite, check_model_output
from s4s.grids import validate_grid
from s4s.io import atomic_write_text
from s4s.schedules import Schedule, schedule_from_config

__all__ = ["Tables", "Solver", "SolverFileError", "names_solver_file", "read_solver_json", "write_solver_json", "NonFiniteError", "Recurrence", "integrate", "weighted_sum", "FORMAT",
           "FORMAT_VERSION", "MAX_COEFFICIENT"]

FORMAT = "s4s.solver"
FORMAT_VERSION = 2          # 2 added guidance families (s4s.family); single solvers are unchanged from 1
READABLE_VERSIONS = (1, 2)
MAX_COEFFICIENT = 1e6  # no sane solver weighs a state or model output by more; larger is corruption or divergence

ModelCall = Callable[[Tensor, Tensor], Tensor]


def read_solver_json(path: str | Path) -> Any:
    """The parsed JSON of a solver file; a missing, unreadable or non-JSON file is one :class:`SolverFileError`."""
    path = Path(path)
    if path.is_dir():
        raise SolverFileError(f"{path} is a folder, not a solver file")
    try:
        return json.loads(path.read_text(), parse_constant=lambda c: math.nan)
    except FileNotFoundError:
        raise SolverFileError(f"{path}: no such solver file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SolverFileError(f"{path}: cannot read the solver file: {err}") from None
    except json.JSONDecodeError as err:
        raise SolverFileError(f"{path}: not valid JSON (truncated or corrupted?): {err}") from err


def write_solver_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write a solver file's ``data`` as JSON, atomically; NaN / inf or non-JSON metadata is one
    :class:`SolverFileError`, a folder at ``path`` one ``ValueError``."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the solver file's name")
    try:
        text = json.dumps(data, indent=1, allow_nan=False) + "\n"
    except (TypeError, ValueError) as err:
        raise SolverFileError(f"the solver cannot be written as JSON (its metadata?): {err}") from None
    return atomic_write_text(path, text)


def names_solver_file(spec: str | Path) -> bool:
    """Whether a solver argument (``--solver``, a bench cell's solver) names a solver file rather than a
    baseline: it ends in ``.json`` or is an existing file."""
    return str(spec).endswith(".json") or Path(spec).is_file()


class SolverFileError(ValueError):
    """A solver file or dictionary that cannot be loaded; the message names the problem."""


@dataclass
class Tables:
    """Predictor tables ``a, b`` (N, N) and optional corrector tables ``ac, bc`` (N-1, N)."""

    a: Tensor
    b: Tensor
    ac: Optional[Tensor] = None
    bc: Optional[Tensor] = None

    @property
    def nfe(self) -> int:
        return self.a.shape[0]

    @property
    def has_corrector(self) -> bool:
        return self.ac is not None

    def why_cannot_start_at(self, k: int) -> str:
        """Why the solver cannot begin at step ``k`` with no history (empty string when it can).

        From ``x_k`` on, every predictor row ``i >= k`` and corrector row ``i >= k`` (which corrects
        ``x_{i+1}``) must give zero weight to states and outputs before ``k``.
        """
        if not 0 <= k < self.nfe:
            return f"start step {k} is outside 0..{self.nfe - 1}"
        if k == 0:
            return ""
        rows = [("a", self.a[k:, :k]), ("b", self.b[k:, :k])]
        if self.ac is not None:
            rows += [("ac", self.ac[k:, :k]), ("bc", self.bc[k:, :k])]
        used = [name for name, block in rows if bool((block != 0).any())]
        if used:
            return (f"this {self.nfe}-call solver cannot start at step {k}: its steps from there on use the history "
                    f"of earlier steps (non-zero {', '.join(used)} entries before column {k}), which a loop "
                    f"started part-way (img2img / inpainting with strength < 1) does not have")
        return ""


def weighted_sum(coef: Tensor, items: list[Tensor]) -> Tensor:
    """``sum_j coef[j] * items[j]`` for tensors of any rank (only over the given items)."""
    out = coef[0] * items[0]
    for c, item in zip(coef[1:], items[1:]):
        out = out + c * item
    return out


class Recurrence:
    r"""The one stepping recurrence: the history between model calls, advanced one call at a time.

    After call ``i`` (output ``D_i`` made at the point ``x``), :meth:`push` records the state
    ``x_i`` — the called point itself for ``i = 0`` or without a corrector, else the corrected
    ``x_i = sum_{j<i} ac[i-1, j] x_j + sum_{j<=i} bc[i-1, j] D_j`` — and returns the predictor
    ``x_{i+1} = sum_{j<=i} a[i, j] x_j + sum_{j<=i} b[i, j] D_j``: the point of call ``i + 1``, or
    ``x_N`` after the last call. :func:`integrate` and the diffusers scheduler both step with it.
    """

    def __init__(self, tables: "Tables", dtype: torch.dtype, device: torch.device | str | None = None):
        self.n = tables.nfe
        self.a, self.b = tables.a.to(device, dtype), tables.b.to(device, dtype)
        self.ac = tables.ac.to(device, dtype) if tables.ac is not None else None
        self.bc = tables.bc.to(device, dtype) if tables.bc is not None else None
        self.xs: list[Tensor] = []
        self.ds: list[Tensor] = []

    @property
    def index(self) -> int:
        """The index of the next model call."""
        return len(self.ds)

    def push(self, d: Tensor, x: Tensor) -> Tensor:
        """Record ``D_i`` made at ``x``; return the next point (see the class doc)."""
        i = self.index
        if i >= self.n:
            raise RuntimeError(f"a {self.n}-call solver got model output number {i + 1}")
        self.ds.append(d)
        if i > 0 and self.ac is not None:
            x = weighted_sum(self.ac[i - 1, :i], self.xs) + weighted_sum(self.bc[i - 1, :i + 1], self.ds)
        self.xs.append(x)
        return weighted_sum(self.a[i, :i + 1], self.xs) + weighted_sum(self.b[i, :i + 1], self.ds)


def integrate(model: ModelCall, x: Tensor, input_times: Tensor, tables: Tables, checkpoint: bool = False,
              callback: Optional[Callable[[int, Tensor, Tensor], None]] = None, check_finite: bool = False) -> Tensor:
    """Run the table-driven solver from ``x = x_0`` and return ``x_N`` (exactly N model calls).

    ``model(x, s)`` returns D; ``checkpoint=True`` recomputes each call in the backward pass
    (memory about one model call whatever N is). ``callback(i, x, D_i)`` after each call, with
    ``x`` the point the call was made at. ``check_finite``: a non-finite ``x_N`` raises
    :class:`~s4s.checks.NonFiniteError` naming the first model call (or solver step) that went bad.
    """
    state = Recurrence(tables, x.dtype, x.device)
    x_in = x
    for i in range(tables.nfe):
        if checkpoint and torch.is_grad_enabled():
            d = _checkpoint(model, x, input_times[i], use_reentrant=False)
        else:
            d = model(x, input_times[i])
        if callback is not None:
            callback(i, x, d)
        x = state.push(d, x)
    if check_finite and not bool(torch.isfinite(x.detach()).all()):
        _locate_non_finite(x_in, state, input_times)
    return x


def _locate_non_finite(x_in: Tensor, state: Recurrence, input_times: Tensor) -> None:
    """Raise :class:`NonFiniteError` for the first non-finite input, model output or state of a run."""
    n = state.n
    check_finite(x_in, "the initial noise x_T")
    for i, (xi, d) in enumerate(zip(state.xs, state.ds)):
        check_finite(xi, f"the state x_{i} (solver step {i - 1} of {n}; its coefficients or the model's earlier outputs)")
        check_finite(d, f"model call {i + 1} of {n} (input time {float(input_times[i]):.6g}) output")
    raise NonFiniteError(f"the final solver step {n} of {n} produced NaN or inf from finite inputs "
                         "(are the solver's coefficients sane?)")


def _matrix_ok(m: Tensor, shape: tuple[int, int], max_col: Callable[[int], int], name: str) -> None:
    if tuple(m.shape) != shape:
        raise SolverFileError(f"table {name!r} has shape {tuple(m.shape)}, expected {shape}")
    if not bool(torch.isfinite(m).all()):
        raise SolverFileError(f"table {name!r} contains NaN or inf")
    if bool((m.abs() > MAX_COEFFICIENT).any()):
        i, j = (m.abs() > MAX_COEFFICIENT).nonzero()[0].tolist()
        raise SolverFileError(f"table {name!r} entry [{i}, {j}] = {float(m[i, j]):.3g} exceeds the sane magnitude "
                              f"{MAX_COEFFICIENT:g}")
    for i in range(shape[0]):
        if bool((m[i, max_col(i) + 1:] != 0).any()):
            raise SolverFileError(f"table {name!r} row {i} uses entries beyond column {max_col(i)} (they must be 0)")


@dataclass
class Solver:
    """A few-step sampler as data: grid, model-input times, tables and metadata."""

    grid: Tensor
    tables: Tables
    input_times: Optional[Tensor] = None
    schedule: Optional[Schedule] = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.grid = torch.as_tensor(self.grid, dtype=torch.float64)
        if self.input_times is None:
            self.input_times = self.grid[:-1]
        self.input_times = torch.as_tensor(self.input_times, dtype=torch.float64)
        self.validate()

    @property
    def nfe(self) -> int:
        """Model calls per sample (one guided call counts as one)."""
        return self.tables.nfe

    def validate(self) -> None:
        """Shapes, monotone grid, finite values, triangular tables; raises :class:`SolverFileError`."""
        n = self.tables.nfe
        if self.grid.ndim != 1 or self.grid.numel() != n + 1:
            raise SolverFileError(f"grid has {self.grid.numel()} points; a {n}-call solver needs {n + 1}")
        s = self.input_times.detach()
        if s.ndim != 1 or s.numel() != n or not bool(torch.isfinite(s).all()):
            raise SolverFileError(f"input_times must be {n} finite values, got shape {tuple(s.shape)}")
        try:
            validate_grid(self.grid, self.schedule, "grid")
            if self.schedule is not None:
                self.schedule.check_times(s, "input_times")
        except ValueError as err:
            raise SolverFileError(str(err)) from err
        if not isinstance(self.metadata, dict):
            raise SolverFileError(f"metadata must be a dict, got {type(self.metadata).__name__}")
        t = self.tables
        _matrix_ok(t.a.detach(), (n, n), lambda i: i, "a")
        _matrix_ok(t.b.detach(), (n, n), lambda i: i, "b")
        if (t.ac is None) != (t.bc is None):
            raise SolverFileError("corrector needs both tables 'ac' and 'bc'")
        if t.ac is not None:
            _matrix_ok(t.ac.detach(), (n - 1, n), lambda i: i, "ac")
            _matrix_ok(t.bc.detach(), (n - 1, n), lambda i: i + 1, "bc")

    def sample(self, denoiser: Callable[..., Tensor], x_T: Tensor, cond: Any = None, guidance: Optional[float] = None,
               checkpoint: bool = False, callback: Optional[Callable[[int, Tensor, Tensor], None]] = None,
               check_finite: bool = True) -> Tensor:
        """Integrate from ``x_T`` (the state at ``t_0``, e.g. ``schedule.prior_noise``) to ``t_N``.

        ``denoiser(x, t, cond, guidance)`` is usually a :class:`~s4s.denoisers.Denoiser`; every call's
        output must have the shape of ``x``. ``guidance`` defaults to the scale recorded in the
        metadata. NaN/inf in the result raises :class:`~s4s.checks.NonFiniteError` naming the first
        call that produced them (``check_finite=False``: return them).
        """
        guidance = self.metadata.get("guidance") if guidance is None else guidance

        def model(x: Tensor, s: Tensor) -> Tensor:
            return check_model_output(denoiser(x, s, cond, guidance), x, "the denoiser")

        return integrate(model, x_T, self.input_times.to(x_T.device), self.tables, checkpoint, callback, check_finite)

    def from_step(self, k: int) -> "Solver":
        """The same solver started at step ``k`` from the state ``x_k`` (grid ``t_k .. t_N``, ``N - k`` calls).

        Only where no step from ``k`` on uses the history before ``k`` (:meth:`Tables.why_cannot_start_at`):
        single-step tables (DDIM) can start anywhere, multistep tables only at 0; otherwise one
        ``ValueError`` says why. This is what img2img / inpainting with ``strength < 1`` runs.
        """
        reason = self.tables.why_cannot_start_at(k)
        if reason:
            raise ValueError(reason)
        if k == 0:
            return self
        t = self.tables
        tables = Tables(t.a[k:, k:], t.b[k:, k:], None if t.ac is None else t.ac[k:, k:],
                        None if t.bc is None else t.bc[k:, k:])
        return Solver(self.grid[k:], tables, self.input_times[k:], self.schedule,
                      {**self.metadata, "started_at_step": k})

    def noise_levels(self) -> Tensor:
        """VE noise levels ``sigma_t / alpha_t`` of the ``N + 1`` grid points (needs the schedule)."""
        if self.schedule is None:
            raise ValueError("the solver's noise levels need its noise schedule")
        g = self.grid.detach()
        return self.schedule.sigma(g) / self.schedule.alpha(g)

    def k_sigmas(self) -> Tensor:
        """The grid as k-diffusion sigmas: :meth:`noise_levels` of ``t_0 .. t_{N-1}``, then ``0``.

        Pass them to k-diffusion-style samplers (:func:`s4s.integrations.k_diffusion.sample_s4s`); the
        solver still ends at its own last grid point ``t_N``.
        """
        ve = self.noise_levels()
        return torch.cat([ve[:-1], torch.zeros(1, dtype=ve.dtype)])

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        from s4s import __version__

        t = self.tables
        out: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "library_version": __version__,
            "nfe": self.nfe,
            "schedule": None if self.schedule is None else self.schedule.to_config(),
            "grid": self.grid.detach().tolist(),
            "input_times": self.input_times.detach().tolist(),
            "predictor": {"a": t.a.detach().tolist(), "b": t.b.detach().tolist()},
            "corrector": None if t.ac is None else {"a": t.ac.detach().tolist(), "b": t.bc.detach().tolist()},
            "metadata": self.metadata,
        }
        return out

    @classmethod
    def from_dict(cls, data: Any) -> "Solver":
        if not isinstance(data, dict):
            raise SolverFileError("a solver file must hold a JSON object")
        if data.get("format") != FORMAT:
            raise SolverFileError(f"not an s4s solver (format {data.get('format')!r}, expected {FORMAT!r})")
        version = data.get("format_version")
        if version not in READABLE_VERSIONS:
            raise SolverFileError(f"unknown format_version {version!r}; this s4s reads versions {list(READABLE_VERSIONS)}")
        if data.get("kind") == "guidance_family":
            raise SolverFileError("this file holds a guidance family, not one solver: load it with s4s.load_solver or "
                                  "s4s.GuidanceFamily.load")
        missing = [k for k in ("grid", "input_times", "predictor") if k not in data]
        if missing:
            raise SolverFileError(f"missing field(s): {', '.join(missing)}")

        def tensor(value: Any, name: str) -> Tensor:
            try:
                return torch.tensor(value, dtype=torch.float64)
            except (TypeError, ValueError) as err:
                raise SolverFileError(f"field {name!r} is not a numeric array of regular shape: {err}") from err

        pred, corr = data["predictor"], data.get("corrector")
        if not isinstance(pred, dict) or {"a", "b"} - set(pred):
            raise SolverFileError("field 'predictor' needs tables 'a' and 'b'")
        if corr is not None and (not isinstance(corr, dict) or {"a", "b"} - set(corr)):
            raise SolverFileError("field 'corrector' needs tables 'a' and 'b' (or null)")
        tables = Tables(tensor(pred["a"], "predictor.a"), tensor(pred["b"], "predictor.b"),
                        None if corr is None else tensor(corr["a"], "corrector.a"),
                        None if corr is None else tensor(corr["b"], "corrector.b"))
        if tables.a.ndim != 2:
            raise SolverFileError(f"table 'a' must be 2-D, got shape {tuple(tables.a.shape)}")
        if "nfe" in data and data["nfe"] != tables.nfe:
            raise SolverFileError(f"nfe {data['nfe']} does not match the tables ({tables.nfe} rows)")
        try:
            schedule = None if data.get("schedule") is None else schedule_from_config(data["schedule"])
        except (TypeError, ValueError) as err:
            raise SolverFileError(f"bad schedule: {err}") from err
        metadata = data.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise SolverFileError(f"field 'metadata' must be an object, got {type(metadata).__name__}")
        return cls(tensor(data["grid"], "grid"), tables, tensor(data["input_times"], "input_times"),
                   schedule, dict(metadata))

    def save(self, path: str | Path) -> Path:
        """Write the solver as human-readable JSON (exact float64 round trip)."""
        return write_solver_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Solver":
        """Read a solver written by :meth:`save`; any defect raises :class:`SolverFileError`."""
        data = read_solver_json(path)
        try:
            return cls.from_dict(data)
        except SolverFileError as err:
            raise SolverFileError(f"{path}: {err}") from err

    def __repr__(self) -> str:
        src = self.metadata.get("source", "custom")
        pc = "+corrector" if self.tables.has_corrector else ""
        return f"Solver({src}{pc}, nfe={self.nfe}, grid=[{self.grid[0].item():.4g} .. {self.grid[-1].item():.4g}])"
