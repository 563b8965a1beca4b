"""One localisation fine-tuning step (Faster R-CNN on the gkmvlp-tiny encoder) on the CPU.

Run: .venv/bin/python benchmarks/localization_step.py [--steps 10] [--batch 8] [--threads 2]
A synthetic batch (random images at the encoder's size, one opacity box in half of them) goes
through forward, backward and AdamW. Rows: the shipped RoI settings (one bilinear sample per
RoIAlign bin, 32 RoIs per image) and the earlier ones (sampling_ratio 2, i.e. 2x2 samples
per bin, and 64 RoIs per image), with the median seconds per step and the share of the step
spent in RoIAlign backward (torch.profiler), where torchvision's single-threaded CPU kernel shows.
"""

from __future__ import annotations

import argparse

import torch

from timing import median_seconds

SETTINGS = {
    "shipped: 1 sample/bin, 32 RoIs": (1, 32),
    "earlier: 2x2 samples/bin, 64 RoIs": (2, 64),
}


def synthetic_batch(size: int, channels: int, batch: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, channels, size, size, generator=generator)
    boxes = []
    for index in range(batch):
        if index % 2:
            boxes.append(torch.zeros(0, 4))
            continue
        x1, y1 = (torch.rand(2, generator=generator) * size / 2).tolist()
        boxes.append(torch.tensor([[x1, y1, x1 + size / 4, y1 + size / 3]]))
    return {"image": images, "boxes": boxes}


def measure(sampling_ratio: int, rois_per_image: int, steps: int, batch_size: int) -> dict:
    from cxrvlp.models.registry import create_model
    from cxrvlp.tasks.localization import LocalizationModel

    torch.manual_seed(0)
    backbone = create_model("gkmvlp-tiny")
    encoder = backbone.image_encoder
    model = LocalizationModel(encoder, linear_probe=False)
    model.detector.roi_heads.box_roi_pool.sampling_ratio = sampling_ratio
    model.detector.roi_heads.fg_bg_sampler.batch_size_per_image = rois_per_image
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = synthetic_batch(
        int(encoder.image_size), int(backbone.config.image.channels), batch_size
    )

    def step() -> None:
        model(batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    median = median_seconds(step, steps)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        step()
    events = profile.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    roi_backward = sum(
        event.self_cpu_time_total for event in events if "roi_align_backward" in event.key
    )
    return {
        "seconds_per_step": median,
        "samples_per_s": batch_size / median,
        "roi_align_backward_share": roi_backward / max(total, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per setting")
    parser.add_argument("--batch", type=int, default=8, help="images per step (the demo's)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"localisation step, gkmvlp-tiny, batch {args.batch}, median of {args.steps} steps")
    print(f"{'setting':<50} {'s/step':>8} {'samples/s':>10} {'RoIAlign bwd':>13}")
    for name, (sampling_ratio, rois) in SETTINGS.items():
        row = measure(sampling_ratio, rois, args.steps, args.batch)
        print(
            f"{name:<50} {row['seconds_per_step']:>8.3f} {row['samples_per_s']:>10.1f} "
            f"{row['roi_align_backward_share']:>12.0%}"
        )


if __name__ == "__main__":
    main()
