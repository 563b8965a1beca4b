"""Inference, stage by stage: per-image latency of each stage of the service's analysis path
(`serve.analysis.Analyzer`) and of `cxrvlp generate`, then the throughput of batch inference.

Run: .venv/bin/python benchmarks/inference.py [--models gkmvlp-tiny,gkmvlp-small]
     [--images 32] [--batch-sizes 1,8,16] [--max-new-tokens N] [--threads 2] [--repeats 3]
     [--batch-repeats 3]
Models are randomly initialised (a random decoder never stops early, so every report is
``--max-new-tokens`` long: the model's longest by default), with a WordPiece tokenizer trained
on the reports of a synthetic MIMIC-CXR world whose PNG files (``--image-size`` px, in a
temporary folder removed afterwards) are the inputs; the region detector is the default
`DetectorConfig` (ResNet-18 FPN at 224 px), randomly initialised. Beam search: 3 beams, KV cache.

Table 1, one image at a time, median ms of ``--repeats`` (stages timed in interleaved rounds):
decode (PNG), preprocess (the model's transform), region detector, image encoder, knowledge
prompts (`cxrvlp generate` encodes the 69 prompts in every batch; the service once at start),
GK module, beam search, and the totals of `cxrvlp generate` (decode to report) and of
`Analyzer.analyze` (decoded pixels to report, scores and grounding).
Table 2: ``--images`` images in batches of each size: images/s (median of ``--batch-repeats``)
and the ratio to batch 1.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cxrvlp.bundle import Pretrained, load_pretrained, write_bundle
from cxrvlp.cli import main as cxrvlp_main
from cxrvlp.data.image_io import load_image
from cxrvlp.detector.evaluate import predict_pixels
from cxrvlp.models.detector import RegionDetector
from cxrvlp.models.registry import model_config
from cxrvlp.serve.analysis import Analyzer
from cxrvlp.tasks.generate_command import generate_for_images, model_inputs
from cxrvlp.tasks.generation import decode, default_max_new_tokens
from cxrvlp.text.tokenizer import corpus_from_paths, load_tokenizer, train_wordpiece
from timing import interleaved_medians

BEAMS = 3


def random_bundle(name: str, world: Path, folder: Path) -> Pretrained:
    """``name`` at random init with a tokenizer of the world's reports, loaded as a bundle."""
    config = model_config(name)
    tokenizer_dir = folder / f"tokenizer-{name}"
    train_wordpiece(corpus_from_paths([world]), tokenizer_dir, int(config.text.vocab_size))
    info = {"model_name": name, "recipe": str(config.recipe), "init": "random"}
    bundle = folder / f"bundle-{name}"
    write_bundle(bundle, config, load_tokenizer(tokenizer_dir), info)
    return load_pretrained(bundle, weights=False)


def stage_milliseconds(
    bundle: Pretrained, detector: RegionDetector, path: Path, max_new_tokens: int, repeats: int
) -> dict[str, float]:
    """Median ms of each stage for the one image at ``path`` (see the module docstring)."""
    model, tokenizer = bundle.model, bundle.tokenizer
    pixels = load_image(path)
    images, boxes = model_inputs(bundle, detector, [pixels])
    regions = predict_pixels(detector, [pixels])[0]["regions"].values()
    file_boxes = np.array([region["box"] for region in regions], np.float32)
    analyzer = Analyzer(bundle, detector, beams=BEAMS)
    with torch.inference_mode():
        vit_tokens, _ = model.image_encoder(images)
        entities, positions = model.prompt_embeddings()
        memory = model.encode_image(images, boxes, entities, positions).tokens

        def gk_module() -> None:
            grid = model.image_encoder.patch_grid(vit_tokens)
            grounding = model.gk(grid, entities, boxes, positions)
            model.image_to_text(torch.cat([vit_tokens, grounding.z_fused], dim=1))

        stages = {
            "decode (PNG)": lambda: load_image(path),
            "preprocess": lambda: bundle.transform(pixels, file_boxes),
            "region detector": lambda: predict_pixels(detector, [pixels]),
            "image encoder": lambda: model.image_encoder(images),
            "knowledge prompts": model.prompt_embeddings,
            "GK module": gk_module,
            f"beam search ({BEAMS} beams)": lambda: decode(
                model.decoder,
                memory,
                tokenizer.cls_token_id,
                tokenizer.sep_token_id,
                tokenizer.pad_token_id,
                beams=BEAMS,
                max_new_tokens=max_new_tokens,
            ),
            "total: cxrvlp generate": lambda: generate_for_images(
                bundle, detector, [load_image(path)], BEAMS, max_new_tokens
            ),
            "total: Analyzer.analyze": lambda: analyzer.analyze([pixels]),
        }
        seconds = interleaved_medians(stages, repeats)
    return {stage: 1000.0 * value for stage, value in seconds.items()}


def images_per_second(run_batch, paths: list[Path], batch_size: int) -> float:
    """Images/s of ``run_batch`` over ``paths`` in batches of ``batch_size``."""
    start = time.perf_counter()
    for first in range(0, len(paths), batch_size):
        run_batch(paths[first : first + batch_size])
    return len(paths) / (time.perf_counter() - start)


def batch_throughput(
    bundle: Pretrained,
    detector: RegionDetector,
    paths: list[Path],
    batch_sizes: list[int],
    max_new_tokens: int,
    repeats: int,
) -> dict[str, dict[int, float]]:
    """Median images/s of `cxrvlp generate` and of the service for each batch size."""
    analyzer = Analyzer(bundle, detector, beams=BEAMS)
    paths_of = {
        "cxrvlp generate": lambda batch: generate_for_images(
            bundle, detector, [load_image(p) for p in batch], BEAMS, max_new_tokens
        ),
        "Analyzer.analyze": lambda batch: analyzer.analyze([load_image(p) for p in batch]),
    }
    rates: dict[str, dict[int, float]] = {}
    with torch.inference_mode():
        for name, run_batch in paths_of.items():
            rates[name] = {
                size: statistics.median(
                    images_per_second(run_batch, paths, size) for _ in range(repeats)
                )
                for size in batch_sizes
            }
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="gkmvlp-tiny,gkmvlp-small")
    parser.add_argument("--images", type=int, default=32, help="images of the batch table")
    parser.add_argument("--batch-sizes", default="1,8,16")
    parser.add_argument("--image-size", type=int, default=512, help="width of the PNG files")
    parser.add_argument("--max-new-tokens", type=int, help="report tokens (the model's longest)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--repeats", type=int, default=3, help="per-stage timings")
    parser.add_argument("--batch-repeats", type=int, default=3, help="runs of the batch table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        world = folder / "world"
        cxrvlp_main(
            [
                "synth", "--out", str(world), "--studies", str(args.images), "--quiet",
                "--image-size", str(args.image_size), "--cohorts", "mimic",
                "--downstream-fraction", "0",
            ]
        )  # fmt: skip
        paths = sorted((world / "mimic-cxr-jpg").rglob("*.jpg"))[: args.images]
        detector = RegionDetector().eval()
        stages, throughput = {}, {}
        for name in args.models.split(","):
            bundle = random_bundle(name, world, folder)
            tokens = args.max_new_tokens or default_max_new_tokens(bundle.model)
            stages[name] = stage_milliseconds(bundle, detector, paths[0], tokens, args.repeats)
            throughput[name] = batch_throughput(
                bundle, detector, paths, batch_sizes, tokens, args.batch_repeats
            )
            print(f"{name}: {tokens} report tokens, vocabulary {len(bundle.tokenizer)}")
    names = list(stages)
    print(f"\nPer image, one at a time: median ms of {args.repeats}, {args.threads} threads")
    print(f"{'stage':<28}" + "".join(f"{name:>14}" for name in names))
    for stage in stages[names[0]]:
        print(f"{stage:<28}" + "".join(f"{stages[name][stage]:>14.1f}" for name in names))
    print(
        f"\n{len(paths)} images in batches: images/s (median of {args.batch_repeats}), "
        "ratio to batch 1"
    )
    print(f"{'model':<14} {'path':<18}" + "".join(f"{f'batch {s}':>18}" for s in batch_sizes))
    for name in names:
        for path, rates in throughput[name].items():
            cells = "".join(
                f"{rates[s]:>10.2f} ({rates[s] / rates[batch_sizes[0]]:4.1f}x)" for s in batch_sizes
            )
            print(f"{name:<14} {path:<18}{cells}")


if __name__ == "__main__":
    main()
