"""Question-answer pairs written from the synthetic truth are true for their scene."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from cxrvlp.constants import CHEST_IMAGENOME_REGIONS
from cxrvlp.synth.anatomy import sample_anatomy
from cxrvlp.synth.questions import QuestionAnswer, balance_closed_answers, write_questions
from cxrvlp.synth.scene import FINDING_TYPES, Scene, sample_scene

SCENE_COUNT = 300
VQA_RAD_TYPES = {"PRES", "POS", "ABN", "COUNT", "SIZE", "ATTRIB", "ORGAN", "PLANE", "MODALITY"}
SLAKE_CONTENT = {"Abnormality", "Position", "Quantity", "Size", "Organ", "Modality", "Plane"}
LOCATIONS = {"Lung", "Chest", "Heart", "Mediastinum"}
# Longest names first, so that "pleural effusion" wins over any shorter name inside it.
NAMES = sorted(FINDING_TYPES, key=len, reverse=True)


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    result = []
    for seed in range(SCENE_COUNT):
        rng = np.random.default_rng(seed)
        view = "AP" if seed % 4 == 0 else "PA"
        result.append(sample_scene(rng, sample_anatomy(rng, 512, 512, view, "M")))
    return result


@pytest.fixture(scope="module")
def question_sets(scenes) -> list[list[QuestionAnswer]]:
    return [write_questions(s, np.random.default_rng(20_000 + i)) for i, s in enumerate(scenes)]


def _finding_named(question: str) -> str | None:
    return next((name for name in NAMES if name in question.lower()), None)


def _closed_truth(scene: Scene, question: str) -> bool:
    """The answer a reader of the truth gives to a yes/no question."""
    q = question.lower()
    names = {f.name for f in scene.findings}
    if "heart size normal" in q:
        return "cardiomegaly" not in names
    if "heart enlarged" in q or "cardiomegaly" in q:
        return "cardiomegaly" in names
    if "mediastin" in q:
        return "enlarged cardiomediastinum" in names
    if "support devices" in q or "medical device" in q:
        return any(f.is_device for f in scene.findings)
    if "abnormal findings" in q:
        return any(not f.is_device for f in scene.findings)
    if "normal" in q:
        return scene.is_normal
    view = re.search(r"\b(pa|ap) view", q)
    if view:
        return scene.anatomy.view == view.group(1).upper()
    name = _finding_named(q)
    assert name is not None, f"unrecognised question: {question}"
    finding = scene.finding(name)
    side = re.search(r"on the (right|left) side", q)
    if side:
        return finding is not None and finding.laterality in (side.group(1), "bilateral")
    return finding is not None


def _check_open(scene: Scene, question: str, answer: str) -> None:
    q = question.lower()
    if "support devices" in q:
        assert int(answer) == sum(f.is_device for f in scene.findings)
    elif "view" in q or "projection" in q:
        assert answer == scene.anatomy.view
    elif "modality" in q:
        assert answer == "X-ray"
    elif "organ is enlarged" in q:
        assert answer == "heart" and scene.finding("cardiomegaly") is not None
    elif "nodule or a mass" in q:
        assert scene.finding(answer) is not None
        assert scene.finding("nodule" if answer == "mass" else "mass") is None
    elif "abnormal" in q:
        region = re.search(r"in the (.+)\?", q).group(1)
        owners = [f.name for f in scene.findings if not f.is_device and region in f.regions]
        assert owners == [answer]
    else:
        finding = scene.finding(_finding_named(q))
        assert finding is not None, question
        if "side" in q:
            assert (
                answer
                == {"right": "right", "left": "left", "bilateral": "both"}[finding.laterality]
            )
        elif q.startswith("where"):
            assert answer in CHEST_IMAGENOME_REGIONS and answer in finding.regions
        elif "how severe" in q:
            assert (
                answer
                == {"small": "mild", "moderate": "moderate", "large": "severe"}[finding.severity]
            )
        else:
            assert "size" in q and answer == finding.severity, question


def test_every_answer_is_true_for_the_scene(scenes, question_sets):
    for scene, questions in zip(scenes, question_sets, strict=True):
        for qa in questions:
            if qa.answer_type == "CLOSED":
                assert qa.answer == ("yes" if _closed_truth(scene, qa.question) else "no"), qa
            else:
                assert qa.answer_type == "OPEN"
                _check_open(scene, qa.question, qa.answer)


def test_question_sets_are_distinct_bounded_and_typed(question_sets):
    for questions in question_sets:
        assert 1 <= len(questions) <= 20
        assert len({q.question for q in questions}) == len(questions)
        for qa in questions:
            assert qa.question.endswith("?") and qa.answer
            assert qa.question_type in VQA_RAD_TYPES
            assert qa.content_type in SLAKE_CONTENT
            assert qa.location in LOCATIONS
    assert (
        len(
            write_questions(
                Scene(sample_anatomy(np.random.default_rng(0), 512, 512, "PA", "F"), ()),
                np.random.default_rng(0),
                max_questions=3,
            )
        )
        == 3
    )


def test_mix_of_open_and_balanced_closed_questions(question_sets):
    every = [qa for questions in question_sets for qa in questions]
    answer_types = Counter(qa.answer_type for qa in every)
    assert 0.3 < answer_types["OPEN"] / len(every) < 0.7
    closed = Counter(qa.answer for qa in every if qa.answer_type == "CLOSED")
    assert set(closed) == {"yes", "no"}
    # A scene has few "yes" questions: its first draws split the two answers evenly, the
    # later ones are mostly "no" (the exporters balance those per question text).
    first_drawn = [qa for questions in question_sets for qa in questions[:8]]
    first_closed = Counter(qa.answer for qa in first_drawn if qa.answer_type == "CLOSED")
    assert 0.35 < first_closed["yes"] / first_closed.total() < 0.65
    assert closed["yes"] / closed.total() < 0.35
    kinds = Counter(qa.question_type for qa in every)
    assert {"PRES", "POS", "ABN", "COUNT", "SIZE", "PLANE"} <= set(kinds)
    open_answers = {qa.answer for qa in every if qa.answer_type == "OPEN"}
    assert {"left", "right", "PA", "AP", "0", "1"} <= open_answers
    assert open_answers & set(CHEST_IMAGENOME_REGIONS)
    assert open_answers & set(FINDING_TYPES)


def test_closed_questions_ask_about_present_and_absent_findings(scenes, question_sets):
    asked_present = asked_absent = 0
    for scene, questions in zip(scenes, question_sets, strict=True):
        for qa in questions:
            if qa.question_type == "PRES" and (name := _finding_named(qa.question)):
                if scene.finding(name) is None:
                    asked_absent += 1
                else:
                    asked_present += 1
    assert asked_present > 50 and asked_absent > 50


def test_questions_are_deterministic(scenes):
    for seed, scene in enumerate(scenes[:50]):
        first = write_questions(scene, np.random.default_rng(seed))
        assert first == write_questions(scene, np.random.default_rng(seed))
    variants = {
        tuple(q.question for q in write_questions(scenes[1], np.random.default_rng(seed)))
        for seed in range(10)
    }
    assert len(variants) > 3


def _entry(question: str, answer: str, answer_type: str = "CLOSED", qid: int = 0) -> dict:
    return {"question": question, "answer": answer, "answer_type": answer_type, "qid": qid}


def _text_only_accuracy(entries: list[dict]) -> float:
    """Closed accuracy of answering each question text with its most frequent answer."""
    by_text: dict[str, Counter] = {}
    for entry in entries:
        by_text.setdefault(entry["question"], Counter())[entry["answer"]] += 1
    best = sum(counts.most_common(1)[0][1] for counts in by_text.values())
    return best / sum(counts.total() for counts in by_text.values())


def test_balancing_makes_every_closed_text_a_coin_flip(question_sets):
    closed = [
        {**vars(qa), "qid": qid}
        for qid, qa in enumerate(qa for questions in question_sets for qa in questions)
        if qa.answer_type == "CLOSED"
    ]
    # The scene-by-scene questions give their answers away: "Is there X?" is mostly asked of
    # scenes that have X.
    assert _text_only_accuracy(closed) > 0.6
    balanced = balance_closed_answers(closed, rank=lambda entry: entry["qid"])
    assert _text_only_accuracy(balanced) == 0.5
    assert 0.3 * len(closed) < len(balanced) < len(closed)


def test_balancing_keeps_open_questions_order_and_lowest_ranked():
    entries = [
        _entry("Is there a mass?", "yes", qid=5),
        _entry("Which view is this?", "PA", "OPEN", qid=1),
        _entry("Is there a mass?", "yes", qid=2),
        _entry("Is there a mass?", "no", qid=9),
        _entry("Is there a nodule?", "no", qid=3),  # one answer only: cannot be balanced
        _entry("Is there a mass?", "yes", qid=4),
        _entry("这张图片中有肿块吗?", "是", qid=7),
        _entry("这张图片中有肿块吗?", "否", qid=8),
    ]
    kept = balance_closed_answers(entries, rank=lambda entry: entry["qid"])
    assert [entry["qid"] for entry in kept] == [1, 2, 9, 7, 8]
    assert [
        entry["qid"] for entry in balance_closed_answers(entries, rank=lambda e: -e["qid"])
    ] == [5, 1, 9, 7, 8]


def test_balancing_rejects_a_closed_question_with_three_answers():
    entries = [_entry("Is there a mass?", answer) for answer in ("yes", "no", "maybe")]
    with pytest.raises(ValueError, match=r"Is there a mass.*one of two answers"):
        balance_closed_answers(entries, rank=lambda entry: 0)
