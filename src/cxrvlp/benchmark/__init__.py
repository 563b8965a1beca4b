"""`cxrvlp benchmark`: a paper's evaluation protocol as data, run on any data.

:mod:`~cxrvlp.benchmark.protocol` reads protocol and data files, :mod:`~cxrvlp.benchmark.runner`
runs them through the library's functions, :mod:`~cxrvlp.benchmark.report` writes the tables.
"""

from __future__ import annotations

import json
import time
from typing import Any

from cxrvlp.benchmark.protocol import DataSources, Protocol
from cxrvlp.benchmark.runner import Outcome, Setup, collect, run_all


def run_benchmark(
    setup: Setup, protocol: Protocol, jobs: int = 1, progress: bool = True
) -> tuple[dict[str, Any], list[Outcome]]:
    """Run ``protocol`` as ``setup`` says and write OUT/results.json; returns the document."""
    started = time.monotonic()
    setup.out.mkdir(parents=True, exist_ok=True)
    outcomes = run_all(setup, protocol, jobs=jobs, progress=progress)
    document = collect(setup, protocol, outcomes, started)
    (setup.out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    return document, outcomes


__all__ = ["DataSources", "Protocol", "Setup", "run_benchmark"]
