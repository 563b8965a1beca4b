"""Synthetic world throughput at 512 px: rendering alone and the whole `cxrvlp synth` pipeline.

Run: .venv/bin/python benchmarks/synth_throughput.py [--studies 120] [--repeats 3]
Prints a table of medians over repeats; the issue's target is 20 images/s on 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from cxrvlp.synth.anatomy import sample_anatomy
from cxrvlp.synth.render import render_frontal
from cxrvlp.synth.scene import sample_scene
from cxrvlp.synth.world import WorldConfig, generate_world


def render_rate(n: int, size: int) -> float:
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, sample_anatomy(rng, size, size, "PA", "M")) for _ in range(n)]
    start = time.perf_counter()
    for scene in scenes:
        render_frontal(scene, rng)
    return n / (time.perf_counter() - start)


def world_rate(studies: int, size: int, workers: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        config = WorldConfig(out=Path(folder), studies=studies, image_size=size, workers=workers)
        start = time.perf_counter()
        summary, _ = generate_world(config, progress=False)
        return summary.total_images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", type=int, default=120)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = [
        ("render_frontal, 1 process", lambda: render_rate(40, args.size)),
        ("cxrvlp synth (all exports), 1 worker", lambda: world_rate(args.studies, args.size, 1)),
        ("cxrvlp synth (all exports), 2 workers", lambda: world_rate(args.studies, args.size, 2)),
    ]
    print(f"{'what':<40} {'images/s (median)':>18} {'min':>7} {'max':>7}")
    for name, measure in rows:
        rates = [measure() for _ in range(args.repeats)]
        print(f"{name:<40} {statistics.median(rates):>18.1f} {min(rates):>7.1f} {max(rates):>7.1f}")


if __name__ == "__main__":
    main()
