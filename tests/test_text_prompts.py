"""Knowledge prompts: sentence form, the position ablation, dedupe and the inference sets."""

from dataclasses import dataclass

import pytest

from cxrvlp.constants import CHEST_IMAGENOME_REGIONS
from cxrvlp.text.knowledge import load_knowledge_base
from cxrvlp.text.prompts import (
    KnowledgePrompt,
    entity_prompts,
    knowledge_prompt,
    position_prompts,
    prompts_from_triplets,
)


@dataclass(frozen=True)
class FakeTriplet:
    finding: str
    region: str | None
    existence: str
    severity: str | None = None
    laterality: str | None = None


@dataclass(frozen=True)
class StatedTriplet(FakeTriplet):
    position_stated: bool = True


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            dict(
                entity="pleural effusion",
                position="left costophrenic angle",
                exist="present",
                severity="small",
                laterality="left",
            ),
            "small left pleural effusion in the left costophrenic angle: present",
        ),
        (
            dict(entity="pneumothorax", position="right apical zone", exist="absent"),
            "pneumothorax in the right apical zone: absent",
        ),
        (
            dict(
                entity="pneumonia",
                position="right lower lung zone",
                exist="uncertain",
                laterality="right",
            ),
            "right pneumonia in the right lower lung zone: uncertain",
        ),
        (
            dict(
                entity="pulmonary edema",
                position="left lung",
                exist="present",
                severity="moderate",
                laterality="bilateral",
            ),
            "moderate bilateral pulmonary edema in the left lung: present",
        ),
        (
            dict(entity="cardiomegaly", position=None, exist="present", severity="large"),
            "large cardiomegaly: present",
        ),
        (
            dict(
                entity="pleural effusion",
                position="left costophrenic angle",
                exist="present",
                severity="small",
                laterality="left",
                with_position=False,
            ),
            "small left pleural effusion: present",
        ),
        (
            dict(entity="  endotracheal   tube ", position=" carina ", exist="present"),
            "endotracheal tube in the carina: present",
        ),
    ],
)
def test_knowledge_prompt_text(kwargs, expected):
    assert knowledge_prompt(**kwargs) == expected


def test_knowledge_prompt_rejects_bad_exist_and_empty_entity():
    with pytest.raises(ValueError, match="exist must be one of"):
        knowledge_prompt("pneumothorax", "right lung", "yes")
    with pytest.raises(ValueError, match="non-empty entity"):
        knowledge_prompt(" ", "right lung", "present")


REPORT_TRIPLETS = [
    FakeTriplet("pleural effusion", "left costophrenic angle", "present", "small", "left"),
    FakeTriplet("pleural effusion", "left lower lung zone", "present", "small", "left"),
    FakeTriplet("pneumothorax", "right lung", "absent"),
    FakeTriplet("pleural effusion", "left costophrenic angle", "present", "small", "left"),
    FakeTriplet("pneumothorax", "left lung", "absent"),
]


def test_one_prompt_per_finding_names_all_its_regions_in_report_order():
    prompts = prompts_from_triplets(REPORT_TRIPLETS)
    assert [p.text for p in prompts] == [
        "small left pleural effusion in the left costophrenic angle and left lower lung zone: "
        "present",
        "pneumothorax in the right lung and left lung: absent",
    ]
    assert prompts[0] == KnowledgePrompt(
        entity="pleural effusion",
        position="left costophrenic angle and left lower lung zone",
        exist="present",
        text="small left pleural effusion in the left costophrenic angle and left lower lung "
        "zone: present",
        regions=("left costophrenic angle", "left lower lung zone"),
        position_stated=True,
        bare_text="small pleural effusion: present",
    )


def test_prompts_without_position_keep_the_regions_as_targets():
    prompts = prompts_from_triplets(REPORT_TRIPLETS, with_position=False)
    assert [p.text for p in prompts] == [
        "small left pleural effusion: present",
        "pneumothorax: absent",
    ]
    assert all(p.position is None for p in prompts)
    assert [p.exist for p in prompts] == ["present", "absent"]
    assert prompts[1].regions == ("right lung", "left lung")


def test_a_typical_region_is_a_target_but_not_written_into_the_sentence():
    prompts = prompts_from_triplets(
        [
            StatedTriplet("cardiomegaly", "cardiac silhouette", "present", position_stated=False),
            StatedTriplet("pneumothorax", "right apical zone", "present", "small", "right"),
        ]
    )
    assert [p.text for p in prompts] == [
        "cardiomegaly: present",
        "small right pneumothorax in the right apical zone: present",
    ]
    assert [p.position_stated for p in prompts] == [False, True]
    assert prompts[0].regions == ("cardiac silhouette",)
    assert prompts[0].position is None


def test_parser_marks_stated_and_typical_positions():
    from cxrvlp.text.parse import parse_report

    triplets = parse_report(
        "FINDINGS: Small left apical pneumothorax. The heart is enlarged."
    ).triplets
    stated = {(t.finding, t.region): t.position_stated for t in triplets}
    assert stated[("pneumothorax", "left apical zone")] is True
    assert stated[("cardiomegaly", "cardiac silhouette")] is False
    prompts = {p.entity: p for p in prompts_from_triplets(triplets)}
    pneumothorax = "small left pneumothorax in the left apical zone: present"
    assert prompts["pneumothorax"].text == pneumothorax
    assert prompts["cardiomegaly"].text == "cardiomegaly: present"


def test_a_restatement_without_severity_joins_the_more_specific_prompt():
    prompts = prompts_from_triplets(
        [
            StatedTriplet("cardiomegaly", "cardiac silhouette", "present", "small", None, False),
            StatedTriplet("cardiomegaly", "cardiac silhouette", "present", None, None, False),
            StatedTriplet("pneumonia", "right lower lung zone", "present", None, "right"),
            StatedTriplet("pneumonia", "right lung", "present", None, "right", False),
        ]
    )
    assert [p.text for p in prompts] == [
        "small cardiomegaly: present",
        "right pneumonia in the right lower lung zone: present",
    ]
    assert prompts[1].regions == ("right lower lung zone",)


def test_a_typical_mention_elsewhere_keeps_its_own_prompt():
    prompts = prompts_from_triplets(
        [
            StatedTriplet("calcification", "aortic arch", "present"),
            StatedTriplet("calcification", "right lung", "present", position_stated=False),
            StatedTriplet("calcification", "left lung", "present", position_stated=False),
        ]
    )
    assert [(p.text, p.regions, p.position_stated) for p in prompts] == [
        ("calcification in the aortic arch: present", ("aortic arch",), True),
        ("calcification: present", ("right lung", "left lung"), False),
    ]


def test_report_restating_findings_gives_one_prompt_each():
    from cxrvlp.text.parse import parse_report

    report = (
        "FINDINGS: Mild cardiomegaly. Calcified aortic knob. Scattered granulomas. "
        "IMPRESSION: Cardiomegaly."
    )
    prompts = prompts_from_triplets(parse_report(report).triplets)
    assert [p.text for p in prompts] == [
        "small cardiomegaly: present",
        "calcification in the aortic arch: present",
        "calcification: present",
    ]


def test_conflicting_existence_keeps_both_prompts():
    prompts = prompts_from_triplets(
        [
            FakeTriplet("atelectasis", "left lower lung zone", "present"),
            FakeTriplet("atelectasis", "left lower lung zone", "uncertain"),
        ]
    )
    assert [p.exist for p in prompts] == ["present", "uncertain"]


def test_prompts_from_no_triplets_is_empty():
    assert prompts_from_triplets([]) == []


def test_entity_prompts_cover_every_entity_in_kb_order():
    kb = load_knowledge_base()
    prompts = entity_prompts(kb)
    assert [p.entity for p in prompts] == [e.name for e in kb.entities]
    assert len({p.text for p in prompts}) == len(prompts)
    effusion = next(p for p in prompts if p.entity == "pleural effusion")
    assert effusion.text == f"pleural effusion: {kb.entity('pleural effusion').definition}"
    assert effusion.position is None and effusion.exist is None
    assert entity_prompts() == prompts  # default knowledge base, same order every call


def test_position_prompts_follow_detector_region_order():
    kb = load_knowledge_base()
    prompts = position_prompts(kb)
    assert [p.position for p in prompts] == list(CHEST_IMAGENOME_REGIONS)
    assert all(p.entity is None and p.exist is None for p in prompts)
    assert prompts[14].text == f"left costophrenic angle: {kb.position('left costophrenic angle')}"
    assert position_prompts() == prompts
