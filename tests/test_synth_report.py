"""Reports written from the synthetic truth agree with it, except for the configured noise."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest

from cxrvlp.constants import CHEST_IMAGENOME_REGIONS, CHEXPERT_LABELS
from cxrvlp.synth.anatomy import sample_anatomy
from cxrvlp.synth.report import Mention, Report, ReportNoise, write_report
from cxrvlp.synth.scene import FINDING_TYPES, Scene, sample_scene

SCENE_COUNT = 300
NO_NOISE = ReportNoise(omit_fraction=0.0, hedge_fraction=0.0)
PARENCHYMAL = {
    "consolidation", "pneumonia", "lung opacity", "atelectasis", "pulmonary edema", "nodule",
    "mass",
}  # fmt: skip
# Words of degree a reader takes as each severity (checked as whole words).
SEVERITY_PATTERNS = {
    "small": r"\b(small|trace|tiny|mild|mildly|minimal|subtle|nondisplaced)\b",
    "moderate": r"\b(moderate|moderately)\b|minimally displaced",
    "large": r"\b(large|severe|marked|markedly|extensive|comminuted)\b",
}
BILATERAL_WORDS = {"bilateral", "bilaterally", "bibasilar", "both"}
HEDGE_CUES = ("may", "cannot be excluded", "possible", "likely")
HEADINGS = ("EXAMINATION:", "INDICATION:", "TECHNIQUE:", "COMPARISON:", "FINDINGS:", "IMPRESSION:")


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    result = []
    for seed in range(SCENE_COUNT):
        rng = np.random.default_rng(seed)
        result.append(sample_scene(rng, sample_anatomy(rng, 512, 512, "PA", "M")))
    return result


def _reports(scenes: list[Scene], noise: ReportNoise) -> list[Report]:
    return [
        write_report(scene, np.random.default_rng(10_000 + i), noise=noise)
        for i, scene in enumerate(scenes)
    ]


@pytest.fixture(scope="module")
def clean_reports(scenes) -> list[Report]:
    return _reports(scenes, NO_NOISE)


@pytest.fixture(scope="module")
def noisy_reports(scenes) -> list[Report]:
    return _reports(scenes, ReportNoise())


def _by_finding(report: Report) -> dict[str, set[str]]:
    existences: dict[str, set[str]] = {}
    for mention in report.mentions:
        existences.setdefault(mention.finding, set()).add(mention.existence)
    return existences


def _words(sentence: str) -> set[str]:
    return set(re.findall(r"[a-z]+", sentence.lower()))


def _normalised(text: str) -> str:
    return " ".join(text.split())


def test_noise_free_report_states_every_present_finding_and_nothing_else(scenes, clean_reports):
    for scene, report in zip(scenes, clean_reports, strict=True):
        existences = _by_finding(report)
        assert report.omitted == () and report.hedged == ()
        for finding in scene.findings:
            assert existences.get(finding.name) == {"present"}, (finding.name, report.findings)
            sections = {m.section for m in report.mentions if m.finding == finding.name}
            assert "findings" in sections
        for name, seen in existences.items():
            if scene.finding(name) is None:
                assert seen == {"absent"}, (name, report.findings)


def test_default_noise_only_omits_or_hedges(scenes, noisy_reports):
    present_total = omitted_total = hedged_total = 0
    for scene, report in zip(scenes, noisy_reports, strict=True):
        existences = _by_finding(report)
        assert not set(report.omitted) & set(report.hedged)
        for finding in scene.findings:
            present_total += 1
            if finding.name in report.omitted:
                omitted_total += 1
                assert finding.name not in existences
            elif finding.name in report.hedged:
                hedged_total += 1
                assert existences[finding.name] == {"uncertain"}
                for mention in report.mentions:
                    if mention.finding == finding.name:
                        assert any(cue in mention.sentence.lower() for cue in HEDGE_CUES)
            else:
                assert existences[finding.name] == {"present"}
        for name, seen in existences.items():
            if scene.finding(name) is None:
                assert seen == {"absent"}
    assert 0.01 < omitted_total / present_total < 0.12
    assert 0.02 < hedged_total / present_total < 0.15


def test_mention_sentences_occur_in_their_section_and_in_the_file(noisy_reports):
    for report in noisy_reports:
        text = _normalised(report.text())
        assert report.mentions
        for mention in report.mentions:
            section = report.findings if mention.section == "findings" else report.impression
            assert mention.sentence in section
            assert _normalised(mention.sentence) in text


def test_text_has_mimic_layout(noisy_reports):
    for report in noisy_reports:
        text = report.text()
        lines = text.splitlines()
        assert lines[0].strip() == "FINAL REPORT"
        positions = [text.index(f"\n {heading}") for heading in HEADINGS]
        assert positions == sorted(positions)
        assert all(line.startswith(" ") and len(line) <= 78 for line in lines[1:])
        assert "___" in report.indication and "___" in text
        assert report.findings.strip() and report.impression.strip()
        assert _normalised(report.findings) in _normalised(text)


def test_reports_are_deterministic(scenes):
    for seed, scene in enumerate(scenes[:60]):
        first = write_report(scene, np.random.default_rng(seed))
        second = write_report(scene, np.random.default_rng(seed))
        assert first == second and first.text() == second.text()
    texts = {write_report(scenes[0], np.random.default_rng(seed)).text() for seed in range(20)}
    assert len(texts) > 5


def test_chexpert_labels_match_truth_on_noise_free_reports(scenes, clean_reports):
    for scene, report in zip(scenes, clean_reports, strict=True):
        labels = report.chexpert_labels()
        assert set(labels) == set(CHEXPERT_LABELS)
        implied = {obs for f in scene.findings for obs in FINDING_TYPES[f.name].chexpert}
        for observation in implied:
            assert labels[observation] == 1.0, (observation, report.findings)
        for observation, value in labels.items():
            if observation not in implied and observation != "No Finding":
                assert value in (0.0, None), (observation, value, report.findings)
        pathologic = any(not f.is_device for f in scene.findings)
        assert labels["No Finding"] == (None if pathologic else 1.0)
        if scene.finding("pleural effusion") is not None:
            assert labels["Pleural Effusion"] == 1.0


def test_chexpert_labels_rank_positive_over_uncertain_over_negative():
    def mention(finding: str, existence: str) -> Mention:
        return Mention(finding, existence, "sentence.", "findings", ("right lung",))

    report = Report(
        "", "", "", "",
        (mention("pneumonia", "uncertain"), mention("consolidation", "present"),
         mention("lung opacity", "absent"), mention("pneumothorax", "absent"),
         mention("atelectasis", "absent"), mention("atelectasis", "uncertain")),
        (), (),
    )  # fmt: skip
    labels = report.chexpert_labels()
    assert labels["Lung Opacity"] == 1.0  # asserted by the consolidation
    assert labels["Consolidation"] == 1.0
    assert labels["Pneumonia"] == -1.0
    assert labels["Atelectasis"] == -1.0
    assert labels["Pneumothorax"] == 0.0
    assert labels["Edema"] is None
    assert labels["No Finding"] is None

    devices_only = replace(report, mentions=(mention("endotracheal tube", "present"),))
    labels = devices_only.chexpert_labels()
    assert labels["Support Devices"] == 1.0 and labels["No Finding"] == 1.0


def test_laterality_and_severity_words_match_truth(scenes, noisy_reports):
    checked = 0
    for scene, report in zip(scenes, noisy_reports, strict=True):
        for mention in report.mentions:
            finding = scene.finding(mention.finding)
            if mention.existence == "absent" or finding.is_device:
                continue
            sentence, words = mention.sentence.lower(), _words(mention.sentence)
            severities = {s for s, p in SEVERITY_PATTERNS.items() if re.search(p, sentence)}
            assert severities <= {finding.severity}, (finding.severity, sentence)
            if mention.section == "findings":
                assert severities == {finding.severity}, (finding.severity, sentence)
            side = finding.laterality
            if side == "right":
                assert "right" in words and not words & {"left", "retrocardiac"}, sentence
            elif side == "left":
                assert words & {"left", "retrocardiac"} and "right" not in words, sentence
            elif side == "bilateral" and finding.name != "pulmonary edema":
                assert words & BILATERAL_WORDS and not words & {"right", "left"}, sentence
            checked += 1
    assert checked > 300


def test_location_words_follow_the_regions(scenes, clean_reports):
    seen_bibasilar = seen_retrocardiac = False
    for scene, report in zip(scenes, clean_reports, strict=True):
        for mention in report.mentions:
            sentence = mention.sentence.lower()
            finding = scene.finding(mention.finding)
            if mention.existence == "absent" or finding.is_device:
                continue
            if "bibasilar" in sentence or "both lung bases" in sentence:
                seen_bibasilar = True
                assert set(finding.regions) == {"right lower lung zone", "left lower lung zone"}
            if "retrocardiac" in sentence:
                seen_retrocardiac = True
                assert finding.regions == ("left lower lung zone",)
            for zone in ("upper", "mid", "lower"):
                if f"{zone} lobe" in sentence or f"{zone} lung zone" in sentence:
                    assert any(zone in region for region in finding.regions), sentence
            if "apical" in sentence:
                assert any("apical" in region for region in finding.regions), sentence
    assert seen_bibasilar and seen_retrocardiac


def test_devices_are_described_with_their_positions(scenes, clean_reports):
    seen = set()
    for scene, report in zip(scenes, clean_reports, strict=True):
        for mention in report.mentions:
            finding = scene.finding(mention.finding)
            if finding is None or not finding.is_device or mention.section != "findings":
                continue
            seen.add(finding.name)
            sentence = mention.sentence.lower()
            if finding.name == "endotracheal tube":
                cm = float(re.search(r"(\d+(?:\.5)?) cm above the carina", sentence).group(1))
                # The carina lies at v = 0.35; the apex-to-diaphragm span is about 25 cm.
                assert abs(cm - (0.35 - finding.shape["tip_v"]) * 25.0) <= 0.25
            elif finding.name == "enteric tube":
                assert "stomach" in sentence
            elif finding.name == "central venous catheter":
                tip_at_junction = "cavoatrial junction" in finding.regions
                assert ("cavoatrial junction" in sentence) == tip_at_junction
                assert ("svc" in sentence) != tip_at_junction
                assert sentence.startswith(finding.laterality)
            else:
                assert re.search(rf"\b{finding.laterality}(-sided| chest)", sentence)
                assert "right atrium" in sentence and "right ventricle" in sentence
    assert seen == {"endotracheal tube", "enteric tube", "central venous catheter", "pacemaker"}


def test_mention_regions_are_truth_or_typical_chest_imagenome_regions(scenes, noisy_reports):
    for scene, report in zip(scenes, noisy_reports, strict=True):
        for mention in report.mentions:
            assert mention.regions and set(mention.regions) <= set(CHEST_IMAGENOME_REGIONS)
            if mention.existence != "absent":
                assert mention.regions == scene.finding(mention.finding).regions


def test_normal_statements_are_made_only_when_true(scenes, noisy_reports):
    normal_scenes = 0
    for scene, report in zip(scenes, noisy_reports, strict=True):
        findings = report.findings.lower()
        names = {f.name for f in scene.findings}
        if "lungs are clear" in findings or "clear lungs" in findings:
            assert not names & PARENCHYMAL
        if re.search(r"heart size is normal|normal heart size|heart is normal in size", findings):
            assert "cardiomegaly" not in names
        if (
            "no acute osseous abnormality" in findings
            or "osseous structures are intact" in findings
        ):
            assert "fracture" not in names
        if scene.is_normal:
            normal_scenes += 1
            labels = report.chexpert_labels()
            assert labels.pop("No Finding") == 1.0
            assert set(labels.values()) <= {0.0, None}
            assert report.impression.startswith(("No acute", "No radiographic", "Normal"))
    assert normal_scenes > 50


def test_negations_vary_and_sometimes_share_a_sentence(noisy_reports):
    negated_sets = set()
    shared = 0
    for report in noisy_reports:
        negated = [m for m in report.mentions if m.existence == "absent"]
        negated_sets.add(frozenset(m.finding for m in negated))
        sentences = [m.sentence for m in negated]
        shared += any(sentences.count(s) > 1 for s in sentences)
    assert len(negated_sets) > 40
    assert shared > 30


def test_comparison_with_the_previous_study(scenes):
    unchanged = resolved = resolvable = changed = 0
    abnormal = [s for s in scenes if any(not f.is_device for f in s.findings)][:80]
    for i, scene in enumerate(abnormal):
        rng = np.random.default_rng(i)
        report = write_report(scene, rng, previous=scene, noise=NO_NOISE)
        assert report.comparison not in ("None.", "")
        for finding in scene.findings:
            if finding.is_device:
                continue
            sentences = [m.sentence.lower() for m in report.mentions if m.finding == finding.name]
            assert any(re.search(r"unchanged|no change|stable", s) for s in sentences)
            unchanged += 1

        gone = next(f for f in scene.findings if not f.is_device)
        report = write_report(scene.without(gone.name), rng, previous=scene, noise=NO_NOISE)
        mentions = [m for m in report.mentions if m.finding == gone.name]
        assert all(m.existence == "absent" for m in mentions)
        if gone.name != "fracture":  # a fracture does not vanish: nothing to say
            resolvable += 1
            resolved += any("resol" in m.sentence for m in mentions)

        order = ("small", "moderate", "large")
        worse = order[(order.index(gone.severity) + 1) % 3]
        earlier = Scene(scene.base_anatomy, (replace(gone, severity=worse),))
        current = Scene(scene.base_anatomy, (gone,))
        report = write_report(current, rng, previous=earlier, noise=NO_NOISE)
        expected = "decreased|improved" if worse != "small" else "increased|worse"
        sentences = [m.sentence for m in report.mentions if m.finding == gone.name]
        assert all(m.existence == "present" for m in report.mentions if m.finding == gone.name)
        changed += any(re.search(expected, s) for s in sentences)
    assert unchanged > 80
    assert resolved > 0.75 * resolvable
    assert changed == len(abnormal)


def test_indication_and_technique_follow_the_patient(scenes):
    rng = np.random.default_rng(3)
    portable_woman = Scene(sample_anatomy(rng, 512, 512, "AP", "F"), ())
    report = write_report(portable_woman, rng)
    assert "woman" in report.indication and "PORTABLE AP" in report.examination
    assert "AP" in report.technique
    report = write_report(scenes[0], rng)
    assert " man " in report.indication and report.examination == "CHEST (PA AND LAT)"
