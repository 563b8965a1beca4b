"""One segmentation fine-tuning step (progressive-upsampling decoder on a pre-training
recipe's image encoder) on the CPU.

Run: .venv/bin/python benchmarks/segmentation_step.py [--steps 5] [--batch-size 16]
     [--r50-batch-size 2] [--threads 2] [--json OUT]
A synthetic batch (random images at the encoder's size, a filled box as the mask in half of
them, empty masks in the rest) goes through forward, Dice + BCE, backward and AdamW, as
``SegmentationTask`` trains it. Rows, for the image encoders of gkmvlp-tiny and asg-tiny: the
encoder frozen (``linear_probe=True``: only the decoder learns), fine-tuned end to end, and
the decoder alone on the encoder's patch grid computed once beforehand; then the decoder alone
on asg-r50's ResNet-50 stride-32 grid at a small batch (its encoder is not trained here).
Each row: the median seconds per step over the timed steps after one warm-up step,
samples/s, the decoder's and the encoder's parameter counts, and the decoder's share of the
step (the decoder-alone median over the row's median; in a fine-tuned row the rest also holds
AdamW's update of the encoder's weights). Random weights: the time does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from timing import median_seconds

ENCODERS = ("gkmvlp-tiny", "asg-tiny")  # the demo's encoders, trained frozen or end to end
RESNET = "asg-r50"  # the paper-size ResNet-50: its decoder alone, at a small batch
LR = 3e-4  # SegmentationTask's fine-tuning lr (the time does not depend on it)


def synthetic_batch(size: int, channels: int, batch: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, channels, size, size, generator=generator)
    masks = torch.zeros(batch, size, size)
    for index in range(0, batch, 2):  # half the images positive, as a box filled in
        x1, y1 = (torch.rand(2, generator=generator) * size / 2).int().tolist()
        masks[index, y1 : y1 + size // 3, x1 : x1 + size // 4] = 1.0
    return {"image": images, "mask": masks}


def count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def build(name: str, linear_probe: bool, batch_size: int):
    from cxrvlp.models.registry import create_model
    from cxrvlp.tasks.segmentation import SegmentationModel

    torch.manual_seed(0)
    backbone = create_model(name)  # vocab_size: the config's; only the image encoder is used
    model = SegmentationModel(backbone.image_encoder, linear_probe=linear_probe)
    model.train()
    batch = synthetic_batch(model.image_size, int(backbone.config.image.channels), batch_size)
    return model, batch


def model_step(model: torch.nn.Module, batch: dict) -> Callable[[], None]:
    trained = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=LR)

    def step() -> None:
        model(batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def decoder_step(model: torch.nn.Module, batch: dict) -> Callable[[], None]:
    """The decoder's forward, loss, backward and AdamW on a patch grid computed once."""
    with torch.no_grad():
        model.image_encoder.eval()
        tokens, _ = model.image_encoder(batch["image"])
        grid = model.image_encoder.patch_grid(tokens).detach()
    masks = batch["mask"][:, None].float()
    optimizer = torch.optim.AdamW(model.decoder.parameters(), lr=LR)

    def step() -> None:
        logits = model.decoder(grid, model.image_size)
        model.loss(logits.float(), masks).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def row(name: str, mode: str, model, batch_size: int, seconds: float, decoder_s: float) -> dict:
    return {
        "model": name,
        "encoder": mode,
        "batch_size": batch_size,
        "image_size": model.image_size,
        "patch_grid": int(model.image_encoder.grid),
        "seconds_per_step": seconds,
        "samples_per_s": batch_size / seconds,
        "decoder_parameters": count(model.decoder),
        "encoder_parameters": count(model.image_encoder),
        "decoder_share": decoder_s / seconds,
    }


def measure(steps: int, batch_size: int, r50_batch_size: int) -> list[dict]:
    rows = []
    for name in ENCODERS:
        model, batch = build(name, linear_probe=True, batch_size=batch_size)
        decoder_s = median_seconds(decoder_step(model, batch), steps)
        model.train()  # a frozen encoder stays in eval mode
        frozen_s = median_seconds(model_step(model, batch), steps)
        rows.append(row(name, "frozen", model, batch_size, frozen_s, decoder_s))
        model, batch = build(name, linear_probe=False, batch_size=batch_size)
        tuned_s = median_seconds(model_step(model, batch), steps)
        rows.append(row(name, "fine-tuned", model, batch_size, tuned_s, decoder_s))
        rows.append(row(name, "decoder alone", model, batch_size, decoder_s, decoder_s))
    model, batch = build(RESNET, linear_probe=True, batch_size=r50_batch_size)
    decoder_s = median_seconds(decoder_step(model, batch), steps)
    rows.append(row(RESNET, "decoder alone", model, r50_batch_size, decoder_s, decoder_s))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row")
    parser.add_argument(
        "--batch-size", type=int, default=16, help="images per step (SegmentationTask's)"
    )
    parser.add_argument("--r50-batch-size", type=int, default=2, help="images per step, asg-r50")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = measure(args.steps, args.batch_size, args.r50_batch_size)
    print(
        f"segmentation step (forward, Dice + BCE, backward, AdamW), median of {args.steps} "
        f"steps, {args.threads} threads"
    )
    print(
        f"{'model':<13}{'encoder':<15}{'batch':>6}{'px':>5}{'grid':>6}{'s/step':>9}"
        f"{'samples/s':>11}{'decoder M':>11}{'encoder M':>11}{'decoder share':>15}"
    )
    for r in rows:
        print(
            f"{r['model']:<13}{r['encoder']:<15}{r['batch_size']:>6}{r['image_size']:>5}"
            f"{r['patch_grid']:>6}{r['seconds_per_step']:>9.3f}{r['samples_per_s']:>11.1f}"
            f"{r['decoder_parameters'] / 1e6:>11.3f}{r['encoder_parameters'] / 1e6:>11.2f}"
            f"{r['decoder_share']:>15.0%}"
        )
    print(f"wall time {time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        settings = {key: value for key, value in vars(args).items() if key != "json"}
        args.json.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
