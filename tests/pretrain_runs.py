"""Helpers of the tests that run `cxrvlp pretrain` as processes and compare runs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors.torch import load_file

from cxrvlp.engine.checkpoint import CheckpointManager


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(CheckpointManager(run).latest() / "model.safetensors")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cli(argv: list[str], processes: int = 1) -> list[str]:
    """The command line of `cxrvlp ARGV`, under torchrun with ``processes`` > 1."""
    if processes == 1:
        return [sys.executable, "-m", "cxrvlp.cli", *argv]
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
        "-m", "cxrvlp.cli", *argv,
    ]  # fmt: skip


def torchrun_node(argv: list[str], node_rank: int, nodes: int, port: int) -> list[str]:
    """The command line of `cxrvlp ARGV` as node ``node_rank`` of ``nodes`` with one process
    each, all on this machine, joined by torchrun's static rendezvous at ``port``."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes),
        "--nproc-per-node", "1", "--node-rank", str(node_rank),
        "--master-addr", "127.0.0.1", "--master-port", str(port),
        "-m", "cxrvlp.cli", *argv,
    ]  # fmt: skip


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def srun_task_environment(task: int, tasks: int, port: int) -> dict[str, str]:
    """What srun and an sbatch script give task ``task`` of ``tasks``, one per node."""
    slurm = {"SLURM_PROCID": str(task), "SLURM_NTASKS": str(tasks), "SLURM_LOCALID": "0"}
    return {**environment(), **slurm, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def run_together(
    commands: list[list[str]], environments: list[dict[str, str]], logs: Path, timeout: float
) -> None:
    """Run the commands at once and fail, with their output's tails, unless all succeed.

    When one fails or ``timeout`` passes, the others are stopped rather than left waiting
    for their peers: SIGTERM first, which torchrun passes on to its workers (they run in
    sessions of their own, out of reach of a process-group kill), then SIGKILL.
    """
    outputs = [logs / f"process_{index}.log" for index in range(len(commands))]
    processes: list[subprocess.Popen] = []
    codes: list[int | None] = []
    deadline = time.monotonic() + timeout
    with ExitStack() as files:
        try:
            for command, env, output in zip(commands, environments, outputs, strict=True):
                log = files.enter_context(output.open("w"))
                processes.append(
                    subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
                )
            codes = [process.poll() for process in processes]
            while None in codes and set(codes) <= {None, 0} and time.monotonic() < deadline:
                time.sleep(0.1)
                codes = [process.poll() for process in processes]
        finally:
            for process in processes:
                if process.poll() is None:
                    process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    failures = [
        f"{' '.join(command)} -> {process.returncode}:\n{output.read_text()[-3000:]}"
        for command, process, output in zip(commands, processes, outputs, strict=True)
        if process.returncode != 0
    ]
    timed_out = None in codes and set(codes) <= {None, 0}
    stopped = f" (stopped after {timeout:g} s)" if timed_out else ""
    assert not failures, f"failed{stopped}:\n" + "\n\n".join(failures)
