"""The report parser and CheXpert labeller against the synthetic truth.

The synthetic writer records what every sentence states (``Mention``: finding, existence,
regions). Per report, each finding's existence is its strongest statement, present >
uncertain > absent, on both sides: a finding hedged in the impression but stated in the
findings is present, as a labeller reads the report. A parsed finding the writer does not
state is counted as an error, except the opacity of "opacity ..., consistent with pneumonia":
an opacity whose CheXpert observation the sentence's stated finding already implies is part
of that statement, not another one, and is left out.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from cxrvlp.synth.anatomy import sample_anatomy
from cxrvlp.synth.report import Report, write_report
from cxrvlp.synth.scene import FINDING_TYPES, SAMPLED_FINDINGS, Scene, sample_scene
from cxrvlp.text.chexpert import label_report
from cxrvlp.text.parse import EXISTENCE_RANK, ParsedReport, parse_report, parse_sentence

REPORT_COUNT = 360
MIN_AGREEMENT = 0.98
LUNG_PARTS = (
    "upper lung zone", "mid lung zone", "lower lung zone", "apical zone", "hilar structures",
    "costophrenic angle",
)  # fmt: skip


@pytest.fixture(scope="module")
def reports() -> list[tuple[Report, ParsedReport]]:
    """Default-noise reports; every third one compares with an earlier study."""
    pairs = []
    for seed in range(REPORT_COUNT):
        rng = np.random.default_rng(20_000 + seed)
        view = "AP" if rng.random() < 0.4 else "PA"
        anatomy = sample_anatomy(rng, 512, 512, view, "F" if seed % 2 else "M")
        previous: Scene | None = sample_scene(rng, anatomy) if seed % 3 == 0 else None
        report = write_report(sample_scene(rng, anatomy), rng, previous=previous)
        pairs.append((report, parse_report(report.text())))
    return pairs


def _strongest(pairs) -> dict[str, str]:
    best: dict[str, str] = {}
    for finding, existence in pairs:
        if finding not in best or EXISTENCE_RANK[existence] > EXISTENCE_RANK[best[finding]]:
            best[finding] = existence
    return best


def _read(parsed: ParsedReport, report: Report) -> dict[str, str]:
    """The parser's strongest statement per finding, without the implied opacities."""
    implied = {
        (m.sentence, observation)
        for m in report.mentions
        if m.existence != "absent"  # "no consolidation" implies nothing (as in the labels)
        for observation in FINDING_TYPES[m.finding].chexpert[1:]
    }
    return _strongest(
        (t.finding, t.existence)
        for t in parsed.triplets
        if t.finding in FINDING_TYPES
        and (t.sentence, FINDING_TYPES[t.finding].chexpert[0]) not in implied
    )


def _table(agree: Counter, total: Counter) -> str:
    lines = [f"{'finding':28s} {'agree':>6s} {'pairs':>6s} {'rate':>6s}"]
    for finding in sorted(total):
        lines.append(
            f"{finding:28s} {agree[finding]:6d} {total[finding]:6d} "
            f"{agree[finding] / total[finding]:6.3f}"
        )
    return "\n".join(lines)


def test_reports_cover_every_kind_of_statement(reports):
    existences = Counter(m.existence for report, _ in reports for m in report.mentions)
    assert min(existences[e] for e in ("present", "absent", "uncertain")) >= 30
    findings = {m.finding for report, _ in reports for m in report.mentions}
    assert findings == set(SAMPLED_FINDINGS)
    assert sum("resolution" in r.findings or "removal" in r.findings for r, _ in reports) >= 10


def test_finding_existence_agrees_with_the_writer(reports):
    agree, total = Counter(), Counter()
    errors = []
    for report, parsed in reports:
        truth = _strongest((m.finding, m.existence) for m in report.mentions)
        read = _read(parsed, report)
        for finding in set(truth) | set(read):
            total[finding] += 1
            if truth.get(finding) == read.get(finding):
                agree[finding] += 1
            else:
                errors.append(f"{finding}: writer {truth.get(finding)}, parser {read.get(finding)}")
    rate = sum(agree.values()) / sum(total.values())
    report_text = f"{_table(agree, total)}\noverall {rate:.4f}\n" + "\n".join(errors[:20])
    assert rate >= MIN_AGREEMENT, report_text
    for finding in total:
        assert agree[finding] / total[finding] >= MIN_AGREEMENT, report_text


def test_chexpert_labels_agree_with_the_writer(reports):
    agree, total = Counter(), Counter()
    for report, parsed in reports:
        truth, read = report.chexpert_labels(), label_report(parsed)
        assert list(read) == list(truth)
        for observation, value in truth.items():
            total[observation] += 1
            agree[observation] += read[observation] == value
    rate = sum(agree.values()) / sum(total.values())
    assert rate >= MIN_AGREEMENT, f"{_table(agree, total)}\noverall {rate:.4f}"


def _with_parents(regions: set[str]) -> set[str]:
    """Regions and their lung: "right lung" covers the right zones, and the zones it."""
    covered = set(regions)
    for side in ("right", "left"):
        parts = {f"{side} {part}" for part in LUNG_PARTS}
        if f"{side} lung" in regions:
            covered |= parts
        if regions & parts:
            covered.add(f"{side} lung")
    return covered


def test_regions_of_stated_findings_meet_the_truth(reports):
    hits = stated = 0
    for report, _ in reports:
        for mention in report.mentions:
            if mention.existence == "absent":
                continue
            read = {
                t.region for t in parse_sentence(mention.sentence) if t.finding == mention.finding
            }
            stated += 1
            hits += bool(_with_parents(read) & set(mention.regions))
    assert hits / stated >= 0.95, f"{hits}/{stated} stated findings in a true region"
