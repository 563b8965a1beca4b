"""Helpers of the tests that run `cxrvlp pretrain` as processes and compare runs."""

from __future__ import annotations

import json
import os
import socket
import sys
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


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
