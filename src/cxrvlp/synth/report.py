"""Radiology reports written from a scene's truth, in the style of MIMIC-CXR.

Every statement the writer makes about a finding is recorded as a :class:`Mention`, so that
report parsers and labellers can be checked against what the text really says, and the text
can be checked against the truth. The writer never calls an absent finding present and never
negates a present one; the only departures from the truth are the configured omissions and
hedges (:class:`ReportNoise`), as in real reports.

The writer's words (severity words, how findings are named when negated or resolved, normal
findings sections, indications) are in ``report_vocabulary.json`` beside this module. They
are kept apart from the report parser's lexicon on purpose: the parser is tested against
these reports, and a writer that shared its words would hide the parser's gaps.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from cxrvlp.synth.scene import (
    COVID_NAME,
    FINDING_TYPES,
    ZONE_REGION,
    Finding,
    Scene,
    implied_findings,
)
from cxrvlp.text.chexpert_rules import combine_statements


@dataclass(frozen=True)
class ReportNoise:
    """How far a report strays from the truth, as real reports do."""

    omit_fraction: float = 0.05  # present findings left unmentioned
    hedge_fraction: float = 0.07  # present findings written as uncertain


@dataclass(frozen=True)
class Mention:
    """One statement of the report about one finding."""

    finding: str  # a FINDING_TYPES name
    existence: str  # "present", "absent" or "uncertain"
    sentence: str  # the sentence as written in the report
    section: str  # "findings" or "impression"
    regions: tuple[str, ...]  # Chest ImaGenome regions the sentence refers to


_WRAP_WIDTH = 78


@dataclass(frozen=True)
class Report:
    indication: str
    comparison: str
    findings: str
    impression: str  # numbered impressions put one item a line
    mentions: tuple[Mention, ...]
    omitted: tuple[str, ...]  # present findings the noise left out
    hedged: tuple[str, ...]  # present findings the noise wrote as uncertain
    examination: str = "CHEST (PA AND LAT)"
    technique: str = "Chest PA and lateral"

    def text(self) -> str:
        """The report file as MIMIC-CXR ships it (headings, ``___`` de-identification)."""
        lines = [" " * 33 + "FINAL REPORT"]
        for heading, body in (
            ("EXAMINATION", self.examination),
            ("INDICATION", self.indication),
            ("TECHNIQUE", self.technique),
            ("COMPARISON", self.comparison),
        ):
            lines += [*_wrap(f"{heading}:  {body}"), " "]
        for heading, body in (("FINDINGS", self.findings), ("IMPRESSION", self.impression)):
            lines += [f" {heading}:", " "]
            for paragraph in body.split("\n"):
                lines += _wrap(paragraph)
            lines.append(" ")
        return "\n".join(lines[:-1]) + "\n"

    def chexpert_labels(self) -> dict[str, float | None]:
        """1.0 / 0.0 / -1.0 / None per CheXpert observation, as a labeller reads this report."""
        statements = []
        for mention in self.mentions:
            observations = FINDING_TYPES[mention.finding].chexpert
            # "No consolidation" says nothing about other opacities: a negation only reaches
            # the finding's own observation, an assertion reaches all it implies.
            if mention.existence == "absent":
                observations = observations[:1]
            statements.append((observations, mention.existence))
        return combine_statements(statements)


def _wrap(paragraph: str) -> list[str]:
    # No hyphen breaks: a wrapped "right-\nsided" would no longer read as the sentence written.
    return textwrap.wrap(
        paragraph,
        width=_WRAP_WIDTH,
        initial_indent=" ",
        subsequent_indent=" ",
        break_long_words=False,
        break_on_hyphens=False,
    ) or [" "]


# ---- vocabulary ------------------------------------------------------------------------

VOCABULARY_FILE = Path(__file__).with_name("report_vocabulary.json")
_VOCABULARY = json.loads(VOCABULARY_FILE.read_text(encoding="utf-8"))

# Per finding and severity; a word listed twice is drawn more often.
SEVERITY_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    finding: {severity: tuple(words) for severity, words in by_severity.items()}
    for finding, by_severity in _VOCABULARY["severity_words"].items()
}
SEVERITY_ADVERBS: dict[str, str] = _VOCABULARY["severity_adverbs"]
# How a finding is named when it is negated ("No pleural effusion or pneumothorax.").
NEGATED_NAMES: dict[str, tuple[str, ...]] = {
    finding: tuple(names) for finding, names in _VOCABULARY["negated_names"].items()
}
# How often an absent finding is negated, before the per-report factor.
NEGATION_RATES = {
    "pneumothorax": 0.85,
    "pleural effusion": 0.8,
    "consolidation": 0.55,
    "cardiomegaly": 0.6,
    "pulmonary edema": 0.4,
    "pneumonia": 0.25,
    "lung opacity": 0.2,
    "enlarged cardiomediastinum": 0.35,
    "fracture": 0.25,
    "atelectasis": 0.12,
    "nodule": 0.08,
    "mass": 0.05,
    # COVID-19 pneumonia is never negated: it is present only in its enriched cohort, and a
    # rate here would change the draws of every other report.
}
# How a finding of an earlier study is named once it has gone ("left pleural effusion").
RESOLVED_NAMES: dict[str, str] = _VOCABULARY["resolved_names"]
PLURALS: dict[str, str] = _VOCABULARY["plurals"]
# Regions a negation speaks of: where the finding would have been looked for.
TYPICAL_REGIONS: dict[str, tuple[str, ...]] = {
    "pleural effusion": ("right costophrenic angle", "left costophrenic angle"),
    "pneumothorax": ("right apical zone", "left apical zone"),
    "consolidation": ("right lung", "left lung"),
    "pneumonia": ("right lung", "left lung"),
    "lung opacity": ("right lung", "left lung"),
    "atelectasis": ("right lung", "left lung"),
    "pulmonary edema": ("right lung", "left lung"),
    "nodule": ("right lung", "left lung"),
    "mass": ("right lung", "left lung"),
    "cardiomegaly": ("cardiac silhouette",),
    "enlarged cardiomediastinum": ("upper mediastinum", "mediastinum"),
    "fracture": ("right lung", "left lung", "right clavicle", "left clavicle"),
    "endotracheal tube": ("trachea",),
    "enteric tube": ("abdomen",),
    "central venous catheter": ("svc",),
    "pacemaker": ("right atrium", "cardiac silhouette"),
    COVID_NAME: ("right lower lung zone", "left lower lung zone"),
}
PARENCHYMAL = (
    "consolidation",
    "pneumonia",
    "lung opacity",
    "atelectasis",
    "pulmonary edema",
    "nodule",
    "mass",
    COVID_NAME,
)
# Order of topics in a findings section: lines and tubes, lungs, pleura, heart, bones.
GROUPS = {
    **dict.fromkeys(
        ("endotracheal tube", "enteric tube", "central venous catheter", "pacemaker"), 0
    ),
    **dict.fromkeys(PARENCHYMAL, 1),
    "pleural effusion": 2,
    "pneumothorax": 2,
    "cardiomegaly": 3,
    "enlarged cardiomediastinum": 3,
    "fracture": 4,
}
ORDINALS = {
    1: "first",
    2: "second",
    3: "third",
    4: "fourth",
    5: "fifth",
    6: "sixth",
    7: "seventh",
    8: "eighth",
    9: "ninth",
    10: "tenth",
    11: "eleventh",
    12: "twelfth",
}
# Canonical v from the apex to the hemidiaphragm spans roughly this many centimetres.
LUNG_HEIGHT_CM = 25.0
CARINA_V = 0.35

NORMAL_IMPRESSIONS: tuple[str, ...] = tuple(_VOCABULARY["normal_impressions"])
REASONS: tuple[str, ...] = tuple(_VOCABULARY["indication_reasons"])
QUESTIONS: tuple[str, ...] = tuple(_VOCABULARY["indication_questions"])


# ---- phrases -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Phrase:
    text: str  # lower-case noun phrase, e.g. "small left pleural effusion"
    kind: str  # "count" (takes "a"), "mass" (no article) or "plural"

    @property
    def verb(self) -> str:
        return "are" if self.kind == "plural" else "is"

    @property
    def with_article(self) -> str:
        if self.kind != "count":
            return self.text
        return f"{'an' if self.text[0] in 'aeiou' else 'a'} {self.text}"


@dataclass(frozen=True)
class _Wording:
    phrases: tuple[_Phrase, ...]
    extras: tuple[str, ...] = ()  # whole sentences only a plain assertion may use


_T = TypeVar("_T")


def _pick(rng: np.random.Generator, options: Sequence[_T]) -> _T:
    return options[int(rng.integers(len(options)))]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _zones(finding: Finding, side: str) -> list[str]:
    return [z for z in ("upper", "mid", "lower") if f"{side} {ZONE_REGION[z]}" in finding.regions]


def _join(words: Sequence[str], conjunction: str = "and") -> str:
    if len(words) <= 2:
        return f" {conjunction} ".join(words)
    return ", ".join(words[:-1]) + f", {conjunction} " + words[-1]


def _lesion_location(finding: Finding) -> tuple[list[str], list[str]]:
    """Adjective forms ("right lower lobe") and prepositional forms ("at the right lung base")."""
    if finding.laterality == "bilateral":
        right, left = _zones(finding, "right"), _zones(finding, "left")
        if right == left == ["lower"]:
            return ["bibasilar", "bilateral lower lobe"], [
                "at both lung bases",
                "in both lower lobes",
            ]
        zones = [z for z in ("upper", "mid", "lower") if z in right or z in left]
        return [f"bilateral {_join(zones)} lung"], [f"in both {_join(zones)} lung zones"]
    side = finding.laterality
    zones = _zones(finding, side)
    if len(zones) == 3:
        return [], [f"throughout the {side} lung", f"involving much of the {side} lung"]
    if len(zones) == 2:
        return [], [
            f"in the {side} {_join(zones)} lung zones",
            f"in the {side} {_join(zones)} lung",
        ]
    zone = zones[0]
    if zone == "lower":
        adjectives = [f"{side} basilar", f"{side} lower lobe"]
        if side == "left":
            adjectives.append("retrocardiac")
        return adjectives, [
            f"at the {side} lung base",
            f"in the {side} lower lobe",
            f"in the {side} lower lung zone",
        ]
    if zone == "mid":
        adjectives, preps = (
            [f"{side} mid lung"],
            [f"in the {side} mid lung", f"in the {side} mid lung zone"],
        )
        if side == "right":
            adjectives.append("right middle lobe")
            preps.append("in the right middle lobe")
        return adjectives, preps
    return [f"{side} upper lobe", f"{side} upper lung"], [
        f"in the {side} upper lobe",
        f"in the {side} upper lung zone",
    ]


def _lesion_wording(finding: Finding, sev: str) -> _Wording:
    adjectives, preps = _lesion_location(finding)
    bilateral = finding.laterality == "bilateral"
    phrases: list[_Phrase] = []
    extras: list[str] = []

    def both(noun: str, kind: str) -> None:
        phrases.extend(_Phrase(f"{sev} {adj} {noun}", kind) for adj in adjectives)
        phrases.extend(_Phrase(f"{sev} {noun} {prep}", kind) for prep in preps)

    name = finding.name
    if name == "consolidation":
        both("consolidation", "mass")
        phrases.extend(_Phrase(f"{sev} area of consolidation {prep}", "count") for prep in preps)
    elif name == "pneumonia":
        both("pneumonia", "mass")
        opacity = "airspace opacities" if bilateral else "airspace opacity"
        extras.extend(f"{_cap(sev)} {opacity} {prep}, consistent with pneumonia." for prep in preps)
    elif name == "lung opacity":
        if bilateral:
            both("opacities", "plural")
            both("patchy opacities", "plural")
        else:
            both("opacity", "count")
            phrases.extend(_Phrase(f"{sev} airspace opacity {prep}", "count") for prep in preps)
    elif name == "atelectasis":
        both("atelectasis", "mass")
        if finding.severity == "small":
            phrases.extend(
                _Phrase(f"{sev} plate-like atelectasis {prep}", "mass") for prep in preps
            )
    else:  # nodule, mass
        both(name, "count")
        phrases.extend(_Phrase(f"{sev} pulmonary {name} {prep}", "count") for prep in preps)
    return _Wording(tuple(phrases), tuple(extras))


def _effusion_wording(finding: Finding, sev: str) -> _Wording:
    if finding.laterality == "bilateral":
        phrases = (
            _Phrase(f"{sev} bilateral pleural effusions", "plural"),
            _Phrase(f"{sev} bilateral effusions", "plural"),
            _Phrase(f"{sev} amount of layering pleural fluid bilaterally", "count"),
        )
        angle, blunted = "both costophrenic angles", f"{sev} bilateral pleural effusions"
    else:
        side = finding.laterality
        phrases = (
            _Phrase(f"{sev} {side} pleural effusion", "count"),
            _Phrase(f"{sev} {side} effusion", "count"),
            _Phrase(f"{sev} {side}-sided pleural effusion", "count"),
            _Phrase(f"{sev} amount of {side} pleural fluid", "count"),
        )
        angle, blunted = f"the {side} costophrenic angle", f"a {sev} pleural effusion"
    extras: tuple[str, ...] = ()
    if finding.severity == "small":
        extras = (f"Blunting of {angle}, consistent with {blunted}.",)
    elif finding.severity == "large" and finding.laterality != "bilateral":
        side = finding.laterality
        extras = (f"{_cap(sev)} {side} pleural effusion obscures the {side} hemidiaphragm.",)
    return _Wording(phrases, extras)


def _pneumothorax_wording(finding: Finding, sev: str) -> _Wording:
    side = finding.laterality
    phrases = [
        _Phrase(f"{sev} {side} pneumothorax", "count"),
        _Phrase(f"{sev} {side}-sided pneumothorax", "count"),
    ]
    extras: tuple[str, ...] = ()
    if finding.severity == "small":
        phrases.append(_Phrase(f"{sev} {side} apical pneumothorax", "count"))
    elif finding.severity == "large":
        extras = (
            f"{_cap(sev)} {side} pneumothorax extends from the apex to the {side} lung base.",
        )
    return _Wording(tuple(phrases), extras)


def _edema_wording(finding: Finding, sev: str) -> _Wording:
    kind = "alveolar" if finding.severity == "large" else "interstitial"
    return _Wording(
        (
            _Phrase(f"{sev} pulmonary edema", "mass"),
            _Phrase(f"{sev} {kind} pulmonary edema", "mass"),
        ),
        (
            f"Findings are consistent with {sev} pulmonary edema.",
            f"{_cap(sev)} pulmonary edema with perihilar predominance.",
        ),
    )


def _cardiomegaly_wording(finding: Finding, sev: str) -> _Wording:
    adverb = SEVERITY_ADVERBS[finding.severity]
    return _Wording(
        (
            _Phrase(f"{sev} cardiomegaly", "mass"),
            _Phrase(f"{sev} enlargement of the cardiac silhouette", "mass"),
        ),
        (
            f"The heart is {adverb} enlarged.",
            f"The cardiac silhouette is {adverb} enlarged.",
            f"Heart size is {adverb} enlarged.",
        ),
    )


def _mediastinum_wording(finding: Finding, sev: str) -> _Wording:
    adverb = SEVERITY_ADVERBS[finding.severity]
    return _Wording(
        (
            _Phrase(f"{sev} widening of the mediastinum", "mass"),
            _Phrase(f"{sev} mediastinal widening", "mass"),
            _Phrase(f"{sev} widening of the superior mediastinum", "mass"),
        ),
        (
            f"The mediastinum is {adverb} widened.",
            f"The cardiomediastinal silhouette is {adverb} enlarged.",
            f"The mediastinal contours are {adverb} widened.",
        ),
    )


def _fracture_wording(finding: Finding, sev: str) -> _Wording:
    side = finding.laterality
    if finding.shape.get("target") == "clavicle":
        phrases = (
            _Phrase(f"{sev} {side} clavicular fracture", "count"),
            _Phrase(f"{sev} fracture of the {side} clavicle", "count"),
        )
    else:
        rib = ORDINALS[finding.shape["rib"]]
        phrases = (
            _Phrase(f"{sev} {side} {rib} rib fracture", "count"),
            _Phrase(f"{sev} fracture of the {side} {rib} posterior rib", "count"),
        )
    return _Wording(phrases)


def _covid_wording(finding: Finding, sev: str) -> _Wording:
    """Bilateral peripheral ground glass, basal or mid and basal, named as viral pneumonia."""
    zones = [
        z
        for z in ("upper", "mid", "lower")
        if z in _zones(finding, "right") + _zones(finding, "left")
    ]
    where = "at both lung bases" if zones == ["lower"] else f"in both {_join(zones)} lung zones"
    opacities = f"{sev} bilateral peripheral ground-glass opacities"
    return _Wording(
        (
            _Phrase(opacities, "plural"),
            _Phrase(f"{opacities} {where}", "plural"),
            _Phrase(f"{sev} multifocal peripheral ground-glass opacities {where}", "plural"),
        ),
        (
            f"{_cap(opacities)}, predominantly in the lower lungs, compatible with viral "
            "pneumonia / COVID-19.",
            f"{_cap(sev)} peripheral hazy opacities {where}, consistent with COVID-19 pneumonia.",
        ),
    )


_WORDINGS = {
    COVID_NAME: _covid_wording,
    "pleural effusion": _effusion_wording,
    "pneumothorax": _pneumothorax_wording,
    "pulmonary edema": _edema_wording,
    "cardiomegaly": _cardiomegaly_wording,
    "enlarged cardiomediastinum": _mediastinum_wording,
    "fracture": _fracture_wording,
}


def _wording(finding: Finding, rng: np.random.Generator) -> _Wording:
    sev = _pick(rng, SEVERITY_WORDS[finding.name][finding.severity])
    return _WORDINGS.get(finding.name, _lesion_wording)(finding, sev)


def _device_sentences(finding: Finding, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Findings sentences and impression sentences for a line, tube or pacemaker."""
    shape, side = finding.shape, finding.laterality
    if finding.name == "endotracheal tube":
        cm = f"{round(2 * (CARINA_V - shape['tip_v']) * LUNG_HEIGHT_CM) / 2:g}"
        impressions = [f"Endotracheal tube {cm} cm above the carina."]
        if float(cm) >= 3:
            impressions.append("Endotracheal tube in appropriate position.")
        return [
            f"Endotracheal tube terminates approximately {cm} cm above the carina.",
            f"The endotracheal tube tip is {cm} cm above the carina.",
            f"ET tube in place, with the tip approximately {cm} cm above the carina.",
        ], impressions
    if finding.name == "enteric tube":
        return [
            "Enteric tube courses below the diaphragm, tip in the stomach.",
            "A nasogastric tube extends below the diaphragm with its tip in the stomach.",
            "Orogastric tube terminates in the stomach.",
            "Enteric tube tip projects over the stomach.",
        ], ["Enteric tube terminates in the stomach.", "Nasogastric tube tip in the stomach."]
    if finding.name == "central venous catheter":
        if abs(shape["entry_u"]) < 0.4:
            names = [
                f"{_cap(side)} internal jugular central venous catheter",
                f"{_cap(side)} internal jugular line",
                f"{_cap(side)} IJ central line",
            ]
        else:
            names = [
                f"{_cap(side)} subclavian central venous catheter",
                f"{_cap(side)} subclavian line",
            ]
        if "cavoatrial junction" in finding.regions:
            place = "at the cavoatrial junction"
        else:
            place = f"in the {'mid' if shape['tip_v'] < 0.34 else 'lower'} SVC"
        name = _pick(rng, names)
        return [
            f"{name} terminates {place}.",
            f"{name} tip is {place}.",
            f"{name} ends {place}.",
        ], [
            f"{name} with tip {place}.",
        ]
    leads = "the right atrium and right ventricle"
    return [
        f"{_cap(side)}-sided pacemaker with leads in {leads}.",
        f"{_cap(side)} chest wall dual-chamber pacemaker with leads terminating in {leads}.",
        f"A {side}-sided pacer device is present, with leads in {leads}.",
    ], []


# ---- sentences -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sentence:
    group: int  # topic order in the findings section
    text: str
    mentions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()  # (finding, existence, regions)


def _plain(phrase: _Phrase, rng: np.random.Generator) -> str:
    return _pick(
        rng,
        [
            f"{_cap(phrase.text)}.",
            f"There {phrase.verb} {phrase.with_article}.",
            f"{_cap(phrase.with_article)} {phrase.verb} {_pick(rng, ('seen', 'noted'))}.",
        ],
    )


def _hedged(phrase: _Phrase, rng: np.random.Generator) -> str:
    return _pick(
        rng,
        [
            f"Possible {phrase.text}.",
            f"{_cap(phrase.text)} cannot be excluded.",
            f"{_cap(phrase.with_article)} may be present.",
            f"Findings may represent {phrase.with_article}.",
            f"There {phrase.verb} likely {phrase.with_article}.",
        ],
    )


def _compared(phrase: _Phrase, change: str, rng: np.random.Generator) -> str:
    options = {
        "unchanged": [
            f"No change in the {phrase.text}.",
            f"Unchanged {phrase.text}.",
            f"Stable {phrase.text}.",
            f"The {phrase.text} {phrase.verb} unchanged.",
        ],
        "increased": [
            f"{_cap(phrase.text)}, increased from the prior study.",
            f"{_cap(phrase.text)}, worse than on the prior study.",
        ],
        "decreased": [
            f"{_cap(phrase.text)}, decreased from the prior study.",
            f"{_cap(phrase.text)}, improved since the prior study.",
        ],
        "new": [f"New {phrase.text}.", f"{_cap(phrase.with_article)} {phrase.verb} new."],
    }[change]
    return _pick(rng, options)


def _change(finding: Finding, previous: Scene | None) -> str | None:
    """How a finding compares with the earlier study, when the comparison can be stated."""
    if previous is None:
        return None
    before = previous.finding(finding.name)
    if before is None:
        return "new"
    if before.laterality != finding.laterality:
        return None
    order = {"small": 0, "moderate": 1, "large": 2}
    step = order[finding.severity] - order[before.severity]
    return "unchanged" if step == 0 else "increased" if step > 0 else "decreased"


def _negation(names: Sequence[str], rng: np.random.Generator) -> _Sentence:
    words = _join([_pick(rng, NEGATED_NAMES[n]) for n in names], "or")
    text = _pick(
        rng,
        [
            f"No {words}.",
            f"There is no {words}.",
            f"No {words} is seen.",
            f"No evidence of {words}.",
            f"There is no evidence of {words}.",
        ],
    )
    return _Sentence(
        max(GROUPS[n] for n in names),
        text,
        tuple((n, "absent", TYPICAL_REGIONS[n]) for n in names),
    )


def _absent(name: str) -> tuple[str, str, tuple[str, ...]]:
    return (name, "absent", TYPICAL_REGIONS[name])


def _cardiac_normal(names: set[str], rng: np.random.Generator) -> list[_Sentence]:
    both = {"cardiomegaly", "enlarged cardiomediastinum"} <= names
    if both and rng.random() < 0.5:
        text = _pick(
            rng,
            [
                "The cardiomediastinal silhouette is within normal limits.",
                "Cardiac and mediastinal contours are normal.",
                "The cardiomediastinal silhouette is unremarkable.",
            ],
        )
        return [
            _Sentence(3, text, (_absent("cardiomegaly"), _absent("enlarged cardiomediastinum")))
        ]
    sentences = []
    if "cardiomegaly" in names:
        text = _pick(
            rng,
            [
                "Heart size is normal.",
                "The heart is normal in size.",
                "Normal heart size.",
                "No cardiomegaly.",
            ],
        )
        sentences.append(_Sentence(3, text, (_absent("cardiomegaly"),)))
    if "enlarged cardiomediastinum" in names:
        text = _pick(
            rng,
            [
                "The mediastinal contours are normal.",
                "The mediastinum is not widened.",
                "Mediastinal contours are unremarkable.",
            ],
        )
        sentences.append(_Sentence(3, text, (_absent("enlarged cardiomediastinum"),)))
    return sentences


def _bone_normal(rng: np.random.Generator) -> _Sentence:
    text = _pick(
        rng,
        [
            "No acute osseous abnormality.",
            "No displaced rib fracture is seen.",
            "The osseous structures are intact.",
            "No acute osseous abnormality is seen.",
        ],
    )
    return _Sentence(4, text, (_absent("fracture"),))


# Whole normal findings sections: (sentence, findings it negates).
NORMAL_TEMPLATES: tuple[tuple[tuple[str, tuple[str, ...]], ...], ...] = tuple(
    tuple((line["sentence"], tuple(line["negates"])) for line in template)
    for template in _VOCABULARY["normal_findings"]
)


def _normal_template(rng: np.random.Generator, mentioned: set[str]) -> list[_Sentence]:
    template = _pick(rng, NORMAL_TEMPLATES)
    return [
        _Sentence(GROUPS[negated[0]] if negated else 1, text, tuple(_absent(n) for n in negated))
        for text, negated in template
        if not set(negated) & mentioned
    ]


def _incidental(scene: Scene, rng: np.random.Generator) -> list[_Sentence]:
    """Sentences about no finding of the truth model, as every real report has some."""
    anatomy = scene.anatomy
    sentences = []
    if anatomy.lung_height / anatomy.half_width < 1.38 and rng.random() < 0.7:
        sentences.append(_Sentence(1, _pick(rng, ["Lung volumes are low.", "Low lung volumes."])))
    if abs(math.degrees(anatomy.rotation)) > 3.0 and rng.random() < 0.5:
        sentences.append(_Sentence(0, "The patient is slightly rotated."))
    if scene.finding("pulmonary edema") is None and rng.random() < 0.15:
        sentences.append(_Sentence(1, "Pulmonary vascularity is normal."))
    if rng.random() < 0.08:
        sentences.append(_Sentence(3, "The aorta is tortuous."))
    if rng.random() < 0.1:
        sentences.append(_Sentence(4, "Degenerative changes of the thoracic spine are noted."))
    return sentences


def _order(sentences: list[_Sentence], rng: np.random.Generator) -> list[_Sentence]:
    heart_first = rng.random() < 0.35
    keys = rng.random(len(sentences))

    def key(index: int) -> tuple[float, float]:
        group = sentences[index].group
        return (0.5 if heart_first and group == 3 else group, keys[index])

    return [sentences[i] for i in sorted(range(len(sentences)), key=key)]


# ---- the writer ------------------------------------------------------------------------


def write_report(
    scene: Scene,
    rng: np.random.Generator,
    *,
    previous: Scene | None = None,
    noise: ReportNoise = ReportNoise(),
) -> Report:
    """A MIMIC-CXR style report of ``scene``; ``previous`` is the same patient's earlier study."""
    omitted, hedged = [], []
    for finding in scene.findings:
        draw = rng.random()
        if draw < noise.omit_fraction:
            omitted.append(finding.name)
        elif draw < noise.omit_fraction + noise.hedge_fraction and not finding.is_device:
            hedged.append(finding.name)  # devices are seen or not: nobody hedges a tube

    body: list[_Sentence] = []
    summary: list[_Sentence] = []  # candidate impression items, in findings order
    for finding in scene.findings:
        if finding.name in omitted:
            continue
        if finding.is_device:
            texts, impressions = _device_sentences(finding, rng)
            mention = ((finding.name, "present", finding.regions),)
            body.append(_Sentence(0, _pick(rng, texts), mention))
            if impressions:
                summary.append(_Sentence(0, _pick(rng, impressions), mention))
            continue
        wording = _wording(finding, rng)
        uncertain = finding.name in hedged
        existence = "uncertain" if uncertain else "present"
        mention = ((finding.name, existence, finding.regions),)
        change = None if uncertain else _change(finding, previous)
        if change == "new" and rng.random() < 0.5:
            change = None  # a new finding is often described without saying so
        if uncertain:
            text = _hedged(_pick(rng, wording.phrases), rng)
            short = _hedged(_pick(rng, wording.phrases), rng)
        elif change is not None:
            text = _compared(_pick(rng, wording.phrases), change, rng)
            short = _compared(_pick(rng, wording.phrases), change, rng)
        else:
            text = (
                _pick(rng, wording.extras)
                if wording.extras and rng.random() < 0.4
                else _plain(_pick(rng, wording.phrases), rng)
            )
            short = f"{_cap(_pick(rng, wording.phrases).text)}."
        body.append(_Sentence(GROUPS[finding.name], text, mention))
        summary.append(_Sentence(GROUPS[finding.name], short, mention))

    present = {f.name for f in scene.findings}
    resolved: list[_Sentence] = []
    for before in previous.findings if previous is not None else ():
        if before.name in present or rng.random() < 0.1:
            continue
        sentence = _resolution(before, rng)
        if sentence is not None:
            resolved.append(sentence)
    body += resolved
    mentioned = {m[0] for s in body for m in s.mentions}

    if scene.is_normal:
        body += _normal_template(rng, mentioned)
    else:
        body += _negations(scene, mentioned, rng)
    body += _incidental(scene, rng)
    findings_sentences = _order(body, rng)

    impression_sentences = _impression(scene, summary, resolved, rng)
    mentions = tuple(
        Mention(name, existence, sentence.text, section, regions)
        for section, sentences in (
            ("findings", findings_sentences),
            ("impression", impression_sentences),
        )
        for sentence in sentences
        for name, existence, regions in sentence.mentions
    )
    if len(impression_sentences) > 1 and rng.random() < 0.3:
        impression = "\n".join(f"{i}. {s.text}" for i, s in enumerate(impression_sentences, 1))
    else:
        impression = " ".join(s.text for s in impression_sentences)

    anatomy = scene.anatomy
    portable = anatomy.view == "AP"
    return Report(
        indication=_indication(scene, previous, rng),
        comparison=_pick(rng, ["___.", "Chest radiograph from ___.", "Prior study from ___."])
        if previous is not None
        else _pick(rng, ["None.", "None.", "___"]),
        findings=" ".join(s.text for s in findings_sentences),
        impression=impression,
        mentions=mentions,
        omitted=tuple(omitted),
        hedged=tuple(hedged),
        examination="CHEST (PORTABLE AP)" if portable else "CHEST (PA AND LAT)",
        technique=_pick(
            rng,
            ["Portable AP chest radiograph.", "Single portable AP view of the chest."]
            if portable
            else ["Chest PA and lateral.", "PA and lateral views of the chest."],
        ),
    )


def _resolution(before: Finding, rng: np.random.Generator) -> _Sentence | None:
    """A finding of the earlier study that is gone now (None: a fracture does not vanish)."""
    if before.is_device:
        text = _pick(
            rng, [f"Interval removal of the {before.name}.", f"The {before.name} has been removed."]
        )
        return _Sentence(0, text, (_absent(before.name),))
    if before.name == "fracture":
        return None
    name = RESOLVED_NAMES[before.name]
    if before.laterality == "bilateral" and before.name != "pulmonary edema":
        name = f"bilateral {PLURALS.get(name, name)}"
    elif before.laterality in ("right", "left"):
        name = f"{before.laterality} {name}"
    text = _pick(
        rng,
        [
            f"Interval resolution of the previously seen {name}.",
            f"The previously seen {name} has resolved.",
            f"Interval resolution of {name}.",
        ],
    )
    regions = TYPICAL_REGIONS[before.name]
    if before.laterality in ("right", "left"):
        regions = tuple(r for r in regions if r.startswith(before.laterality)) or regions
    return _Sentence(GROUPS[before.name], text, ((before.name, "absent", regions),))


def _negations(scene: Scene, mentioned: set[str], rng: np.random.Generator) -> list[_Sentence]:
    """Negate a varying random subset of the absent findings, some in shared sentences."""
    present = {f.name for f in scene.findings}
    unsaid = present | mentioned | implied_findings(scene)
    factor = rng.uniform(0.5, 1.3)
    chosen = {
        name
        for name, rate in NEGATION_RATES.items()
        if name not in unsaid and rng.random() < min(1.0, rate * factor)
    }
    sentences = _cardiac_normal(chosen, rng)
    if "fracture" in chosen:
        sentences.append(_bone_normal(rng))
    if not present & set(PARENCHYMAL) and rng.random() < 0.5:
        sentences.append(_Sentence(1, _pick(rng, ["The lungs are clear.", "Lungs are clear."])))
    listed = [n for n in NEGATION_RATES if n in chosen and GROUPS[n] in (1, 2)]
    listed = [listed[i] for i in rng.permutation(len(listed))]
    while listed:
        size = min(len(listed), int(rng.integers(1, 4)))
        sentences.append(_negation(listed[:size], rng))
        listed = listed[size:]
    return sentences


def _impression(
    scene: Scene, summary: list[_Sentence], resolved: list[_Sentence], rng: np.random.Generator
) -> list[_Sentence]:
    findings = [s for s in summary if s.group != 0]
    chosen = [s for s in findings if rng.random() < 0.75]
    if findings and not chosen:
        chosen = [_pick(rng, findings)]
    devices = [s for s in summary if s.group == 0 and rng.random() < 0.3]
    items = chosen + devices + [s for s in resolved if rng.random() < 0.25]
    if not chosen:
        lines = "central venous catheter" in {m[0] for s in devices for m in s.mentions}
        if lines and scene.finding("pneumothorax") is None and rng.random() < 0.5:
            items.append(_Sentence(2, "No pneumothorax.", (_absent("pneumothorax"),)))
        normal = NORMAL_IMPRESSIONS + (("Normal chest radiograph.",) if scene.is_normal else ())
        items.append(_Sentence(1, _pick(rng, normal)))
    return items


def _indication(scene: Scene, previous: Scene | None, rng: np.random.Generator) -> str:
    person = "man" if scene.anatomy.sex == "M" else "woman"
    reasons = list(REASONS)
    if scene.finding("endotracheal tube") is not None:
        reasons += ["intubation", "intubated, check tube position"]
    if scene.finding("central venous catheter") is not None:
        reasons.append("new central line placement")
    if scene.finding("enteric tube") is not None:
        reasons.append("nasogastric tube placement")
    question = _pick(rng, [*QUESTIONS, "interval change"] if previous is not None else QUESTIONS)
    return f"___ year old {person} with {_pick(rng, reasons)}  // {question}"
