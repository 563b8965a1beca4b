"""`cxrvlp text parse | label | prompts | tokenizer`: report triplets, CheXpert labels,
knowledge prompts, WordPiece."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

DESCRIPTION = """\
Report understanding: `parse` prints the triplets <finding, region, existence> and CheXpert-14
labels of one report, `label` does it for a file of reports (JSONL out), `prompts` prints the
knowledge prompts of one report or a summary over the IU X-Ray (Open-i) reports, `tokenizer`
trains a WordPiece vocabulary on a report corpus.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="text_command", required=True, metavar="ACTION")
    parse_parser = commands.add_parser("parse", help="triplets and CheXpert labels of one report")
    parse_parser.add_argument("report", help="the report text (use - to read standard input)")
    parse_parser.set_defaults(action=run_parse)

    label_parser = commands.add_parser("label", help="label a file of reports, one JSON a line out")
    label_parser.add_argument(
        "input", type=Path, help="text file (one report a line) or JSONL with a 'text' field"
    )
    label_parser.add_argument("--out", type=Path, required=True, help="output .jsonl")
    label_parser.set_defaults(action=run_label)

    prompts_parser = commands.add_parser(
        "prompts", help="knowledge prompts of one report, or a summary over Open-i"
    )
    source = prompts_parser.add_mutually_exclusive_group(required=True)
    source.add_argument("report", nargs="?", help="the report text (use - to read standard input)")
    source.add_argument("--file", type=Path, help="a file holding one report")
    source.add_argument(
        "--open-i",
        nargs="?",
        const=OPENI_DEFAULT,
        metavar="ARCHIVE",
        help="summarise the prompts of every Open-i report (default: the archive that ships "
        "with torchxrayvision)",
    )
    prompts_parser.add_argument("--json", type=Path, metavar="OUT", help="also write JSON here")
    prompts_parser.set_defaults(action=run_prompts)

    tokenizer_parser = commands.add_parser("tokenizer", help="train a WordPiece vocabulary")
    tokenizer_parser.add_argument(
        "--corpus",
        type=Path,
        nargs="+",
        required=True,
        help="text files (one report a line), JSONL with 'text', or `cxrvlp synth` folders",
    )
    tokenizer_parser.add_argument("--out", type=Path, required=True, help="tokenizer folder")
    tokenizer_parser.add_argument("--vocab-size", type=int, default=8000)
    tokenizer_parser.add_argument("--min-frequency", type=int, default=2)
    tokenizer_parser.set_defaults(action=run_tokenizer)


OPENI_DEFAULT = "torchxrayvision"


def run(args: argparse.Namespace) -> int:
    return args.action(args)


def report_json(text: str) -> dict:
    """The JSON object `parse` prints and `label` writes for one report."""
    from cxrvlp.text.chexpert import label_report
    from cxrvlp.text.parse import parse_report

    parsed = parse_report(text)
    return {
        "triplets": [
            {
                "finding": t.finding,
                "region": t.region,
                "existence": t.existence,
                "severity": t.severity,
                "laterality": t.laterality,
                "sentence": t.sentence,
            }
            for t in parsed.triplets
        ],
        "chexpert": label_report(parsed),
    }


def run_parse(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.report == "-" else args.report
    print(json.dumps(report_json(text), indent=2))
    return 0


def _reports(path: Path) -> Iterator[tuple[int, str | None, str]]:
    """(line number, text or None, reason) for each line of a text or JSONL file."""
    is_jsonl = path.suffix in (".jsonl", ".json")
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            if not is_jsonl:
                yield number, line.strip(), ""
                continue
            try:
                row = json.loads(line)
                text = row["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                yield number, None, f"not a JSON object with a 'text' field ({error})"
                continue
            yield number, str(text), ""


def run_label(args: argparse.Namespace) -> int:
    if not args.input.is_file():
        print(f"cxrvlp text label: input not found: {args.input}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    written = skipped = 0
    start = time.perf_counter()
    with args.out.open("w") as out:
        for number, text, reason in tqdm(_reports(args.input), desc="label", unit="report"):
            if text is None:
                skipped += 1
                print(f"skipped {args.input}:{number}: {reason}", file=sys.stderr)
                continue
            out.write(json.dumps({"line": number, **report_json(text)}) + "\n")
            written += 1
    seconds = time.perf_counter() - start
    print(
        f"labelled {written:,} reports into {args.out} in {seconds:.1f} s "
        f"({written / max(seconds, 1e-9):,.0f} reports/s); {skipped} lines skipped"
    )
    return 0


def _prompt_json(prompt) -> dict:
    return {
        "text": prompt.text,
        "regions": list(prompt.regions),
        "position": "stated" if prompt.position_stated else "typical",
    }


def _openi_summary(archive: str) -> dict | str:
    """The prompt statistics over an Open-i archive, or why they cannot be computed."""
    from cxrvlp.text.prompt_stats import default_openi_archive, prompt_statistics, report_prompts

    path = default_openi_archive() if archive == OPENI_DEFAULT else Path(archive)
    if path is None or not path.exists():
        return f"Open-i reports not found: {path or 'torchxrayvision is not installed'}"
    # The Open-i reader sits in the data package, which imports torch; only this path needs it.
    from cxrvlp.data.readers.iu_xray import OpenIReports

    reports = OpenIReports(path)
    texts = [report.sections.text for report in reports]
    summary = prompt_statistics(
        report_prompts(text) for text in tqdm(texts, desc="prompts", unit="report")
    )
    return {"archive": str(path), **summary}


def run_prompts(args: argparse.Namespace) -> int:
    from cxrvlp.text.prompt_stats import report_prompts

    if args.open_i is not None:
        result = _openi_summary(args.open_i)
        if isinstance(result, str):
            print(f"cxrvlp text prompts: {result}", file=sys.stderr)
            return 2
        print(json.dumps(result, indent=2))
    else:
        if args.file is not None and not args.file.is_file():
            print(f"cxrvlp text prompts: file not found: {args.file}", file=sys.stderr)
            return 2
        if args.file is not None:
            text = args.file.read_text(encoding="utf-8", errors="replace")
        else:
            text = sys.stdin.read() if args.report == "-" else args.report
        prompts = [_prompt_json(p) for p in report_prompts(text)]
        for prompt in prompts:
            print(f"{prompt['text']}\t[{', '.join(prompt['regions'])}]\t{prompt['position']}")
        result = {"prompts": prompts}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def run_tokenizer(args: argparse.Namespace) -> int:
    from cxrvlp.text.tokenizer import corpus_from_paths, train_wordpiece

    missing = [p for p in args.corpus if not p.exists()]
    if missing:
        print(f"cxrvlp text tokenizer: corpus not found: {missing}", file=sys.stderr)
        return 2
    out = train_wordpiece(
        corpus_from_paths(args.corpus),
        args.out,
        vocab_size=args.vocab_size,
        min_frequency=args.min_frequency,
    )
    print(f"WordPiece tokenizer written to {out}")
    return 0
