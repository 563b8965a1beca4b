"""`cxrvlp synth`: render a synthetic chest X-ray world in the real data sets' formats."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cxrvlp.synth.preview import contact_sheet
from cxrvlp.synth.report import ReportNoise
from cxrvlp.synth.world import COHORTS, WorldConfig, run_timed

DESCRIPTION = """\
Render a synthetic chest X-ray world with known truth (anatomy, 29 region boxes, findings,
reports, VQA pairs) and export it as MIMIC-CXR-JPG + reports, Chest ImaGenome, RSNA, NIH,
CheXpert, IU X-Ray, VQA-RAD, SLAKE, SIIM-ACR (pneumothorax masks) and COVIDx (COVID-19-like
pneumonia), each a cohort of its own patients, plus truth.jsonl.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output folder (the world root)")
    parser.add_argument("--studies", type=int, default=200, help="MIMIC-CXR studies (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    parser.add_argument("--image-size", type=int, default=512, help="image width in pixels")
    parser.add_argument(
        "--downstream-fraction",
        type=float,
        default=0.25,
        help="studies of each downstream cohort per MIMIC study (default 0.25, at least 8)",
    )
    parser.add_argument(
        "--cohorts",
        default=",".join(COHORTS),
        help=f"comma-separated subset of {','.join(COHORTS)}",
    )
    parser.add_argument(
        "--cohort-studies",
        default="",
        metavar="COHORT=N,...",
        help="studies of named downstream cohorts, replacing --downstream-fraction for them "
        "(e.g. rsna=1000)",
    )
    parser.add_argument(
        "--workers", type=int, default=min(2, os.cpu_count() or 1), help="render processes"
    )
    parser.add_argument(
        "--omit-fraction",
        type=float,
        default=ReportNoise.omit_fraction,
        help="share of present findings the reports leave out",
    )
    parser.add_argument(
        "--hedge-fraction",
        type=float,
        default=ReportNoise.hedge_fraction,
        help="share of present findings the reports hedge",
    )
    parser.add_argument(
        "--preview",
        action="store_true",
        help="write preview.png and preview_regions.png contact sheets",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    cohorts = tuple(c.strip() for c in args.cohorts.split(",") if c.strip())
    unknown = [c for c in cohorts if c not in COHORTS]
    if unknown:
        raise SystemExit(f"cxrvlp synth: unknown cohort(s) {unknown}; choose from {list(COHORTS)}")
    if args.studies < 1 or args.image_size < 64:
        raise SystemExit("cxrvlp synth: --studies must be >= 1 and --image-size >= 64")
    cohort_sizes = parse_cohort_studies(args.cohort_studies)
    config = WorldConfig(
        out=args.out,
        studies=args.studies,
        seed=args.seed,
        image_size=args.image_size,
        downstream_fraction=args.downstream_fraction,
        cohort_sizes=cohort_sizes,
        workers=args.workers,
        noise=ReportNoise(args.omit_fraction, args.hedge_fraction),
    )
    summary, sample, seconds = run_timed(config, cohorts=cohorts, progress=not args.quiet)
    print(f"\nSynthetic world written to {args.out}")
    print(f"{'cohort':<10} {'patients':>8} {'studies':>8} {'images':>7}  train/validate/test")
    for cohort, counts in summary.cohorts.items():
        splits = "/".join(str(counts.get(s, 0)) for s in ("train", "validate", "test"))
        print(
            f"{cohort:<10} {counts.get('patients', 0):>8} {counts.get('studies', 0):>8} "
            f"{counts.get('images', 0):>7}  {splits}"
        )
    print(f"normal studies: {summary.normal_studies} of {summary.total_studies}")
    print("findings: " + ", ".join(f"{k} {v}" for k, v in summary.findings.items()))
    print(
        f"{summary.total_images} images in {seconds:.1f} s "
        f"({summary.total_images / max(seconds, 1e-9):.1f} images/s, {args.workers} workers)"
    )
    if args.preview and sample:
        sheet = contact_sheet(sample[:12], args.out / "preview.png")
        regions = contact_sheet(
            sample[:4], args.out / "preview_regions.png", columns=2, regions=True
        )
        print(f"preview: {sheet} and {regions}")
    return 0


def parse_cohort_studies(text: str) -> tuple[tuple[str, int], ...]:
    """``"rsna=1000,nih=300"`` -> (("nih", 300), ("rsna", 1000)); explains what is wrong."""
    sizes = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        cohort, _, count = item.partition("=")
        if cohort not in COHORTS or cohort == "mimic" or not count.strip().isdigit():
            raise SystemExit(
                f"cxrvlp synth: --cohort-studies {item!r}: write COHORT=N with a downstream "
                f"cohort of {[c for c in COHORTS if c != 'mimic']} and a whole number N "
                "(MIMIC-CXR's size is --studies)"
            )
        sizes[cohort] = int(count)
    return tuple(sorted(sizes.items()))
