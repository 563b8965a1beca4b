"""`cxrvlp benchmark`: run an evaluation protocol on any data and write the tables."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cxrvlp.benchmark.protocol import (
    RANDOM_INIT,
    ProtocolError,
    load_data_file,
    load_protocol,
    protocol_names,
    protocol_path,
)

DESCRIPTION = """Run an evaluation protocol (fine-tuning and evaluation runs) on any data and
write the tables.

  cxrvlp benchmark --data WORLD/data.yaml --protocol quick --models gkmvlp=MODEL --out OUT
  cxrvlp benchmark --data my-data.yaml --protocol paper --models gkmvlp=MODEL --dry-run

--data: a YAML file naming each data set's root, e.g.
    pretraining: /data/physionet        # mimic-cxr-jpg/, mimic-cxr-reports/, chest-imagenome/
    datasets:
      rsna: /data/rsna-pneumonia-detection-challenge
      nih: /data/ChestX-ray14
      vqa-rad: {root: /data/vqa-rad, boxes: vqa-rad-boxes.jsonl}   # `detector annotate`
  (`cxrvlp synth` writes one into its world). Runs on data sets the file does not name are
  listed as skipped. --protocol: quick, full, paper, pretraining (see --list-protocols) or a
  YAML file.
  Finished runs (OUT/finetune/RUN/results.json, OUT/evaluate/RUN/results.json) are reused;
  a failing run is reported with its error and the others go on.
OUT receives the runs, results.json, report.md, report.html and the plots.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, help="data file (YAML): data set name -> root")
    parser.add_argument("--protocol", default="quick", help="quick | full | paper | FILE.yaml")
    parser.add_argument(
        "--models",
        nargs="*",
        default=[],
        metavar="NAME=BUNDLE",
        help="pre-trained bundles (`cxrvlp export`), e.g. gkmvlp=runs/demo/model-gkmvlp",
    )
    parser.add_argument("--out", type=Path, help="output folder")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side (default 1)")
    parser.add_argument("--threads", type=int, help="torch CPU threads of each run")
    parser.add_argument(
        "--tokenizer", type=Path, help="tokenizer of random-init text runs (else trained)"
    )
    parser.add_argument(
        "--random-model", help="architecture of random-init runs (default: the first bundle's)"
    )
    parser.add_argument("--dry-run", action="store_true", help="list the runs and the time")
    parser.add_argument("--list-protocols", action="store_true", help="the shipped protocols")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="protocol changes, e.g. fractions=[1.0]"
    )


def parse_models(items: list[str]) -> dict[str, Path]:
    models: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path or name == RANDOM_INIT or "/" in name:
            raise ProtocolError(
                f"--models {item!r}: write NAME=BUNDLE (a name without '/', not "
                f"'{RANDOM_INIT}', which is always run)"
            )
        models[name] = Path(path)
    return models


def random_architecture(bundles: dict[str, Path], chosen: str | None) -> str:
    """Random-init runs use the architecture of the first bundle, so they compare like with
    like, unless one is named."""
    from cxrvlp.benchmark.runner import DEFAULT_RANDOM_MODEL
    from cxrvlp.bundle import EXPORT_FILE

    if chosen:
        return chosen
    for bundle in bundles.values():
        info = bundle / EXPORT_FILE
        name = json.loads(info.read_text()).get("model_name") if info.is_file() else None
        if name:
            return name
    return DEFAULT_RANDOM_MODEL


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except ProtocolError as error:
        print(f"cxrvlp benchmark: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from cxrvlp.benchmark.runner import Setup, plan

    if args.list_protocols:
        for name in protocol_names():
            from omegaconf import OmegaConf

            description = OmegaConf.load(protocol_path(name)).get("description", "")
            print(f"{name:<12} {str(description).strip().splitlines()[0] if description else ''}")
        return 0
    if args.data is None or (args.out is None and not args.dry_run):
        raise ProtocolError("--data and --out are needed (--out may be left out with --dry-run)")
    bundles = parse_models(args.models)
    missing = [f"{n}={p}" for n, p in bundles.items() if not p.is_dir()]
    if missing:
        raise ProtocolError(f"--models: no such bundle folder: {', '.join(missing)}")
    data = load_data_file(args.data)
    protocol = load_protocol(args.protocol, list(bundles), args.overrides)
    setup = Setup(
        out=args.out or Path("benchmark-dry-run"),
        data=data,
        bundles=bundles,
        tokenizer=args.tokenizer,
        random_model=random_architecture(bundles, args.random_model),
        threads=args.threads,
    )
    if args.dry_run:
        return dry_run(setup, protocol, plan(setup, protocol), args.jobs)
    from cxrvlp.benchmark import run_benchmark
    from cxrvlp.benchmark.report import summary_line, write_report

    document, _ = run_benchmark(setup, protocol, jobs=args.jobs, progress=not args.quiet)
    report = write_report(setup.out, document)
    print(report.headline)
    print(summary_line(document))
    print(f"report: {setup.out / 'report.html'}")
    return 0


def dry_run(setup, protocol, work, jobs: int) -> int:
    print(f"protocol {protocol.name} ({protocol.source}): {len(protocol.runs)} runs")
    statuses = {run.name: "to run" for run in work.to_run}
    statuses |= {o.run.name: "done" for o in work.finished}
    statuses |= {o.run.name: f"skipped: {o.reason}" for o in work.skipped}
    for run in protocol.runs:
        estimate = f"~{run.estimated_seconds() / 60:.1f} min" if run in work.to_run else ""
        print(f"  {run.name:<52} {estimate:>10}  {statuses[run.name]}")
    minutes = work.estimated_seconds(jobs) / 60
    print(
        f"{len(work.to_run)} to run, {len(work.finished)} done, {len(work.skipped)} skipped; "
        f"estimated {minutes:.0f} min with --jobs {jobs} on a 2-core CPU with gkmvlp-tiny"
    )
    return 0
