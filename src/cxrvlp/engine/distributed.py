"""Process groups for torchrun or srun: one process per device, gloo on CPU and nccl on GPU.

A process learns its place from torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` or, launched
by SLURM's srun without torchrun, from ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``
with ``MASTER_ADDR``/``MASTER_PORT`` exported by the batch script. The helpers are no-ops in a
single process, so the same code runs with and without a launcher.
``gather_with_grad`` lets a loss see the whole global batch while gradients flow back to the
process that produced each row; ``global_mean`` turns a local sum into a contribution whose
average over processes (what DistributedDataParallel applies to gradients) is the mean over
the global batch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Placement:
    """This process's place among all processes, and among those on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def placement_from_environment(environment: Mapping[str, str]) -> Placement:
    """torchrun's variables when set, else srun's, else a process alone.

    torchrun wins because it may itself run as an srun task, whose SLURM variables then
    describe the agent, not the workers torchrun started.
    """
    if "WORLD_SIZE" in environment:
        return Placement(
            rank=int(environment.get("RANK", "0")),
            world_size=int(environment["WORLD_SIZE"]),
            local_rank=int(environment.get("LOCAL_RANK", "0")),
        )
    if "SLURM_PROCID" in environment and "SLURM_NTASKS" in environment:
        return Placement(
            rank=int(environment["SLURM_PROCID"]),
            world_size=int(environment["SLURM_NTASKS"]),
            local_rank=int(environment.get("SLURM_LOCALID", "0")),
        )
    return Placement()


def init_from_environment(device: torch.device, timeout_minutes: float = 30.0) -> bool:
    """Join the process group torchrun or srun describes (world size > 1); False when alone."""
    placement = placement_from_environment(os.environ)
    if placement.world_size <= 1 or is_distributed():
        return is_distributed()
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        # torchrun always sets both. Name SLURM: its variables bring a process here that srun
        # did not start (a batch script of several tasks), and torch's error would not say why.
        raise RuntimeError(
            f"{placement.world_size} processes but no {' or '.join(missing)}: under SLURM, "
            "launch one task per device with srun and export MASTER_ADDR and MASTER_PORT "
            "(docs/pretraining.md)"
        )
    # env:// reads the rank and world size from the environment: give srun's to it, and to
    # anything else that reads torchrun's names.
    os.environ["RANK"] = str(placement.rank)
    os.environ["WORLD_SIZE"] = str(placement.world_size)
    os.environ["LOCAL_RANK"] = str(placement.local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend, init_method="env://", timeout=timedelta(minutes=timeout_minutes)
    )
    return True


def local_rank() -> int:
    return placement_from_environment(os.environ).local_rank


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
