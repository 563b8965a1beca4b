"""Visual question-answer pairs written from a scene's truth (VQA-RAD and SLAKE styles).

Question types are VQA-RAD's codes (PRES, POS, ABN, COUNT, SIZE, ATTRIB, ORGAN, PLANE,
MODALITY), content types SLAKE's (Abnormality, Position, Quantity, Size, Organ, Modality,
Plane). Every answer is true for the scene; closed questions are drawn half "yes", half "no"
where the scene allows it. The exporters then balance each split's closed questions per question
text (`balance_closed_answers`), as VQA v2 balanced its answers, so that no question text tells
its own answer and a model must look at the image to beat chance on them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from cxrvlp.synth.scene import (
    COVID_NAME,
    DEVICE_NAMES,
    FINDING_TYPES,
    SAMPLED_FINDINGS,
    Scene,
    implied_findings,
)


@dataclass(frozen=True)
class QuestionAnswer:
    question: str
    answer: str
    answer_type: str  # "CLOSED" (yes/no) or "OPEN"
    question_type: str  # VQA-RAD's: PRES, POS, ABN, COUNT, SIZE, ORGAN, ...
    content_type: str  # SLAKE's: Abnormality, Position, Quantity, Organ, Size, ...
    location: str  # SLAKE's body location: "Lung", "Chest", "Heart", ...


# Findings named without an article ("Is there atelectasis?").
MASS_NOUNS = {
    "consolidation",
    "pneumonia",
    "lung opacity",
    "atelectasis",
    "pulmonary edema",
    COVID_NAME,
}
LATERAL = (
    "pleural effusion",
    "pneumothorax",
    "consolidation",
    "pneumonia",
    "lung opacity",
    "atelectasis",
    "nodule",
    "mass",
    "fracture",
)
LOCATIONS = {
    **dict.fromkeys(LATERAL, "Lung"),
    "pulmonary edema": "Lung",
    COVID_NAME: "Lung",
    "fracture": "Chest",
    "cardiomegaly": "Heart",
    "enlarged cardiomediastinum": "Mediastinum",
    **dict.fromkeys(DEVICE_NAMES, "Chest"),
}
# Answers to "How large / how severe is ...?": findings graded in words of degree.
DEGREE_FINDINGS = {"pulmonary edema", "cardiomegaly", "enlarged cardiomediastinum", COVID_NAME}
DEGREE_WORDS = {"small": "mild", "moderate": "moderate", "large": "severe"}
SIDE_ANSWERS = {"right": "right", "left": "left", "bilateral": "both"}


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _named(name: str) -> str:
    if name in MASS_NOUNS:
        return name
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def _region_location(region: str) -> str:
    if region == "cardiac silhouette" or region == "right atrium":
        return "Heart"
    if "mediastinum" in region or region in ("svc", "aortic arch", "trachea", "carina"):
        return "Mediastinum"
    if "clavicle" in region or region in ("spine", "abdomen"):
        return "Chest"
    return "Lung"


def _closed(scene: Scene, rng: np.random.Generator) -> list[QuestionAnswer]:
    anatomy = scene.anatomy
    questions = []

    def ask(question: str, answer: bool, kind: str, content: str, location: str) -> None:
        questions.append(
            QuestionAnswer(question, _yes_no(answer), "CLOSED", kind, content, location)
        )

    implied = implied_findings(scene)
    for name in FINDING_TYPES:
        present = scene.finding(name) is not None
        if not present and (name not in SAMPLED_FINDINGS or name in implied):
            # Findings only enriched cohorts have are asked about where present: a scene
            # without them draws the same questions as before they existed.
            continue
        if name == "cardiomegaly":
            if rng.random() < 0.5:
                ask("Is the heart size normal?", not present, "SIZE", "Size", "Heart")
            else:
                question = _pick(rng, ["Is the heart enlarged?", "Is there cardiomegaly?"])
                ask(question, present, "SIZE", "Size", "Heart")
            continue
        if name == "enlarged cardiomediastinum":
            question = _pick(
                rng,
                ["Is the mediastinum widened?", "Is the cardiomediastinal silhouette enlarged?"],
            )
            ask(question, present, "SIZE", "Size", "Mediastinum")
            continue
        template = _pick(
            rng, ["Is there {}?", "Does this image show {}?", "Is there evidence of {}?"]
        )
        ask(template.format(_named(name)), present, "PRES", "Abnormality", LOCATIONS[name])

    for name in LATERAL:
        if name in implied:
            continue
        finding = scene.finding(name)
        for side in ("right", "left"):
            # Ask about the scene's own findings and their other side: the hard negatives.
            if finding is None and rng.random() < 0.8:
                continue
            answer = finding is not None and finding.laterality in (side, "bilateral")
            question = f"Is there {_named(name)} on the {side} side?"
            ask(question, answer, "POS", "Position", LOCATIONS[name])
        if finding is not None and finding.laterality in ("right", "left"):
            side = _pick(rng, ["right", "left"])
            question = f"Is the {name} on the {side} side?"
            ask(question, finding.laterality == side, "POS", "Position", LOCATIONS[name])

    abnormal = [f for f in scene.findings if not f.is_device]
    # A study with only a tube in it is neither clearly "normal" nor "abnormal": not asked.
    if scene.is_normal or abnormal:
        if rng.random() < 0.5:
            question = _pick(rng, ["Is this image normal?", "Is this chest X-ray normal?"])
            ask(question, scene.is_normal, "ABN", "Abnormality", "Chest")
        else:
            question = "Are there any abnormal findings in this image?"
            ask(question, bool(abnormal), "ABN", "Abnormality", "Chest")
    devices = any(f.is_device for f in scene.findings)
    question = _pick(rng, ["Are there any support devices?", "Is there any medical device?"])
    ask(question, devices, "PRES", "Abnormality", "Chest")
    view = _pick(rng, ["PA", "AP"])
    ask(
        f"Is this {'a' if view == 'PA' else 'an'} {view} view?",
        anatomy.view == view,
        "PLANE",
        "Plane",
        "Chest",
    )
    return questions


def _open(scene: Scene, rng: np.random.Generator) -> list[QuestionAnswer]:
    questions = []

    def ask(question: str, answer: str, kind: str, content: str, location: str) -> None:
        questions.append(QuestionAnswer(question, answer, "OPEN", kind, content, location))

    for finding in scene.findings:
        name, location = finding.name, LOCATIONS[finding.name]
        if name in LATERAL or name == "pacemaker":
            question = _pick(
                rng, [f"Which side is the {name} on?", f"On which side is the {name}?"]
            )
            ask(question, SIDE_ANSWERS[finding.laterality], "POS", "Position", location)
        if name in LATERAL and len(finding.regions) == 1:
            question = _pick(rng, [f"Where is the {name}?", f"Where is the {name} located?"])
            ask(question, finding.regions[0], "POS", "Position", location)
        if name == "central venous catheter":
            question = "Where does the tip of the central venous catheter lie?"
            ask(question, finding.regions[0], "POS", "Position", "Mediastinum")
        if finding.severity is not None and name != "fracture":
            if name in DEGREE_FINDINGS:
                answer = DEGREE_WORDS[finding.severity]
                ask(f"How severe is the {name}?", answer, "SIZE", "Size", location)
            else:
                question = f"What is the size of the {name}?"
                ask(question, finding.severity, "SIZE", "Size", location)

    abnormal = [f for f in scene.findings if not f.is_device]
    regions = [region for f in abnormal for region in f.regions]
    for region in dict.fromkeys(regions):
        if regions.count(region) == 1:
            owner = next(f for f in abnormal if region in f.regions)
            question = _pick(
                rng, [f"What abnormality is in the {region}?", f"What is abnormal in the {region}?"]
            )
            ask(question, owner.name, "ABN", "Abnormality", _region_location(region))

    lesions = [f.name for f in abnormal if f.name in ("nodule", "mass")]
    if len(lesions) == 1:
        ask("Is the lung lesion a nodule or a mass?", lesions[0], "ATTRIB", "Abnormality", "Lung")
    names = {f.name for f in scene.findings}
    if "cardiomegaly" in names and "enlarged cardiomediastinum" not in names:
        ask("Which organ is enlarged?", "heart", "ORGAN", "Organ", "Heart")
    count = sum(f.is_device for f in scene.findings)
    question = _pick(
        rng, ["How many support devices are there?", "How many support devices are visible?"]
    )
    ask(question, str(count), "COUNT", "Quantity", "Chest")
    question = _pick(rng, ["Which view is this?", "What is the projection of this radiograph?"])
    ask(question, scene.anatomy.view, "PLANE", "Plane", "Chest")
    if rng.random() < 0.4:  # every answer is the same: keep it from crowding the others out
        ask("What imaging modality is used?", "X-ray", "MODALITY", "Modality", "Chest")
    return questions


def write_questions(
    scene: Scene, rng: np.random.Generator, max_questions: int = 20
) -> list[QuestionAnswer]:
    """Up to ``max_questions`` distinct questions, about half open and half closed.

    The default leaves about 11 questions an image once the exporters have balanced the closed
    answers, as many as the real sets ask (VQA-RAD 3,515 on 315 images, SLAKE's English half
    about 7,000 on 642), so a 1 % label fraction of a cohort of their size holds some 30
    questions rather than a dozen.
    """
    closed = _closed(scene, rng)
    pools = {
        "yes": [q for q in closed if q.answer == "yes"],
        "no": [q for q in closed if q.answer == "no"],
        "open": _open(scene, rng),
    }
    for key, pool in pools.items():
        pools[key] = [pool[i] for i in rng.permutation(len(pool))]
    chosen: list[QuestionAnswer] = []
    while len(chosen) < max_questions and any(pools.values()):
        wanted = "open" if rng.random() < 0.5 else _pick(rng, ["yes", "no"])
        key = wanted if pools[wanted] else next(k for k, pool in pools.items() if pool)
        chosen.append(pools[key].pop())
    return chosen


def balance_closed_answers(entries: list[dict], rank: Callable[[dict], int]) -> list[dict]:
    """``entries`` (dicts with "question", "answer", "answer_type") less the closed questions
    needed to make each closed question text take both its answers equally often.

    A scene asks about its own findings more often than a rare finding is present, so without
    this a question such as "Is there a pneumothorax?" is mostly answered "yes" and the text
    alone gives the answer. A text seen with one answer only is dropped. Of each text's majority
    answer the entries of lowest ``rank`` stay (a hash of the entry, so which stay does not
    depend on the order of the studies). Open questions and the order of the kept entries are
    unchanged. Works on any language's yes/no pair.
    """
    positions: defaultdict[str, defaultdict[str, list[int]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for position, entry in enumerate(entries):
        if entry["answer_type"] == "CLOSED":
            positions[entry["question"]][entry["answer"]].append(position)
    dropped: set[int] = set()
    for question, by_answer in positions.items():
        if len(by_answer) > 2:
            raise ValueError(
                f"closed question {question!r} has answers {sorted(by_answer)}: a closed "
                "question takes one of two answers"
            )
        kept = min(map(len, by_answer.values())) if len(by_answer) == 2 else 0
        for answered in by_answer.values():
            dropped.update(sorted(answered, key=lambda p: rank(entries[p]))[kept:])
    return [entry for position, entry in enumerate(entries) if position not in dropped]
