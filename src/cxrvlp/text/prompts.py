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
    """What the prompt builder reads from a report triplet (e.g. ``cxrvlp.text.parse``'s)."""

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
    """A prompt sentence and what it was built from; fields it does not carry are None."""

    entity: str | None
    position: str | None
    exist: str | None
    text: str


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


def prompts_from_triplets(
    triplets: Iterable[TripletLike], with_position: bool = True
) -> list[KnowledgePrompt]:
    """One prompt per distinct sentence, in the order the triplets first give it.

    Without position the prompt keeps no position either: several regions of one finding then
    collapse into the same prompt.
    """
    prompts: dict[str, KnowledgePrompt] = {}
    for triplet in triplets:
        text = knowledge_prompt(
            triplet.finding,
            triplet.region,
            triplet.existence,
            severity=triplet.severity,
            laterality=triplet.laterality,
            with_position=with_position,
        )
        if text not in prompts:
            prompts[text] = KnowledgePrompt(
                entity=triplet.finding,
                position=triplet.region if with_position else None,
                exist=triplet.existence,
                text=text,
            )
    return list(prompts.values())


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
