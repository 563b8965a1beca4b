"""Knowledge prompts of GK-MVLP: sentences built from {entity, position, exist}.

In pre-training the prompts come from a report's triplets, e.g. "small left pleural effusion in
the left costophrenic angle: present". At inference there is no report, so the model gets the
report-independent sets instead: one prompt per entity ("pleural effusion: <definition>") and
one per Chest ImaGenome region ("left costophrenic angle: <position sentence>").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from cxrvlp.constants import CHEST_IMAGENOME_REGIONS
from cxrvlp.text.knowledge import KnowledgeBase, load_knowledge_base

EXISTENCE_VALUES: tuple[str, ...] = ("present", "absent", "uncertain")


class TripletLike(Protocol):
    """What the prompt builder reads from a report triplet (e.g. ``cxrvlp.text.parse``'s);
    a triplet without ``position_stated`` counts as stating its region."""

    @property
    def finding(self) -> str: ...

    @property
    def region(self) -> str | None: ...

    @property
    def existence(self) -> str: ...

    @property
    def severity(self) -> str | None: ...

    @property
    def laterality(self) -> str | None: ...


@dataclass(frozen=True)
class KnowledgePrompt:
    """A prompt sentence and what it was built from; fields it does not carry are None.

    ``regions`` are where the prompt's finding is: the regions the report names or, when
    ``position_stated`` is False, the entity's typical regions (the grounding target, never
    written into ``text``). ``bare_text`` is the sentence without position or side, the form a
    prompt takes when the model must find the region in the image.
    """

    entity: str | None
    position: str | None
    exist: str | None
    text: str
    regions: tuple[str, ...] = ()
    position_stated: bool = False
    bare_text: str = ""


def _words(*parts: str | None) -> str:
    return " ".join(" ".join(part.split()) for part in parts if part and part.strip())


def knowledge_prompt(
    entity: str,
    position: str | None,
    exist: str,
    severity: str | None = None,
    laterality: str | None = None,
    with_position: bool = True,
) -> str:
    """``"[severity] [laterality] entity [in the position]: exist"``.

    ``with_position=False`` leaves the position out (the "prompts without position" ablation);
    so does an empty ``position``.
    """
    if exist not in EXISTENCE_VALUES:
        raise ValueError(f"exist must be one of {list(EXISTENCE_VALUES)}, got {exist!r}")
    if not entity or not entity.strip():
        raise ValueError("a knowledge prompt needs a non-empty entity")
    phrase = _words(severity, laterality, entity)
    if with_position and position and position.strip():
        phrase = f"{phrase} in the {_words(position)}"
    return f"{phrase}: {exist}"


def position_phrase(regions: Iterable[str]) -> str:
    """``"left costophrenic angle"``, ``"right lung and left lung"``."""
    return " and ".join(regions)


def prompts_from_triplets(
    triplets: Iterable[TripletLike], with_position: bool = True
) -> list[KnowledgePrompt]:
    """One prompt per stated finding of a report, in the order the triplets first give it.

    The parser writes one triplet per (finding, region); the triplets of one finding with the
    same existence, severity and side make one prompt naming all their regions, as the
    paper's Prompt = {entity, position, exist} has one position per finding. A position the
    text does not state (typical regions) stays out of the sentence but is kept in
    ``regions``; such a mention makes its own prompt unless a more specific prompt of the
    same finding already covers its regions ("Aortic calcification. Granulomas." are two
    prompts; "Mild cardiomegaly. Cardiomegaly." one). ``with_position=False`` leaves every
    position out of the sentence.
    """
    groups: dict[tuple, list] = {}
    for triplet in triplets:
        stated = bool(getattr(triplet, "position_stated", True))
        key = (triplet.finding, triplet.existence, triplet.severity, triplet.laterality, stated)
        groups.setdefault(key, []).append(triplet)
    candidates = [
        _Candidate(finding, existence, severity, laterality, stated, _unique_regions(members))
        for (finding, existence, severity, laterality, stated), members in groups.items()
    ]
    prompts: dict[str, KnowledgePrompt] = {}
    for candidate in candidates:
        if any(candidate.is_covered_by(other) for other in candidates if other is not candidate):
            continue
        position = (
            position_phrase(candidate.regions)
            if candidate.stated and candidate.regions and with_position
            else None
        )
        text = knowledge_prompt(
            candidate.finding,
            position,
            candidate.existence,
            candidate.severity,
            candidate.laterality,
        )
        if text in prompts:
            continue
        prompts[text] = KnowledgePrompt(
            entity=candidate.finding,
            position=position,
            exist=candidate.existence,
            text=text,
            regions=candidate.regions,
            position_stated=candidate.stated and bool(candidate.regions),
            bare_text=knowledge_prompt(
                candidate.finding, None, candidate.existence, candidate.severity
            ),
        )
    return list(prompts.values())


def _unique_regions(members: Iterable[TripletLike]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(t.region for t in members if t.region))


@dataclass(frozen=True)
class _Candidate:
    """A prompt before redundant ones are dropped: one group of a report's triplets."""

    finding: str
    existence: str
    severity: str | None
    laterality: str | None
    stated: bool
    regions: tuple[str, ...]

    def is_covered_by(self, other: _Candidate) -> bool:
        """Whether ``other`` says all this says, and more: the same finding and existence,
        its severity and side where this has one, and every region of this one, a typical
        lung counting as covered by a stated part of it."""
        if (other.finding, other.existence) != (self.finding, self.existence):
            return False
        if self.severity not in (None, other.severity):
            return False
        if self.laterality not in (None, other.laterality):
            return False
        if self.stated:
            return other.stated and set(self.regions) <= set(other.regions)
        return all(
            region in other.regions or any(_is_part_of(r, region) for r in other.regions)
            for region in self.regions
        )


# Chest ImaGenome's lung regions and the parts each contains.
_LUNG_PARTS = {
    f"{side} lung": frozenset(
        f"{side} {part}"
        for part in (
            "upper lung zone",
            "mid lung zone",
            "lower lung zone",
            "hilar structures",
            "apical zone",
            "costophrenic angle",
        )
    )
    for side in ("right", "left")
}


def _is_part_of(region: str, whole: str) -> bool:
    """ "right lower lung zone" is part of the "right lung"."""
    return region in _LUNG_PARTS.get(whole, ())


def entity_prompts(kb: KnowledgeBase | None = None) -> list[KnowledgePrompt]:
    """The inference prompt set: ``"<entity>: <definition>"`` for every entity, in KB order."""
    kb = kb if kb is not None else load_knowledge_base()
    return [
        KnowledgePrompt(
            entity=entity.name,
            position=None,
            exist=None,
            text=f"{entity.name}: {entity.definition}",
        )
        for entity in kb.entities
    ]


def position_prompts(kb: KnowledgeBase | None = None) -> list[KnowledgePrompt]:
    """``"<region>: <position sentence>"`` for the 29 regions, in the detector's index order."""
    kb = kb if kb is not None else load_knowledge_base()
    return [
        KnowledgePrompt(
            entity=None, position=region, exist=None, text=f"{region}: {kb.position(region)}"
        )
        for region in CHEST_IMAGENOME_REGIONS
    ]
