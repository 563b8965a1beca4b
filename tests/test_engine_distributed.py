"""Where a process sits among its peers, read from torchrun's or srun's environment."""

import pytest
import torch

from cxrvlp.engine import distributed
from cxrvlp.engine.distributed import Placement, placement_from_environment

TORCHRUN = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
SRUN = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_NNODES": "2"}


def test_torchrun_gives_rank_world_size_and_local_rank():
    assert placement_from_environment(TORCHRUN) == Placement(rank=5, world_size=8, local_rank=1)


def test_srun_gives_them_without_torchrun():
    assert placement_from_environment(SRUN) == Placement(rank=3, world_size=4, local_rank=1)


def test_torchrun_wins_over_the_srun_task_it_runs_in():
    both = {**SRUN, **TORCHRUN}
    assert placement_from_environment(both) == Placement(rank=5, world_size=8, local_rank=1)


def test_a_single_torchrun_process_in_a_many_task_allocation_is_alone():
    alone = {**SRUN, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    assert placement_from_environment(alone) == Placement(rank=0, world_size=1, local_rank=0)


def test_neither_is_a_process_alone():
    expected = Placement(rank=0, world_size=1, local_rank=0)
    assert placement_from_environment({"SLURM_JOB_ID": "7"}) == expected


def _srun_task(monkeypatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in SRUN.items():
        monkeypatch.setenv(name, value)


def test_local_rank_picks_the_device_of_an_srun_task(monkeypatch):
    _srun_task(monkeypatch)
    assert distributed.local_rank() == 1


def test_srun_without_master_address_says_what_to_export(monkeypatch):
    _srun_task(monkeypatch)
    with pytest.raises(RuntimeError, match="4 processes but no MASTER_ADDR or MASTER_PORT"):
        distributed.init_from_environment(torch.device("cpu"))
    assert not distributed.is_distributed()
