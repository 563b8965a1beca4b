"""Is the data path ever the bottleneck of pre-training? The pre-training DataLoader's delivery
rate against the training step's consumption rate, with the quick demo's settings.

Run: .venv/bin/python benchmarks/loader_vs_step.py [--studies 300] [--workers 0,2]
     [--threads 2] [--repeats 5]
A synthetic MIMIC-CXR world of ``--studies`` studies at the demo's image size is rendered to a
temporary folder (removed afterwards) and cached with `prepare_cache`. The model (gkmvlp-tiny),
transform (with augmentation), collate, batch size and Trainer are those `cxrvlp demo` pre-trains
with; the image cache is on. Measured, as medians over ``--repeats``:
(a) delivery: batches/s of the Trainer's own loader iterated alone (worker start-up at each
    epoch included, as in training), for each worker count;
(b) consumption: batches/s of the training step (forward, backward, clipping, AdamW) on
    batches the loader delivered, in the main process with ``--threads`` torch threads.
The ratio delivery/consumption should be at least 5: the data path then never holds the step
back.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cxrvlp.cli import main as cxrvlp_main
from cxrvlp.data.cache import prepare_cache
from cxrvlp.data.pretraining import pretraining_dataset
from cxrvlp.data.transforms import transform_from_config
from cxrvlp.demo import QUICK
from cxrvlp.engine.precision import autocast
from cxrvlp.engine.train import TrainConfig, Trainer, to_device
from cxrvlp.models.registry import attach_prompts, collator, model_from_config
from cxrvlp.pretrain import build_config
from cxrvlp.text.tokenizer import corpus_from_paths, load_tokenizer, train_wordpiece
from timing import median_seconds

MODEL = "gkmvlp-tiny"  # the demo's GK-MVLP recipe


def build_trainer(world: Path, folder: Path, workers: int) -> Trainer:
    """The Trainer `cxrvlp demo` pre-trains with, reading the image cache of ``world``."""
    pretraining = QUICK["pretrain"]
    tokenizer_dir = folder / "tokenizer"
    if not (tokenizer_dir / "tokenizer.json").is_file():
        train_wordpiece(corpus_from_paths([world]), tokenizer_dir, QUICK["tokenizer"]["vocab_size"])
    config = build_config(
        MODEL,
        overrides=[
            f"train.batch_size={pretraining['batch_size']}",
            f"train.lr={pretraining['lr']}",
            f"train.warmup_steps={pretraining['warmup_steps']}",
            f"train.workers={workers}",
        ],
        data_root=world,
        max_steps=pretraining["max_steps"],
    )
    train_config = TrainConfig(**config.train)
    transform = transform_from_config(config.model.image, augment=train_config.augment)
    dataset = pretraining_dataset(world, split="train", transform=transform)
    cache = folder / "cache"
    if not cache.is_dir():
        prepare_cache(dataset, cache, workers=2, progress=False)
    dataset = pretraining_dataset(world, split="train", transform=transform, cache=cache)
    tokenizer = load_tokenizer(tokenizer_dir)
    model = model_from_config(config.model, vocab_size=len(tokenizer))
    attach_prompts(model, tokenizer)
    return Trainer(
        model, dataset, collator(model, tokenizer), folder / "run", train_config, progress=False
    )


def delivery_rate(trainer: Trainer, batches: int) -> float:
    """Batches/s of the Trainer's loader alone, over ``batches`` batches."""
    start = time.perf_counter()
    for _ in itertools.islice(trainer._batches(), batches):
        pass
    return batches / (time.perf_counter() - start)


def training_step(trainer: Trainer, batch: dict) -> None:
    """One optimiser step as `Trainer.run` takes it (no gradient accumulation)."""
    batch = to_device(batch, trainer.device)
    batch["step"] = trainer.step
    with autocast(trainer.precision, trainer.device):
        output = trainer.module(batch)
    output.loss.backward()
    torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.config.grad_clip)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.scheduler.step()
    trainer.step += 1


def consumption_rate(trainer: Trainer, batches: list[dict]) -> float:
    """Batches/s of the training step: the median over all but the first (warm-up) batch."""
    trainer.module.train()
    remaining = iter(batches)
    return 1.0 / median_seconds(lambda: training_step(trainer, next(remaining)), len(batches) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", type=int, default=300, help="MIMIC-CXR studies rendered")
    parser.add_argument(
        "--workers", default=f"0,{QUICK['workers']}", help="loader worker counts, comma-separated"
    )
    parser.add_argument("--threads", type=int, default=QUICK["threads"], help="torch threads")
    parser.add_argument("--batches", type=int, default=20, help="batches a delivery run reads")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image_size = QUICK["world"]["image_size"]
    batch_size = QUICK["pretrain"]["batch_size"]
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        world = folder / "world"
        cxrvlp_main(
            [
                "synth", "--out", str(world), "--studies", str(args.studies), "--quiet",
                "--image-size", str(image_size), "--cohorts", "mimic",
                "--downstream-fraction", "0",
            ]
        )  # fmt: skip
        rows = []
        for workers in [int(w) for w in args.workers.split(",")]:
            trainer = build_trainer(world, folder, workers)
            delivered = [delivery_rate(trainer, args.batches) for _ in range(args.repeats)]
            batches = list(itertools.islice(trainer._batches(), args.repeats + 1))
            rows.append((workers, statistics.median(delivered), consumption_rate(trainer, batches)))
    print(
        f"{MODEL}, batch {batch_size}, world image size {image_size} px, model input "
        f"{trainer.model.image_encoder.image_size} px, image cache on, {len(trainer.dataset)} "
        f"training images, {args.threads} torch threads; medians of {args.repeats}"
    )
    print(f"{'workers':>7} {'loader batches/s':>17} {'step batches/s':>15} {'ratio':>7}")
    for workers, delivery, consumption in rows:
        print(
            f"{workers:>7} {delivery:>17.2f} {consumption:>15.2f} {delivery / consumption:>6.1f}x"
        )


if __name__ == "__main__":
    main()
