"""The report parser on radiology-style sentences written for this test, with the triplets
each must give: negation scope, uncertainty, laterality, bilateral findings, devices, change,
resolution and removal, lists and double negatives."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from cxrvlp.constants import CHEST_IMAGENOME_REGIONS
from cxrvlp.text.parse import (
    Triplet,
    clean_report,
    parse_report,
    parse_sentence,
    split_sentences,
)

ANY = object()  # the field is not checked


@dataclass(frozen=True)
class Expect:
    existence: str
    regions: tuple[str, ...] | object = ANY  # the exact set of regions
    severity: str | object | None = ANY
    laterality: str | object | None = ANY


# Table shorthand: P, A, U expect a present, absent or uncertain finding (in these regions).
def P(*regions: str, severity=ANY, laterality=ANY) -> Expect:
    return Expect("present", regions or ANY, severity, laterality)


def A(*regions: str, laterality=ANY) -> Expect:
    return Expect("absent", regions or ANY, None, laterality)


def U(*regions: str, severity=ANY, laterality=ANY) -> Expect:
    return Expect("uncertain", regions or ANY, severity, laterality)


CPA = ("right costophrenic angle", "left costophrenic angle")
LOWER = ("right lower lung zone", "left lower lung zone")
APICES = ("right apical zone", "left apical zone")
LUNGS = ("right lung", "left lung")

CASES: list[tuple[str, dict[str, Expect]]] = [
    # ---- a calcified "density" is a granuloma, not an airspace opacity
    ("There is a calcified density in the left mid lung, most likely a calcified granuloma.",
     {"calcification": P(laterality="left")}),
    # ---- negation and its scope
    ("No pneumothorax or pleural effusion.",
     {"pneumothorax": A(*APICES), "pleural effusion": A(*CPA)}),
    ("No focal consolidation, pleural effusion, or pneumothorax.",
     {"consolidation": A(*LUNGS), "pleural effusion": A(), "pneumothorax": A()}),
    ("There is no evidence of pneumothorax; small left pleural effusion is present.",
     {"pneumothorax": A(),
      "pleural effusion": P("left costophrenic angle", severity="small", laterality="left")}),
    ("No evidence of pneumothorax; small left effusion.",
     {"pneumothorax": A(), "pleural effusion": P("left costophrenic angle", severity="small")}),
    ("No pneumothorax, but there is a small right pleural effusion.",
     {"pneumothorax": A(), "pleural effusion": P("right costophrenic angle", severity="small")}),
    ("No pneumothorax, small left effusion.",
     {"pneumothorax": A(), "pleural effusion": P("left costophrenic angle", severity="small")}),
    ("Without evidence of focal airspace consolidation.", {"consolidation": A()}),
    ("The lungs are free of focal consolidation.", {"consolidation": A()}),
    ("Negative for pneumothorax.", {"pneumothorax": A()}),
    ("No definite pleural effusion is identified.", {"pleural effusion": A()}),
    ("Absence of pulmonary edema.", {"pulmonary edema": A()}),
    ("No new focal opacity.", {"lung opacity": A()}),
    ("No new pleural effusion.", {"pleural effusion": A()}),
    ("No new or enlarging pleural effusion.", {"pleural effusion": A()}),
    ("There is no pneumothorax, although a trace left pleural effusion is suspected.",
     {"pneumothorax": A(), "pleural effusion": U("left costophrenic angle", severity="small")}),
    ("No pleural effusion; however, there is moderate cardiomegaly.",
     {"pleural effusion": A(), "cardiomegaly": P("cardiac silhouette", severity="moderate")}),
    ("No pneumothorax after removal of the right chest tube.",
     {"pneumothorax": A(), "chest tube": A("right lung")}),
    ("No pneumonia, effusion, edema, pneumothorax, or mass.",
     {"pneumonia": A(), "pleural effusion": A(), "pulmonary edema": A(), "pneumothorax": A(),
      "mass": A()}),
    ("Lungs are clear without focal consolidation, effusion, or pneumothorax.",
     {"consolidation": A(), "pleural effusion": A(*CPA), "pneumothorax": A()}),
    ("No pleural effusion, pneumothorax, or consolidation; mild cardiomegaly.",
     {"pleural effusion": A(), "pneumothorax": A(), "consolidation": A(),
      "cardiomegaly": P(severity="small")}),
    ("There is no focal airspace opacity to suggest pneumonia.",
     {"lung opacity": A(), "pneumonia": A()}),
    ("Mild pulmonary vascular congestion without frank edema.",
     {"vascular congestion": P(severity="small"), "pulmonary edema": A()}),
    ("Mild degenerative changes of the thoracic spine; no acute fracture.",
     {"fracture": A()}),
    ("No displaced rib fracture.", {"fracture": A()}),
    ("No other rib fractures are seen.", {"fracture": A()}),
    ("A subtle nondisplaced fracture may not be visible on this view.",
     {"fracture": U(severity="small")}),
    # ---- organs read with their qualifier
    ("Heart size is normal.", {"cardiomegaly": A("cardiac silhouette")}),
    ("The heart is not enlarged.", {"cardiomegaly": A()}),
    ("The cardiomediastinal silhouette is within normal limits.",
     {"cardiomegaly": A(), "enlarged cardiomediastinum": A("upper mediastinum", "mediastinum")}),
    ("The mediastinum is not widened.", {"enlarged cardiomediastinum": A()}),
    ("Normal heart size and mediastinal contours.",
     {"cardiomegaly": A(), "enlarged cardiomediastinum": A()}),
    ("Heart size is mildly enlarged.", {"cardiomegaly": P(severity="small")}),
    ("The heart size is at the upper limits of normal.", {"cardiomegaly": U()}),
    ("The heart size is upper limit normal.", {"cardiomegaly": U()}),
    ("Heart size is upper limits normal.", {"cardiomegaly": U()}),
    ("The cardiomediastinal silhouette is stable and unremarkable.",
     {"cardiomegaly": A(), "enlarged cardiomediastinum": A()}),
    ("Heart size is stable and mildly enlarged.", {"cardiomegaly": P(severity="small")}),
    ("The osseous structures are intact.", {"fracture": A()}),
    ("The visible bony structures show no acute abnormality.", {"fracture": A()}),
    ("Heart size and pulmonary vascular engorgement are within normal limits.",
     {"cardiomegaly": A(), "vascular congestion": A()}),
    ("No acute osseous abnormality.", {"fracture": A()}),
    ("Lung volumes are low.", {"poor aeration": P()}),
    # ---- uncertainty
    ("Possible small left lower lobe pneumonia.",
     {"pneumonia": U("left lower lung zone", severity="small", laterality="left")}),
    ("Right basilar atelectasis; pneumonia cannot be excluded.",
     {"atelectasis": P("right lower lung zone"), "pneumonia": U()}),
    ("Findings may represent early pulmonary edema.", {"pulmonary edema": U()}),
    ("Patchy left basilar opacity, likely atelectasis.",
     {"lung opacity": P("left lower lung zone"), "atelectasis": U("left lower lung zone")}),
    ("Questionable small right apical pneumothorax.",
     {"pneumothorax": U("right apical zone", severity="small", laterality="right")}),
    ("Opacity in the right upper lobe is concerning for pneumonia.",
     {"lung opacity": P("right upper lung zone"), "pneumonia": U("right upper lung zone")}),
    ("Increased interstitial markings suggestive of mild interstitial edema.",
     {"interstitial markings": P(), "pulmonary edema": U(severity="small")}),
    ("Blunting of the left costophrenic angle may reflect a small effusion or pleural "
     "thickening.",
     {"costophrenic blunting": P("left costophrenic angle"),
      "pleural effusion": U("left costophrenic angle", severity="small"),
      "pleural thickening": U()}),
    ("Atelectasis versus consolidation at the right base.",
     {"atelectasis": U(),
      "consolidation": U("right lower lung zone", "right costophrenic angle")}),
    ("Cannot exclude a small right pleural effusion.",
     {"pleural effusion": U("right costophrenic angle", severity="small")}),
    ("Probable small bilateral pleural effusions.",
     {"pleural effusion": U(*CPA, severity="small", laterality="bilateral")}),
    ("Borderline cardiomegaly.", {"cardiomegaly": U()}),
    ("Left lower lobe opacity, which may represent atelectasis or pneumonia.",
     {"lung opacity": P("left lower lung zone"), "atelectasis": U("left lower lung zone"),
      "pneumonia": U()}),
    ("Small focal opacity in the left upper lobe, differential diagnosis includes "
     "atelectasis, small infiltrate, scarring.",
     {"lung opacity": P("left upper lung zone", severity="small"), "atelectasis": U(),
      "infiltration": U(), "scarring": U()}),
    # ---- change: still present
    ("No change in the small effusion.", {"pleural effusion": P(severity="small")}),
    ("No change in the small left pleural effusion.",
     {"pleural effusion": P("left costophrenic angle", severity="small")}),
    ("Unchanged moderate cardiomegaly.", {"cardiomegaly": P(severity="moderate")}),
    ("Stable right upper lobe nodule.", {"nodule": P("right upper lung zone")}),
    ("The right pleural effusion is unchanged in size.",
     {"pleural effusion": P("right costophrenic angle")}),
    ("No interval change in the bibasilar atelectasis.", {"atelectasis": P(*LOWER)}),
    ("Slightly increased left lower lobe consolidation.",
     {"consolidation": P("left lower lung zone")}),
    ("Interval decrease in the size of the right pneumothorax.",
     {"pneumothorax": P("right apical zone")}),
    ("New small right pleural effusion.", {"pleural effusion": P(severity="small")}),
    ("Pulmonary edema has improved but persists.", {"pulmonary edema": P()}),
    ("Partially resolved right lower lobe pneumonia.",
     {"pneumonia": P("right lower lung zone")}),
    # ---- resolved and removed
    ("Interval resolution of the left lower lobe pneumonia.",
     {"pneumonia": A("left lower lung zone")}),
    ("The right pneumothorax has resolved.", {"pneumothorax": A("right apical zone")}),
    ("Previously seen bibasilar opacities have resolved.", {"lung opacity": A(*LOWER)}),
    ("The endotracheal tube has been removed.", {"endotracheal tube": A("trachea")}),
    ("Interval removal of the nasogastric tube.", {"enteric tube": A("abdomen")}),
    ("The right chest tube has been removed and there is no pneumothorax.",
     {"chest tube": A("right lung"), "pneumothorax": A()}),
    ("The patient has been extubated.", {"endotracheal tube": A()}),
    ("Right IJ line has been removed.", {"central venous catheter": A()}),
    ("Effusion has resolved, small left apical pneumothorax persists.",
     {"pleural effusion": A(), "pneumothorax": P("left apical zone", severity="small")}),
    # ---- laterality, bilateral findings and locations
    ("Small right pleural effusion.",
     {"pleural effusion": P("right costophrenic angle", severity="small", laterality="right")}),
    ("Moderate left-sided pleural effusion.",
     {"pleural effusion": P("left costophrenic angle", severity="moderate")}),
    ("Bilateral pleural effusions, right greater than left.",
     {"pleural effusion": P(*CPA, laterality="bilateral")}),
    ("Trace bilateral pleural effusions.", {"pleural effusion": P(*CPA, severity="small")}),
    ("Massive right pleural effusion.", {"pleural effusion": P(severity="large")}),
    ("Mild to moderate right pleural effusion.", {"pleural effusion": P(severity="moderate")}),
    ("Bibasilar atelectasis.", {"atelectasis": P(*LOWER, laterality="bilateral")}),
    ("Retrocardiac opacity.", {"lung opacity": P("left lower lung zone", laterality="left")}),
    ("Consolidation in the lingula.", {"consolidation": P("left mid lung zone")}),
    ("Right middle lobe pneumonia.", {"pneumonia": P("right mid lung zone")}),
    ("Left upper lobe mass.", {"mass": P("left upper lung zone")}),
    ("Atelectasis at the left base.",
     {"atelectasis": P("left lower lung zone", "left costophrenic angle")}),
    ("Small right apical pneumothorax.", {"pneumothorax": P("right apical zone")}),
    ("Perihilar haziness consistent with mild pulmonary edema.",
     {"lung opacity": P("right hilar structures", "left hilar structures"),
      "pulmonary edema": P("right hilar structures", "left hilar structures",
                           severity="small")}),
    ("Opacities in both lower lobes.", {"lung opacity": P(*LOWER, laterality="bilateral")}),
    ("Patchy opacities in the left mid and lower lung zones.",
     {"lung opacity": P("left mid lung zone", "left lower lung zone")}),
    ("Mild mediastinal widening.",
     {"enlarged cardiomediastinum": P("upper mediastinum", "mediastinum", severity="small")}),
    ("Nondisplaced fracture of the right seventh posterior rib.",
     {"fracture": P("right lung", laterality="right")}),
    ("Healed left clavicle fracture.", {"fracture": P("left clavicle")}),
    ("Large hiatal hernia.", {"hernia": P(severity="large")}),
    ("Left lower lobe collapse with mediastinal shift to the right.",
     {"collapse": P("left lower lung zone"), "mediastinal shift": P()}),
    ("Severe cardiomegaly.", {"cardiomegaly": P(severity="large")}),
    ("Low lung volumes with bibasilar atelectasis.",
     {"poor aeration": P(), "atelectasis": P(*LOWER)}),
    ("The lungs are hyperinflated, consistent with emphysema.",
     {"hyperinflation": P(*LUNGS), "emphysema": P()}),
    ("Calcified granuloma in the right upper lobe.",
     {"calcification": P("right upper lung zone")}),
    ("Stable calcified left upper lobe nodule.",
     {"calcification": P("left upper lung zone"), "nodule": P("left upper lung zone")}),
    ("Severe T12 compression deformity.", {"deformity": P("spine", severity="large")}),
    ("Small left pleural effusion with adjacent atelectasis.",
     {"pleural effusion": P("left costophrenic angle"), "atelectasis": P()}),
    ("Hydropneumothorax on the right.",
     {"pneumothorax": P("right apical zone"), "pleural effusion": P("right costophrenic angle")}),
    # ---- devices
    ("Endotracheal tube terminates 4.5 cm above the carina.",
     {"endotracheal tube": P("trachea")}),
    ("The enteric tube courses below the diaphragm with the tip in the stomach.",
     {"enteric tube": P("abdomen")}),
    ("Right internal jugular central venous catheter tip in the mid SVC.",
     {"central venous catheter": P("svc", laterality="right")}),
    ("Left PICC line terminates at the cavoatrial junction.",
     {"central venous catheter": P("cavoatrial junction", laterality="left")}),
    ("Left-sided dual-chamber pacemaker with leads in the right atrium and right ventricle.",
     {"pacemaker": P("right atrium", "cardiac silhouette", laterality="left")}),
    ("Median sternotomy wires and mediastinal clips are noted.",
     {"sternotomy wires": P("mediastinum"), "surgical hardware": P("mediastinum")}),
    ("Lines and tubes are unchanged in position.", {"support device": P()}),
    ("The tube tip projects over the lower SVC.", {"support device": P("svc")}),
    ("A right chest tube is in place.", {"chest tube": P("right lung", laterality="right")}),
    ("NG tube tip projects over the stomach; no pneumothorax.",
     {"enteric tube": P("abdomen"), "pneumothorax": A()}),
    ("The tip of the Dobhoff tube is in the duodenum.", {"enteric tube": P("abdomen")}),
    ("Stable coronary artery stent.", {"stent": P()}),
]  # fmt: skip


def _by_finding(triplets: list[Triplet]) -> dict[str, list[Triplet]]:
    grouped: dict[str, list[Triplet]] = {}
    for triplet in triplets:
        grouped.setdefault(triplet.finding, []).append(triplet)
    return grouped


def test_the_table_is_large_and_well_formed():
    assert len(CASES) >= 80
    for _, expected in CASES:
        for expect in expected.values():
            if expect.regions is not ANY:
                assert set(expect.regions) <= set(CHEST_IMAGENOME_REGIONS)


@pytest.mark.parametrize(("sentence", "expected"), CASES, ids=[c[0][:60] for c in CASES])
def test_sentence_triplets(sentence: str, expected: dict[str, Expect]):
    triplets = parse_sentence(sentence)
    found = _by_finding(triplets)
    described = "\n".join(
        f"  {t.finding} | {t.region} | {t.existence} | {t.severity} | {t.laterality}"
        for t in triplets
    )
    assert set(found) == set(expected), f"{sentence!r} gave:\n{described}"
    for finding, expect in expected.items():
        got = found[finding]
        assert {t.existence for t in got} == {expect.existence}, f"{finding}:\n{described}"
        if expect.regions is not ANY:
            assert {t.region for t in got} == set(expect.regions), f"{finding}:\n{described}"
        if expect.severity is not ANY:
            assert {t.severity for t in got} == {expect.severity}, f"{finding}:\n{described}"
        if expect.laterality is not ANY:
            assert {t.laterality for t in got} == {expect.laterality}, f"{finding}:\n{described}"
        assert all(t.sentence == sentence for t in got)


@pytest.mark.parametrize(
    ("sentence", "finding", "stated"),
    [
        # Two words of one finding, the location given to one: the stated reading is kept.
        ("Increased kyphotic curvature of the thoracic spine.", "deformity", True),
        ("Mild L2 wedge deformity.", "deformity", True),
        ("Calcified right midlung nodule.", "nodule", True),
        ("Mild kyphosis.", "deformity", False),
        ("Small right pleural effusion.", "pleural effusion", False),
    ],
)
def test_a_stated_location_is_marked_stated(sentence: str, finding: str, stated: bool):
    triplets = [t for t in parse_sentence(sentence) if t.finding == finding]
    assert triplets and {t.position_stated for t in triplets} == {stated}


def test_one_triplet_per_finding_and_region():
    triplets = parse_sentence("Small left effusion. Moderate left pleural effusion is unchanged.")
    keys = [(t.finding, t.region) for t in triplets]
    assert len(keys) == len(set(keys))


# ---- cleaning and sentence splitting ------------------------------------------------------


def test_clean_report_drops_deidentification_and_normalises_whitespace():
    text = "Comparison with ___.\r\nHeart   size\tXXXX normal .\n\n\n\nNo  effusion."
    assert clean_report(text) == "Comparison with.\nHeart size normal.\n\nNo effusion."


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        ("No effusion. Mild cardiomegaly.", ["No effusion.", "Mild cardiomegaly."]),
        ("A 2.5 cm nodule. No effusion.", ["A 2.5 cm nodule.", "No effusion."]),
        (
            "Atelectasis vs. pneumonia at the left base. Tube tip approx. 3 cm above the carina.",
            [
                "Atelectasis vs. pneumonia at the left base.",
                "Tube tip approx. 3 cm above the carina.",
            ],
        ),
        (
            "1. Small left effusion.\n2. No pneumothorax.",
            ["Small left effusion.", "No pneumothorax."],
        ),
        (
            "1. Small left effusion. 2. No pneumothorax. 3. Tube in place",
            ["Small left effusion.", "No pneumothorax.", "Tube in place"],
        ),
        ("Lungs are clear.No effusion.", ["Lungs are clear.", "No effusion."]),
        ("Heart size normal\n\nNo effusion", ["Heart size normal", "No effusion"]),
        ("Mild edema? Recommend follow-up.", ["Mild edema?", "Recommend follow-up."]),
        ("Interval change. . .", ["Interval change."]),
        (
            "FINDINGS: Small effusion. IMPRESSION: 1. Effusion.",
            ["Small effusion.", "Effusion."],
        ),
    ],
)
def test_split_sentences(text: str, sentences: list[str]):
    assert split_sentences(text) == sentences


def test_parse_report_reads_findings_and_impression_of_a_headed_report():
    text = (
        "EXAMINATION: CHEST (PA AND LAT)\n\nINDICATION: ___ with cough, r/o pneumonia\n\n"
        "FINDINGS:\n\nSmall left pleural effusion. No pneumothorax.\n\n"
        "IMPRESSION:\n\n1. Small left effusion.\n2. No pneumonia."
    )
    parsed = parse_report(text)
    assert set(parsed.sections) == {"findings", "impression"}
    assert [s for _, s in parsed.sentences] == [
        "Small left pleural effusion.",
        "No pneumothorax.",
        "Small left effusion.",
        "No pneumonia.",
    ]
    # The indication's "r/o pneumonia" is not read: only findings and impression are.
    assert parsed.findings() == {
        "pleural effusion": "present",
        "pneumothorax": "absent",
        "pneumonia": "absent",
    }
    assert {t.section for t in parsed.triplets} == {"findings", "impression"}


def test_parse_report_reads_text_without_headings_whole():
    parsed = parse_report("Possible right lower lobe pneumonia.\n\nNo effusion.")
    assert parsed.sections == {"text": "Possible right lower lobe pneumonia.\n\nNo effusion."}
    assert parsed.findings() == {"pneumonia": "uncertain", "pleural effusion": "absent"}
    assert parse_report("").triplets == []
