"""`cxrvlp data inspect | prepare | sections`: check a data set root, cache it, section reports."""

from __future__ import annotations

import argparse
import inspect as introspect
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from cxrvlp.data.readers import READERS, reader_class
from cxrvlp.errors import DataError

DESCRIPTION = """\
Data set tools: `inspect` validates a data set root and counts what is in it, `prepare`
resizes a data set once into a compact cache the readers use transparently, `sections`
builds mimic_cxr_sectioned.csv.gz from the MIMIC-CXR report files.
"""
MAX_PROBLEMS_SHOWN = 25


def _add_reader_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=list(READERS), help="which data set")
    parser.add_argument("--root", type=Path, required=True, help="the data set's root folder")
    parser.add_argument(
        "--images",
        type=Path,
        help="images root where it is separate (Chest ImaGenome: MIMIC-CXR-JPG)",
    )
    parser.add_argument(
        "--reports", type=Path, help="MIMIC-CXR reports folder or mimic_cxr_sectioned.csv(.gz)"
    )
    parser.add_argument("--split", help="only this split (names as the publisher writes them)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    inspect_parser = commands.add_parser(
        "inspect", help="validate a root: counts per split and label, and every problem"
    )
    _add_reader_options(inspect_parser)
    inspect_parser.add_argument(
        "--labels-only", action="store_true", help="count labels; do not require the images"
    )
    inspect_parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    inspect_parser.set_defaults(action=run_inspect)

    prepare_parser = commands.add_parser("prepare", help="resize a data set once into a cache")
    _add_reader_options(prepare_parser)
    prepare_parser.add_argument("--out", type=Path, required=True, help="cache folder to write")
    prepare_parser.add_argument("--size", type=int, default=256, help="longer side in pixels")
    prepare_parser.add_argument("--workers", type=int, default=2, help="decoding processes")
    prepare_parser.set_defaults(action=run_prepare)

    sections_parser = commands.add_parser(
        "sections", help="write mimic_cxr_sectioned.csv.gz from MIMIC-CXR report files"
    )
    sections_parser.add_argument(
        "--reports", type=Path, required=True, help="reports folder (holds files/)"
    )
    sections_parser.add_argument("--out", type=Path, required=True, help="output .csv.gz path")
    sections_parser.set_defaults(action=run_sections)


def open_reader(args: argparse.Namespace, **kwargs: Any):
    """Construct the reader, passing only the options its constructor takes."""
    cls = reader_class(args.dataset)
    accepted = introspect.signature(cls.__init__).parameters
    options: dict[str, Any] = dict(kwargs)
    images = args.images
    if images is None and args.dataset == "chest-imagenome":
        # The synthetic world (and a tidy download) keeps MIMIC-CXR-JPG beside Chest ImaGenome.
        sibling = args.root.parent / "mimic-cxr-jpg"
        images = sibling if sibling.is_dir() else None
    for name, value in (("images", images), ("images_dir", images), ("reports", args.reports)):
        if value is not None and name in accepted:
            options[name] = value
    if args.split is not None:
        options["split"] = args.split
    return cls(args.root, **options)


def run(args: argparse.Namespace) -> int:
    return args.action(args)


def run_inspect(args: argparse.Namespace) -> int:
    package_log = logging.getLogger("cxrvlp")
    level = package_log.level
    package_log.setLevel(logging.ERROR)  # problems are reported below instead
    try:
        dataset = open_reader(args, labels_only=args.labels_only)
    except (DataError, OSError, ValueError) as error:
        print(f"cxrvlp data inspect: cannot use {args.root}: {error}", file=sys.stderr)
        return 2
    finally:
        package_log.setLevel(level)  # in-process callers (tests, the demo) keep their warnings
    summary = dataset.summary()
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    print(f"{args.dataset} at {args.root}")
    for key in ("n_rows", "n_records", "n_images", "n_patients", "n_studies", "n_boxes"):
        print(f"  {key[2:] if key.startswith('n_') else key:<20} {summary.get(key, 0):>10,}")
    for key, value in summary.items():
        if key.startswith("n_") and key not in (
            "n_rows",
            "n_records",
            "n_images",
            "n_patients",
            "n_studies",
            "n_boxes",
            "n_problems",
        ):
            print(f"  {key[2:]:<20} {value:>10,}")
    print("  per split: " + ", ".join(f"{k} {v:,}" for k, v in summary["per_split"].items()))
    if "per_label" in summary:
        print(f"  {'label':<28} {'positive':>9} {'negative':>9} {'uncertain':>9} {'blank':>9}")
        for name, counts in summary["per_label"].items():
            print(
                f"  {name:<28} {counts['positive']:>9,} {counts['negative']:>9,} "
                f"{counts['uncertain']:>9,} {counts['blank']:>9,}"
            )
    problems = summary["problems"]
    print(f"  problems: {len(problems):,}")
    for problem in problems[:MAX_PROBLEMS_SHOWN]:
        print(f"    {problem['source']}: {problem['reason']}")
    if len(problems) > MAX_PROBLEMS_SHOWN:
        print(f"    ... {len(problems) - MAX_PROBLEMS_SHOWN:,} more (use --json for all)")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from cxrvlp.data.cache import prepare_cache

    try:
        dataset = open_reader(args)
    except (DataError, OSError, ValueError) as error:
        print(f"cxrvlp data prepare: cannot use {args.root}: {error}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    stats = prepare_cache(dataset, args.out, size=args.size, workers=args.workers)
    seconds = time.perf_counter() - start
    print(
        f"cached {stats['cached']:,} images of {args.dataset} at {args.size} px into {args.out} "
        f"in {seconds:.1f} s ({stats['cached'] / max(seconds, 1e-9):.1f} images/s); "
        f"{len(stats['problems'])} unreadable"
    )
    for problem in stats["problems"][:MAX_PROBLEMS_SHOWN]:
        print(f"  {problem['source']}: {problem['reason']}")
    return 0


def run_sections(args: argparse.Namespace) -> int:
    from cxrvlp.text.sections import write_sectioned_csv

    try:
        stats = write_sectioned_csv(args.reports, args.out)
    except (DataError, OSError) as error:
        print(f"cxrvlp data sections: {error}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out}: {stats.n_written:,} of {stats.n_reports:,} reports sectioned, "
        f"{stats.n_empty:,} with neither findings nor impression, "
        f"{len(stats.unreadable):,} unreadable"
    )
    for name, reason in stats.unreadable[:MAX_PROBLEMS_SHOWN]:
        print(f"  unreadable: {name}: {reason}")
    return 0
