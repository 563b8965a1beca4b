"""The report parser on all 3,955 real IU X-Ray (Open-i) reports that ship in torchxrayvision.

No report text is copied here: the checks are counts, and agreement with the MeSH terms the
Open-i indexers assigned by hand to each report.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from cxrvlp.constants import CHEST_IMAGENOME_REGIONS
from cxrvlp.data.readers.iu_xray import OpenIReport, OpenIReports
from cxrvlp.text.chexpert import label_report
from cxrvlp.text.parse import EXISTENCES, SEVERITIES, ParsedReport, load_entities, parse_report
from cxrvlp.text.prompt_stats import default_openi_archive, prompt_statistics
from cxrvlp.text.prompts import prompts_from_triplets

IU_REPORT_COUNT = 3955
# Manually assigned MeSH major term -> the entity a report with that term should state.
MESH_ENTITIES = {
    "Cardiomegaly": "cardiomegaly",
    "Pleural Effusion": "pleural effusion",
    "Pulmonary Atelectasis": "atelectasis",
    "Calcified Granuloma": "calcification",
    "Pulmonary Edema": "pulmonary edema",
    "Airspace Disease": "lung opacity",
    "Pneumonia": "pneumonia",
    "Fractures, Bone": "fracture",
    "Hernia, Hiatal": "hernia",
    "Emphysema": "emphysema",
    "Scoliosis": "deformity",
}


def _archive() -> Path:
    path = default_openi_archive()
    if path is None:
        pytest.skip("torchxrayvision, which ships NLMCXR_reports.tgz, is not installed")
    return path


@pytest.fixture(scope="module")
def parsed() -> list[tuple[OpenIReport, ParsedReport]]:
    reports = OpenIReports(_archive())
    assert len(reports) == IU_REPORT_COUNT and not reports.problems
    return [(report, parse_report(report.sections.text)) for report in reports]


def _existence_counts(parsed) -> Counter:
    return Counter(
        (finding, existence)
        for _, result in parsed
        for finding, existence in result.findings().items()
    )


def test_every_report_parses_into_valid_triplets(parsed):
    entities = load_entities()
    regions = set(CHEST_IMAGENOME_REGIONS)
    with_statements = 0
    for report, result in parsed:
        # 28 reports have neither findings nor impression: nothing to read, nothing read.
        assert bool(result.sentences) != report.sections.is_empty, report.report_id
        with_statements += bool(result.triplets)
        for triplet in result.triplets:
            assert triplet.finding in entities
            assert triplet.region in regions
            assert triplet.existence in EXISTENCES
            assert triplet.severity in (None, *SEVERITIES)
            assert triplet.laterality in (None, "right", "left", "bilateral")
            assert triplet.section in ("findings", "impression")
    assert with_statements / len(parsed) >= 0.97


def test_prevalence_is_sane(parsed):
    counts = _existence_counts(parsed)
    summary = "\n".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    # Effusion and cardiomegaly: present in a few percent, negated in most reports.
    assert 100 <= counts[("pleural effusion", "present")] <= 400, summary
    assert counts[("pleural effusion", "absent")] >= 2000, summary
    assert 250 <= counts[("cardiomegaly", "present")] <= 600, summary
    assert counts[("cardiomegaly", "absent")] >= 2000, summary
    # Pneumothorax: rarely present, negated in most reports.
    assert counts[("pneumothorax", "absent")] >= 2000, summary
    assert counts[("pneumothorax", "present")] <= 60, summary
    # Uncertain statements exist, but are the exception.
    uncertain = sum(v for (_, existence), v in counts.items() if existence == "uncertain")
    assert 100 <= uncertain <= 0.1 * sum(counts.values()), summary


def test_findings_agree_with_the_manual_mesh_terms(parsed):
    recall = {}
    for term, finding in MESH_ENTITIES.items():
        tagged = [
            result
            for report, result in parsed
            if any(t.split("/")[0] == term for t in report.mesh_major)
        ]
        stated = sum(r.existence(finding) in ("present", "uncertain") for r in tagged)
        recall[term] = (stated, len(tagged))
    listing = "\n".join(f"{t}: {s}/{n}" for t, (s, n) in recall.items())
    for stated, tagged in recall.values():
        assert tagged >= 40 and stated / tagged >= 0.9, listing


def test_reports_indexed_normal_get_no_finding(parsed):
    normal = [result for report, result in parsed if report.mesh_major == ("normal",)]
    assert len(normal) > 1000
    no_finding = sum(label_report(result)["No Finding"] == 1.0 for result in normal)
    assert no_finding / len(normal) >= 0.93


def test_prompt_statistics_hold(parsed):
    """The knowledge prompts of all reports (docs/results/iu-xray-prompts-2026-12-03.md):
    20,483 prompts, 5.18 a report; 15% of the prompts and 54% of the present ones name a
    position the text states."""
    prompts = [prompts_from_triplets(result.triplets) for _, result in parsed]
    summary = prompt_statistics(prompts)
    assert summary["reports"] == IU_REPORT_COUNT
    assert summary["reports_with_prompts"] / IU_REPORT_COUNT >= 0.98, summary
    per_report = summary["prompts_per_report"]
    assert 4.8 <= per_report["mean"] <= 5.6 and per_report["median"] == 5, summary
    assert per_report["max"] <= 25, summary
    existence = summary["by_existence"]
    assert 4300 <= existence["present"] <= 5300, summary
    assert existence["absent"] >= 13000 and 650 <= existence["uncertain"] <= 1200, summary
    assert 0.13 <= summary["position"]["stated_share"] <= 0.20, summary
    assert 0.50 <= summary["position_present"]["stated_share"] <= 0.65, summary
    top = {row["entity"]: row for row in summary["top_entities"]}
    assert {"cardiomegaly", "pleural effusion", "pneumothorax"} <= set(top), summary
    assert top["calcification"]["stated_share"] >= 0.55, summary
    # A restatement ("Mild cardiomegaly. ... Cardiomegaly.") joins the more specific prompt:
    # no bare "<entity>: <exist>" prompt shares its typical regions with another prompt.
    restated = [
        (number, bare.text)
        for number, report in enumerate(prompts)
        for bare in report
        if bare.text == f"{bare.entity}: {bare.exist}"
        and any(
            other is not bare
            and (other.entity, other.exist, other.regions)
            == (bare.entity, bare.exist, bare.regions)
            for other in report
        )
    ]
    assert restated == []
