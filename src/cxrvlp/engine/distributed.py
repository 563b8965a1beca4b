"""Process groups for torchrun: one process per device, gloo on CPU and nccl on GPU.

The helpers are no-ops in a single process, so the same code runs with and without torchrun.
``gather_with_grad`` lets a loss see the whole global batch while gradients flow back to the
process that produced each row; ``global_mean`` turns a local sum into a contribution whose
average over processes (what DistributedDataParallel applies to gradients) is the mean over
the global batch.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


def init_from_environment(device: torch.device, timeout_minutes: float = 30.0) -> bool:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); False when alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return is_distributed()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
    return True


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def _sizes(local: int, device: torch.device) -> list[int]:
    sizes = [torch.zeros((), dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor(local, device=device))
    return [int(size) for size in sizes]


def _padded(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    if len(tensor) == rows:
        return tensor
    padding = tensor.new_zeros((rows - len(tensor), *tensor.shape[1:]))
    return torch.cat([tensor, padding])


def gather_with_grad(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Rows of every process concatenated in rank order, and this process's first row.

    Gradients of the gathered rows flow back to their owners. Processes may hold different
    numbers of rows (a batch that lost a bad sample).
    """
    if not is_distributed():
        return tensor, 0
    sizes = _sizes(len(tensor), tensor.device)
    pieces = dist_fn.all_gather(_padded(tensor, max(sizes)))
    gathered = torch.cat([piece[:size] for piece, size in zip(pieces, sizes, strict=True)])
    return gathered, sum(sizes[: rank()])


@torch.no_grad()
def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return tensor
    sizes = _sizes(len(tensor), tensor.device)
    pieces = [tensor.new_empty((max(sizes), *tensor.shape[1:])) for _ in sizes]
    dist.all_gather(pieces, _padded(tensor.contiguous(), max(sizes)))
    return torch.cat([piece[:size] for piece, size in zip(pieces, sizes, strict=True)])


def all_reduce_max(value: int, device: torch.device) -> int:
    if not is_distributed():
        return value
    tensor = torch.tensor(value, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean over processes of a (detached) tensor, for logging."""
    if not is_distributed():
        return tensor
    reduced = tensor.detach().clone()
    dist.all_reduce(reduced)
    return reduced / world_size()


def global_mean(local_sum: torch.Tensor, local_count: int | torch.Tensor) -> torch.Tensor:
    """``local_sum`` scaled so that averaging over processes gives sum / global count."""
    count = torch.as_tensor(local_count, dtype=torch.float32, device=local_sum.device)
    if is_distributed():
        count = count.clone()
        dist.all_reduce(count)
    return local_sum * world_size() / count.clamp(min=1.0)
