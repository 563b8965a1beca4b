"""Report parser throughput on one core: the 3,955 real IU X-Ray reports and synthetic reports.

Run: .venv/bin/python benchmarks/report_parser.py [--synthetic 1000] [--repeats 3]
Prints reports/s (median, min, max over repeats) for parsing alone and for parsing plus
CheXpert labels; the issue's target is 500 reports/s. Texts are read before timing, and the
lexicon is built once beforehand, so the figures are the parser's own.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cxrvlp.data.readers.iu_xray import OpenIReports
from cxrvlp.synth.anatomy import sample_anatomy
from cxrvlp.synth.report import write_report
from cxrvlp.synth.scene import sample_scene
from cxrvlp.text.chexpert import label_report
from cxrvlp.text.parse import parse_report


def iu_texts() -> list[str]:
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("torchxrayvision is not installed: it ships the IU X-Ray reports")
    archive = Path(spec.submodule_search_locations[0]) / "data" / "NLMCXR_reports.tgz"
    return [report.sections.text for report in OpenIReports(archive)]


def synthetic_texts(count: int) -> list[str]:
    texts = []
    for seed in range(count):
        rng = np.random.default_rng(seed)
        anatomy = sample_anatomy(rng, 512, 512, "AP" if seed % 3 == 0 else "PA", "M")
        previous = sample_scene(rng, anatomy) if seed % 3 == 0 else None
        texts.append(write_report(sample_scene(rng, anatomy), rng, previous=previous).text())
    return texts


def rate(texts: list[str], read: Callable[[str], object]) -> float:
    start = time.perf_counter()
    for text in texts:
        read(text)
    return len(texts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--synthetic", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    corpora = {"IU X-Ray (3,955 real)": iu_texts(), "synthetic": synthetic_texts(args.synthetic)}
    parse_report("No pneumothorax.")  # builds the lexicon outside the timing

    def parse_and_label(text: str) -> object:
        return label_report(parse_report(text))

    print(f"{'corpus':<24} {'reports':>8} {'what':<18} {'reports/s':>10} {'min':>8} {'max':>8}")
    for name, texts in corpora.items():
        for what, read in (("parse", parse_report), ("parse + CheXpert", parse_and_label)):
            rates = [rate(texts, read) for _ in range(args.repeats)]
            print(
                f"{name:<24} {len(texts):>8} {what:<18} {statistics.median(rates):>10.0f} "
                f"{min(rates):>8.0f} {max(rates):>8.0f}"
            )


if __name__ == "__main__":
    main()
