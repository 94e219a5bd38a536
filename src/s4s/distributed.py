r"""Scale-out on ``torch.distributed``: ``torchrun --nproc-per-node K -m s4s learn ...`` with no extra flag.

One process is the default and behaves exactly as without this module. Under ``torchrun`` (or any
launcher that sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` and a rendezvous, e.g. ``srun`` with
``torchrun``) :func:`setup` joins the process group: ``nccl`` when the process has a CUDA GPU,
``gloo`` otherwise, each rank pinned to GPU ``LOCAL_RANK``. What is split and what is replicated:

* **replicated**: the model weights (one copy per process), the solver being learned (a few hundred
  numbers, identical on every rank: the gradients are all-reduced and every rank takes the same step,
  checked at every validation), the RNG that draws the mini-batches;
* **split**: teacher samples (batch ``k`` of the request is made by rank ``k mod world``; every batch
  is the same computation as in one process, so the union is bit-identical on CPU), each training
  mini-batch (rank ``r`` takes its contiguous share), validation and evaluation samples (by batch).

Only rank 0 shows progress bars, logs at INFO and writes the solver, run folders, JSON and images;
every rank writes the teacher-cache batches it computed (atomically, so a rank that dies leaves no
half-written batch; the cache is read by any world size).

Reductions are sums of per-sample values in a fixed rank order, so results equal the one-process
ones up to floating-point summation order (about 1e-7 relative in fp32).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Optional, Sequence, TypeVar

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

__all__ = ["setup", "teardown", "rank", "world_size", "is_main", "local_device", "owner_of", "map_batches",
           "all_reduce_sum", "all_reduce_", "check_same_on_all_ranks", "shard_slice"]

T = TypeVar("T")


def _env_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def active() -> bool:
    """Whether this process is one of several (a process group is initialised)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, the process that logs, shows progress and writes results."""
    return rank() == 0


def setup() -> bool:
    """Join the process group the launcher describes in the environment (``WORLD_SIZE > 1``); a no-op
    for one process. Returns whether several processes run. Picks ``nccl`` with CUDA, else ``gloo``,
    and pins each rank to GPU ``LOCAL_RANK``."""
    if _env_world() <= 1 or active():
        return active()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch has no torch.distributed")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and torch.cuda.device_count() > local
    if use_cuda:
        torch.cuda.set_device(local)
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend)
    log.debug("rank %d of %d joined (%s)", rank(), world_size(), backend)
    return True


def teardown(wait: bool = True) -> None:
    """Leave the process group; with ``wait`` after a last barrier, so that no rank exits while others
    still reduce (after an error the other ranks are not waited for: they fail on their own)."""
    if active():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def backend_name() -> str:
    return dist.get_backend() if active() else "single process"


def local_device() -> str:
    """``cuda:LOCAL_RANK`` for a rank with a GPU, else ``cpu``; ``cuda`` when one process sees a GPU."""
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if active() else "cuda"


def owner_of(batch_index: int) -> int:
    """The rank that computes batch ``batch_index`` of a split job (round robin)."""
    return batch_index % world_size()


def shard_slice(n: int) -> slice:
    """This rank's contiguous share of ``n`` items (the first ``n mod world`` ranks take one more)."""
    w, r = world_size(), rank()
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return slice(start, start + base + (1 if r < extra else 0))


def map_batches(fn: Callable[[int], T], count: int) -> list[T]:
    """``[fn(0), ..., fn(count - 1)]`` on every rank, each item computed by :func:`owner_of` its index
    and sent to all (results are moved to the CPU for the exchange). One process: a plain loop."""
    if not active():
        return [fn(i) for i in range(count)]
    mine: dict[int, Any] = {}
    for i in range(count):
        if owner_of(i) != rank():
            continue
        try:
            mine[i] = _to_cpu(fn(i))
        except Exception as err:  # noqa: BLE001 - sent to every rank, so that all fail together, none waits forever
            mine[i] = _Failed(err)
            break
    gathered: list[Optional[dict[int, Any]]] = [None] * world_size()
    dist.all_gather_object(gathered, mine)
    merged: dict[int, Any] = {}
    for part in gathered:
        merged.update(part or {})
    for i in sorted(merged):
        if isinstance(merged[i], _Failed):
            raise merged[i].error
    return [merged[i] for i in range(count)]


class _Failed:
    """An item whose computation raised: the error travels to every rank."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, tuple):
        return tuple(_to_cpu(v) for v in value)
    return value


def _reduce_device() -> torch.device:
    return torch.device(local_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum of ``values`` over the ranks (float64)."""
    if not active():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(t)
    return [float(v) for v in t.cpu()]


def all_reduce_(tensors: Sequence[Optional[torch.Tensor]]) -> None:
    """Sum tensors (e.g. gradients) over the ranks in place; ``None`` entries are skipped."""
    if not active():
        return
    for t in tensors:
        if t is None:
            continue
        buf = t.detach().to(_reduce_device())
        dist.all_reduce(buf)
        t.copy_(buf.to(t.device))


def check_same_on_all_ranks(tensors: Sequence[torch.Tensor], what: str) -> None:
    """Refuse ranks that diverged: every rank must hold bitwise the same ``tensors``."""
    if not active():
        return
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64).cpu() for t in tensors])
    lo, hi = flat.clone().to(_reduce_device()), flat.clone().to(_reduce_device())
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if not torch.equal(lo, hi):
        raise RuntimeError(f"the ranks' {what} diverged (max difference {float((hi - lo).abs().max()):.3g}); "
                           "every rank must run the same code on the same data")
