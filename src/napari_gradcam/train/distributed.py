"""Training on several processes (``torchrun``): the process group, and the few collectives a run needs.

``torchrun --nproc_per_node N -m napari_gradcam train DATA --out M.safetensors`` starts N copies of the
command with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and a rendezvous address in their environment.
:func:`process_group` joins them (gloo on a CPU, NCCL on CUDA, one GPU per local rank); :class:`Comm`
is what the training loop uses to agree.  In a single process :class:`Comm` does nothing, so the loop
has one code path.

Agreement, not broadcast of errors: every batch each process contributes flags (its stop request, its
failure) and the clock; all processes act on the same combined values, so a stop or a failure on one
process ends every process at the same point, after the last checkpoint was written by rank 0.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:  # pragma: no cover
    import torch


def world_from_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) outside torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return 0, 1, 0
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


@dataclass
class Comm:
    """The run's processes: ``rank`` of ``world``; every method is a no-op (identity) when ``world == 1``."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints and reports progress (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def agree(self, values: list[float], device: "torch.device") -> list[float]:
        """Element-wise maximum of ``values`` over all processes (flags: any; clocks: the latest)."""
        return self._reduce(values, device, "MAX")

    def sum(self, values: list[float], device: "torch.device") -> list[float]:
        """Element-wise sum of ``values`` over all processes."""
        return self._reduce(values, device, "SUM")

    def _reduce(self, values: list[float], device: "torch.device", op: str) -> list[float]:
        """``values`` (as float64) reduced element-wise over all processes by ``torch.distributed.ReduceOp.<op>``;
        as they are with one process."""
        if not self.distributed:
            return [float(v) for v in values]
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
        return t.tolist()

    def gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj`` (picklable), in rank order."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def first_error(self, error: BaseException | None, device: "torch.device") -> tuple[int, str] | None:
        """If any process has an ``error``: (its rank, its message) of the lowest such rank, on every process."""
        if not self.agree([1.0 if error is not None else 0.0], device)[0]:
            return None
        if not self.distributed:
            return 0, str(error)
        texts = self.gather(None if error is None else str(error))
        rank = next(r for r, t in enumerate(texts) if t is not None)
        return rank, texts[rank]

    def sync_buffers(self, model: "torch.nn.Module") -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every process."""
        if not self.distributed:
            return
        import torch.distributed as dist

        for b in model.buffers():
            dist.broadcast(b.data, 0)

    def shard(self, n: int) -> range:
        """This process's share of ``n`` items (every ``world``-th, from ``rank``)."""
        return range(self.rank, n, self.world)


def wrap_ddp(model: "torch.nn.Module", device: "torch.device") -> "torch.nn.Module":
    """``model`` in DistributedDataParallel: gradients averaged over the processes at every step.

    Buffers (BatchNorm running statistics) are not synchronised at every forward pass (no collective
    before the loss, so that a failed batch on one process is agreed on, not waited for); they are
    copied from rank 0 before validation (:meth:`Comm.sync_buffers`).
    """
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def _backend(device: "torch.device") -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def local_device(requested: str, local_rank: int) -> str:
    """The device of this process: ``cuda:LOCAL_RANK`` when CUDA is asked for (or 'auto' finds it)."""
    import torch

    if str(requested) in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return "cpu" if str(requested) == "auto" else str(requested)


@contextlib.contextmanager
def process_group(device: "torch.device") -> Iterator[Comm]:
    """The run's :class:`Comm`: joins torchrun's process group (and leaves it at the end) when started
    by torchrun, else a single-process Comm.  A group made by the caller is used and left alone."""
    rank, world, _ = world_from_env()
    if world <= 1:
        yield Comm()
        return
    import torch.distributed as dist

    owned = not dist.is_initialized()
    if owned:
        if device.type == "cuda":
            import torch

            torch.cuda.set_device(device)
        dist.init_process_group(_backend(device))
    try:
        yield Comm(dist.get_rank(), dist.get_world_size())
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()
