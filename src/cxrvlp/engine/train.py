"""The train loop: AdamW with warm-up + cosine, gradient accumulation and clipping, the
precision policy, DistributedDataParallel, optional torch.compile, atomic checkpoints and
exact resume.

It knows nothing of chest X-rays: a model maps a batch dict to an output with ``loss`` and a
``losses`` dict of named terms; a dataset and a collate function provide the batches.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from cxrvlp.engine import distributed
from cxrvlp.engine.checkpoint import CheckpointManager
from cxrvlp.engine.data import GlobalBatchSampler, SeededSamples
from cxrvlp.engine.metrics import MetricsLogger
from cxrvlp.engine.precision import autocast, resolve_precision
from cxrvlp.errors import DataError

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"


@dataclass
class TrainConfig:
    """The ``train`` section of an experiment config."""

    batch_size: int = 16  # per process and micro-batch
    accumulate: int = 1  # micro-batches per optimiser step
    lr: float = 1e-4
    weight_decay: float = 0.05
    adam_beta2: float = 0.98  # the second-moment decay; 0.999 is torch's default
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01
    max_steps: int = 1000
    max_minutes: float | None = None  # stop (and checkpoint) after this long
    grad_clip: float | None = 1.0
    checkpoint_every: int = 200
    keep_last: int = 3
    log_every: int = 10
    seed: int = 0
    workers: int = 0
    threads: int | None = None
    precision: str = "auto"
    augment: bool = True
    device: str = "auto"
    # torch.compile the model (inductor): the first steps compile. On a 2-core CPU it did
    # not pay (docs/results/speed-2026-12-04.md); meant for long runs and GPUs.
    compile: bool = False


def lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    """Linear warm-up to the peak, then cosine decay to ``min_lr_ratio`` at ``max_steps``."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        span = max(1, config.max_steps - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine

    return factor


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms, embeddings' 1-D tensors and temperatures."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            # srun --gpus-per-task shows each task only its own device, as index 0.
            return torch.device("cuda", distributed.local_rank() % torch.cuda.device_count())
        return torch.device("cpu")
    return torch.device(name)


def to_device(value: Any, device: torch.device) -> Any:
    """``value`` with its tensors on ``device``, also those inside lists, tuples and dicts (a
    detector's batch holds one target dict of tensors per image)."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {key: to_device(item, device) for key, item in value.items()}
    if isinstance(value, list):
        return [to_device(item, device) for item in value]
    if isinstance(value, tuple):
        return tuple(to_device(item, device) for item in value)
    return value


class Trainer:
    """Runs ``config.max_steps`` optimiser steps of ``model`` on ``dataset``; see module doc."""

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset,
        collate: Callable[[list[Any]], dict[str, Any]],
        run_dir: str | Path,
        config: TrainConfig,
        first_batch_check: Callable[[dict[str, Any]], None] | None = None,
        progress: bool = True,
        desc: str = "train",
    ):
        self.config = config
        self.desc = desc
        self.run_dir = Path(run_dir)
        self.device = pick_device(config.device)
        self.precision = resolve_precision(config.precision, self.device)
        self.model = model.to(self.device)
        self.dataset = SeededSamples(dataset, config.seed)
        self.collate = collate
        self.first_batch_check = first_batch_check
        self.progress = progress and distributed.is_main_process()
        self.module: nn.Module = self.model
        self.ddp: DistributedDataParallel | None = None
        if distributed.is_distributed():
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
            self.module = self.ddp
        if config.compile:
            # The DDP wrapper is compiled, not the model inside it: dynamo then splits the graph
            # at DDP's gradient buckets and overlaps their all-reduce with the backward.
            self.module = torch.compile(self.module)
        # fused: one kernel over all parameters, a third of the for-loop's time on the CPU,
        # equal to it up to float rounding (1e-8 after five steps).
        self.optimizer = torch.optim.AdamW(
            parameter_groups(self.model, config.weight_decay),
            lr=config.lr,
            betas=(0.9, config.adam_beta2),
            fused=True,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(config))
        self.checkpoints = CheckpointManager(self.run_dir, keep_last=config.keep_last)
        self.sampler = GlobalBatchSampler(
            len(self.dataset),
            config.batch_size,
            seed=config.seed,
            rank=distributed.rank(),
            world_size=distributed.world_size(),
        )
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.skipped = 0

    # ---- state ------------------------------------------------------------------------------
    def resume(self, checkpoint: str | Path) -> int:
        state = self.checkpoints.load(checkpoint, self.model, self.optimizer, self.scheduler)
        extra = state["extra"]
        self.step = int(state["step"])
        self.epoch = int(extra["epoch"])
        self.batch_in_epoch = int(extra["batch_in_epoch"])
        self.skipped = int(extra.get("skipped", 0))
        log.info("resumed from %s at step %d", state["path"], self.step)
        return self.step

    def save(self) -> None:
        if distributed.is_main_process():
            self.checkpoints.save(
                self.step,
                self.model,
                self.optimizer,
                self.scheduler,
                extra={
                    "epoch": self.epoch,
                    "batch_in_epoch": self.batch_in_epoch,
                    "skipped": self.skipped,
                    "world_size": distributed.world_size(),
                },
            )
        distributed.barrier()

    # ---- loop -------------------------------------------------------------------------------
    def _batches(self):
        """Endless micro-batches from the saved data position, epoch after epoch; a batch none
        of whose samples could be read is counted in ``skipped`` and passed over."""
        while True:
            self.sampler.set_position(self.epoch, self.batch_in_epoch)
            self.dataset.epoch = self.epoch
            loader = DataLoader(
                self.dataset,
                batch_sampler=self.sampler,
                collate_fn=self.collate,
                num_workers=self.config.workers,
                persistent_workers=False,
                # Without a generator of its own, every pass over a loader draws its workers'
                # seed from torch's global RNG, which models may draw from too (a detector's
                # proposal sampling): a resumed run, which starts one more pass, would then
                # continue with other random numbers. The samples' randomness does not come
                # from this seed (SeededSamples).
                generator=torch.Generator().manual_seed(self.config.seed),
            )
            whole_epoch, readable = self.batch_in_epoch == 0, False
            for batch in loader:
                self.batch_in_epoch += 1
                self.skipped += len(batch.get("skipped", []))
                for path, error in batch.get("skipped", []):
                    log.warning("skipped %s: %s", path, error)
                if len(batch["index"]) > 0:
                    readable = True
                    yield batch
            if whole_epoch and not readable:
                raise DataError(
                    f"no sample of a whole epoch (epoch {self.epoch}) could be read, see the "
                    "warnings above: check the data set's files"
                )
            self.epoch += 1
            self.batch_in_epoch = 0

    def run(self) -> dict[str, Any]:
        config = self.config
        metrics = MetricsLogger(self.run_dir, enabled=distributed.is_main_process())
        metrics.truncate_after(self.step)
        started = time.monotonic()
        bar = tqdm(
            total=config.max_steps,
            initial=self.step,
            desc=self.desc,
            unit="step",
            disable=not self.progress,
        )
        batches = self._batches()
        self.module.train()
        window_samples, window_start = 0, time.monotonic()
        last: dict[str, float] = {}
        stopped_early = False
        while self.step < config.max_steps:
            terms: dict[str, float] = {}
            step_samples = 0
            for micro in range(config.accumulate):
                batch = next(batches)
                if self.first_batch_check is not None:
                    self.first_batch_check(batch)
                    self.first_batch_check = None
                batch = to_device(batch, self.device)
                batch["step"] = self.step
                sync = micro == config.accumulate - 1 or self.ddp is None
                context = self.ddp.no_sync() if not sync else contextlib.nullcontext()
                with context:
                    with autocast(self.precision, self.device):
                        output = self.module(batch)
                    (output.loss / config.accumulate).backward()
                step_samples += len(batch["index"])
                for name, value in {"loss": output.loss.detach(), **output.losses}.items():
                    mean = float(distributed.all_reduce_mean(value.float()))
                    terms[name] = terms.get(name, 0.0) + mean / config.accumulate
            if config.grad_clip:
                terms["grad_norm"] = float(
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
                )
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.step += 1
            window_samples += step_samples * distributed.world_size()
            bar.update(1)
            last = terms
            if self.step % config.log_every == 0 or self.step == config.max_steps:
                elapsed = time.monotonic() - window_start
                values = {
                    f"loss_{k}" if k not in ("loss", "grad_norm") else k: v
                    for k, v in terms.items()
                }
                values["lr"] = self.scheduler.get_last_lr()[0]
                values["samples_per_s"] = window_samples / max(elapsed, 1e-9)
                values["epoch"] = self.epoch
                metrics.log(self.step, values)
                bar.set_postfix(
                    {k: f"{v:.3g}" for k, v in values.items() if k.startswith("loss")}
                    | {"samples/s": f"{values['samples_per_s']:.1f}"}
                )
                window_samples, window_start = 0, time.monotonic()
            out_of_time = (
                config.max_minutes is not None
                and time.monotonic() - started > 60 * config.max_minutes
            )
            # Every process must agree to stop, or the others would wait in a collective.
            out_of_time = bool(distributed.all_reduce_max(int(out_of_time), self.device))
            if (
                self.step % config.checkpoint_every == 0
                or self.step == config.max_steps
                or out_of_time
            ):
                self.save()
            if out_of_time:
                stopped_early = True
                break
        bar.close()
        metrics.close()
        summary = {
            "steps": self.step,
            "max_steps": config.max_steps,
            "stopped_early": stopped_early,
            "minutes": round((time.monotonic() - started) / 60, 2),
            "skipped_samples": self.skipped,
            "world_size": distributed.world_size(),
            "device": str(self.device),
            "precision": self.precision,
            "last": last,
            "config": asdict(config),
        }
        if distributed.is_main_process():
            (self.run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        return summary
