"""Preprocessing cache: images/s of `prepare`, and DataLoader samples/s from the cache versus
from the raw full-size files, on a synthetic NIH-style cohort (8-bit PNG) and RSNA (DICOM).

Run: .venv/bin/python benchmarks/data_cache.py [--images 200] [--raw-size 1024] [--repeats 3]
Prints a table of medians over repeats.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from torch.utils.data import DataLoader

from cxrvlp.cli import main as cxrvlp_main
from cxrvlp.data.cache import prepare_cache
from cxrvlp.data.readers import reader_class
from cxrvlp.data.sample import collate_samples
from cxrvlp.data.transforms import transform_from_config

MODEL_INPUT = {"image_size": 224, "mean": [0.5], "std": [0.25], "channels": 1}


def loader_rate(dataset, workers: int) -> float:
    loader = DataLoader(dataset, batch_size=32, num_workers=workers, collate_fn=collate_samples)
    start = time.perf_counter()
    seen = sum(len(batch["image_id"]) for batch in loader)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=200, help="images per cohort")
    parser.add_argument("--raw-size", type=int, default=1024, help="width of the raw files")
    parser.add_argument("--cache-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        world = Path(folder) / "world"
        cxrvlp_main(
            [
                "synth", "--out", str(world), "--studies", str(args.images), "--quiet",
                "--downstream-fraction", "1.0", "--image-size", str(args.raw_size),
                "--cohorts", "nih,rsna",
            ]
        )  # fmt: skip
        transform = transform_from_config(MODEL_INPUT)
        print(
            f"{args.images} images per cohort, raw width {args.raw_size} px, "
            f"cache {args.cache_size} px"
        )
        print(f"{'what':<44} {'median':>9} {'min':>9} {'max':>9}")
        for name, root in (("nih", world / "nih"), ("rsna", world / "rsna")):
            raw = reader_class(name)(root, transform=transform)
            cache_dir = Path(folder) / f"cache-{name}"
            rows: dict[str, list[float]] = {}
            for _ in range(args.repeats):
                start = time.perf_counter()
                stats = prepare_cache(
                    raw, cache_dir, size=args.cache_size, workers=2, progress=False
                )
                rows.setdefault(f"{name}: prepare, images/s (2 workers)", []).append(
                    stats["cached"] / (time.perf_counter() - start)
                )
            cached = reader_class(name)(root, transform=transform, cache=cache_dir)
            for workers in (0, 2):
                for _ in range(args.repeats):
                    rows.setdefault(
                        f"{name}: loader raw files, samples/s ({workers} w)", []
                    ).append(loader_rate(raw, workers))
                    rows.setdefault(
                        f"{name}: loader from cache, samples/s ({workers} w)", []
                    ).append(loader_rate(cached, workers))
            for what, values in rows.items():
                print(
                    f"{what:<44} {statistics.median(values):>9.1f} {min(values):>9.1f} "
                    f"{max(values):>9.1f}"
                )


if __name__ == "__main__":
    main()
