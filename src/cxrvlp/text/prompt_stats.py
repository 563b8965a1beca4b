"""How many knowledge prompts a report corpus gives, and how many name a stated position.

A prompt's position is "stated" when the report names a location for its finding, and
"typical" when the grounding target is the entity's typical regions from the knowledge base;
the share of stated positions measures how much location the prompts carry.
"""

from __future__ import annotations

import importlib.util
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from cxrvlp.text.parse import parse_report
from cxrvlp.text.prompts import EXISTENCE_VALUES, KnowledgePrompt, prompts_from_triplets

TOP_ENTITIES = 10


def default_openi_archive() -> Path | None:
    """The IU X-Ray (Open-i) report archive that ships with torchxrayvision, without importing
    it; None when the package or the file is missing."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "data" / "NLMCXR_reports.tgz"
    return path if path.is_file() else None


def report_prompts(text: str) -> list[KnowledgePrompt]:
    """The knowledge prompts of one report's text, as pre-training builds them."""
    return prompts_from_triplets(parse_report(text).triplets)


def _position_counts(prompts: Sequence[KnowledgePrompt]) -> dict:
    stated = sum(p.position_stated for p in prompts)
    return {
        "stated": stated,
        "typical": len(prompts) - stated,
        "stated_share": round(stated / len(prompts), 4) if prompts else 0.0,
    }


def prompt_statistics(
    reports: Iterable[Sequence[KnowledgePrompt]], top: int = TOP_ENTITIES
) -> dict:
    """Summary of the prompts of a corpus, given each report's prompts (empty lists count)."""
    per_report = [list(prompts) for prompts in reports]
    prompts = [p for report in per_report for p in report]
    counts = [len(report) for report in per_report]
    by_entity = Counter(p.entity for p in prompts)
    return {
        "reports": len(per_report),
        "reports_with_prompts": sum(count > 0 for count in counts),
        "prompts": len(prompts),
        "prompts_per_report": {
            "mean": round(statistics.fmean(counts), 3) if counts else 0.0,
            "median": statistics.median(counts) if counts else 0,
            "max": max(counts, default=0),
        },
        "by_existence": {e: sum(p.exist == e for p in prompts) for e in EXISTENCE_VALUES},
        "position": _position_counts(prompts),
        "position_present": _position_counts([p for p in prompts if p.exist == "present"]),
        "top_entities": [
            {
                "entity": entity,
                "prompts": count,
                **_position_counts([p for p in prompts if p.entity == entity]),
            }
            for entity, count in by_entity.most_common(top)
        ],
    }
