"""The medical knowledge base of GK-MVLP: entities (findings, diseases, devices) and positions.

Three versioned JSON files in ``text/knowledge_data/`` make it up:

* ``entities.json``: each entity's name, category, synonyms, typical Chest ImaGenome regions,
  CheXpert observation (and those it implies, optional) and ASG tags: the vocabulary the
  report parser matches;
* ``definitions.json``: one definition sentence per entity, written for this project;
* ``positions.json``: one sentence per Chest ImaGenome region saying where it lies on a
  frontal chest film.

``load_knowledge_base()`` reads and validates the shipped files once; ``read_knowledge_base``
reads another folder with the same three files. Every problem found is reported at once, each
naming its file, so a broken edit is fixed in one pass.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cxrvlp.constants import ASG_TAGS, CHEST_IMAGENOME_REGIONS, CHEXPERT_LABELS

KNOWLEDGE_DIR = Path(__file__).with_name("knowledge_data")
ENTITIES_FILE = "entities.json"
DEFINITIONS_FILE = "definitions.json"
POSITIONS_FILE = "positions.json"
ENTITY_CATEGORIES: tuple[str, ...] = ("finding", "disease", "device")

_MAX_LISTED_PROBLEMS = 30
_PUNCTUATION_EDGES = " \t\n.,;:!?()[]\"'"


class KnowledgeBaseError(ValueError):
    """The knowledge files are unreadable or inconsistent; ``problems`` lists every issue."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        listed = "\n".join(f"  - {p}" for p in problems[:_MAX_LISTED_PROBLEMS])
        more = len(problems) - _MAX_LISTED_PROBLEMS
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"invalid knowledge base ({len(problems)} problems):\n{listed}{tail}")


@dataclass(frozen=True)
class Entity:
    """One finding, disease or device: the unit a knowledge prompt is built on."""

    name: str
    category: str  # one of ENTITY_CATEGORIES
    synonyms: tuple[str, ...]  # other ways reports say it
    definition: str
    typical_regions: tuple[str, ...]  # Chest ImaGenome regions, used when a report gives none
    chexpert: str | None  # the CheXpert-14 observation it counts towards, if any
    asg_tags: tuple[str, ...]  # ASG's finding tags it answers to
    # Further CheXpert observations it implies (consolidation -> Lung Opacity).
    chexpert_implied: tuple[str, ...] = ()


def normalise_term(text: str) -> str:
    """Lower case, single spaces, no surrounding punctuation: the form lookups compare."""
    return " ".join(text.lower().split()).strip(_PUNCTUATION_EDGES)


@dataclass(frozen=True, eq=False)
class KnowledgeBase:
    """Entities in file order and the 29 position sentences in the detector's region order."""

    version: str
    entities: tuple[Entity, ...]
    positions: Mapping[str, str]
    _by_name: Mapping[str, Entity] = field(init=False, repr=False)
    _by_term: Mapping[str, Entity] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        by_name = {entity.name: entity for entity in self.entities}
        by_term: dict[str, Entity] = {}
        for entity in self.entities:
            for term in (entity.name, *entity.synonyms):
                by_term.setdefault(normalise_term(term), entity)
        # Frozen dataclass: the indexes are set once here and read-only afterwards.
        object.__setattr__(self, "positions", MappingProxyType(dict(self.positions)))
        object.__setattr__(self, "_by_name", MappingProxyType(by_name))
        object.__setattr__(self, "_by_term", MappingProxyType(by_term))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(entity.name for entity in self.entities)

    def entity(self, name: str) -> Entity:
        """The entity with this canonical name; KeyError naming the known ones otherwise."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(
                f"unknown entity {name!r}; known entities: {', '.join(self.names)}"
            ) from None

    def by_synonym(self, text: str) -> Entity | None:
        """The entity whose name or synonym is ``text`` (case and spacing ignored), or None."""
        return self._by_term.get(normalise_term(text))

    def entities_in_category(self, *categories: str) -> tuple[Entity, ...]:
        """Entities of the given categories, in file order."""
        unknown = [c for c in categories if c not in ENTITY_CATEGORIES]
        if unknown:
            raise ValueError(
                f"unknown entity categories {unknown}; choose from {list(ENTITY_CATEGORIES)}"
            )
        return tuple(entity for entity in self.entities if entity.category in categories)

    def position(self, region: str) -> str:
        """The sentence describing where ``region`` lies on a frontal film."""
        try:
            return self.positions[region]
        except KeyError:
            raise KeyError(
                f"unknown region {region!r}; regions are the 29 of "
                "cxrvlp.constants.CHEST_IMAGENOME_REGIONS"
            ) from None


@lru_cache(maxsize=1)
def load_knowledge_base() -> KnowledgeBase:
    """The shipped knowledge base (read and validated once per process)."""
    return read_knowledge_base(KNOWLEDGE_DIR)


def read_knowledge_base(knowledge_dir: str | Path) -> KnowledgeBase:
    """Read and validate ``entities.json``, ``definitions.json`` and ``positions.json``."""
    folder = Path(knowledge_dir)
    entities_path = folder / ENTITIES_FILE
    definitions_path = folder / DEFINITIONS_FILE
    positions_path = folder / POSITIONS_FILE
    problems: list[str] = []
    entities_doc = _read_versioned(entities_path, "entities", list, problems)
    definitions_doc = _read_versioned(definitions_path, "definitions", dict, problems)
    positions_doc = _read_versioned(positions_path, "positions", dict, problems)
    if problems:
        raise KnowledgeBaseError(problems)

    definitions = _check_definitions(definitions_path, definitions_doc["definitions"], problems)
    raw_entities = _check_entities(entities_path, entities_doc["entities"], problems)
    names = {raw["name"] for raw in raw_entities}
    for name in definitions:
        if name not in names:
            problems.append(
                f"{definitions_path}: definition for unknown entity {name!r}; add it to "
                f"{ENTITIES_FILE} or remove the definition"
            )
    for raw in raw_entities:
        if raw["name"] not in definitions:
            problems.append(
                f"{definitions_path}: entity {raw['name']!r} has no definition; add one"
            )
    positions = _check_positions(positions_path, positions_doc["positions"], problems)
    if problems:
        raise KnowledgeBaseError(problems)

    entities = tuple(
        Entity(
            name=raw["name"],
            category=raw["category"],
            synonyms=tuple(raw["synonyms"]),
            definition=definitions[raw["name"]],
            typical_regions=tuple(raw["typical_regions"]),
            chexpert=raw["chexpert"],
            asg_tags=tuple(raw["asg_tags"]),
            chexpert_implied=tuple(raw["chexpert_implied"]),
        )
        for raw in raw_entities
    )
    version = (
        f"entities-{entities_doc['version']}+definitions-{definitions_doc['version']}"
        f"+positions-{positions_doc['version']}"
    )
    return KnowledgeBase(version=version, entities=entities, positions=positions)


def _read_versioned(path: Path, key: str, expected: type, problems: list[str]) -> dict[str, Any]:
    """``{"version": str, key: expected}`` from ``path``; problems are appended, not raised."""
    if not path.is_file():
        problems.append(f"{path}: file not found; the knowledge folder needs {path.name}")
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        problems.append(f"{path}: cannot read: {error}")
        return {}
    except json.JSONDecodeError as error:
        problems.append(f"{path}: not valid JSON at line {error.lineno}: {error.msg}")
        return {}
    if not isinstance(document, dict):
        problems.append(f'{path}: expected an object {{"version": ..., "{key}": ...}}')
        return {}
    if not isinstance(document.get("version"), str) or not document["version"]:
        problems.append(f'{path}: needs a "version" string such as "1.0"')
    if not isinstance(document.get(key), expected):
        problems.append(f'{path}: needs a "{key}" {expected.__name__}')
    return document


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _check_definitions(path: Path, definitions: dict, problems: list[str]) -> dict[str, str]:
    checked = {}
    for name, sentence in definitions.items():
        if _is_text(sentence):
            checked[name] = sentence.strip()
        else:
            problems.append(f"{path}: definition of {name!r} must be a non-empty sentence")
    return checked


def _check_positions(path: Path, positions: dict, problems: list[str]) -> dict[str, str]:
    for region in positions:
        if region not in CHEST_IMAGENOME_REGIONS:
            problems.append(
                f"{path}: unknown region {region!r}; use a name of "
                "cxrvlp.constants.CHEST_IMAGENOME_REGIONS"
            )
    checked = {}
    for region in CHEST_IMAGENOME_REGIONS:
        sentence = positions.get(region)
        if _is_text(sentence):
            checked[region] = sentence.strip()
        else:
            problems.append(f"{path}: region {region!r} needs a non-empty position sentence")
    return checked


def _check_entities(path: Path, entities: list, problems: list[str]) -> list[dict[str, Any]]:
    """Entities that are well formed; each problem names the entity and the fix."""
    checked: list[dict[str, Any]] = []
    term_owner: dict[str, str] = {}
    for number, raw in enumerate(entities):
        where = f"{path}: entity #{number}"
        if not isinstance(raw, dict) or not _is_text(raw.get("name")):
            problems.append(f'{where}: must be an object with a non-empty "name"')
            continue
        name = raw["name"]
        where = f"{path}: entity {name!r}"
        entity_problems = len(problems)
        if name != normalise_term(name):
            problems.append(f"{where}: names are lower case without surrounding punctuation")
        if any(c["name"] == name for c in checked):
            problems.append(f"{where}: listed twice")
        if raw.get("category") not in ENTITY_CATEGORIES:
            problems.append(
                f"{where}: category {raw.get('category')!r} is not one of {list(ENTITY_CATEGORIES)}"
            )
        for key in ("synonyms", "typical_regions", "asg_tags"):
            value = raw.get(key)
            if not isinstance(value, list) or not all(_is_text(item) for item in value):
                problems.append(f'{where}: "{key}" must be a list of non-empty strings')
        if problems[entity_problems:]:
            continue
        for region in raw["typical_regions"]:
            if region not in CHEST_IMAGENOME_REGIONS:
                problems.append(
                    f"{where}: unknown region {region!r} in typical_regions; use a name of "
                    "cxrvlp.constants.CHEST_IMAGENOME_REGIONS"
                )
        chexpert = raw.get("chexpert")
        if chexpert is not None and chexpert not in CHEXPERT_LABELS:
            problems.append(
                f"{where}: chexpert {chexpert!r} is not a CheXpert-14 observation "
                "(cxrvlp.constants.CHEXPERT_LABELS) or null"
            )
        implied = raw.get("chexpert_implied", [])
        if not isinstance(implied, list) or not all(i in CHEXPERT_LABELS for i in implied):
            problems.append(
                f"{where}: chexpert_implied must be a list of CheXpert-14 observations "
                "(cxrvlp.constants.CHEXPERT_LABELS)"
            )
        for tag in raw["asg_tags"]:
            if tag not in ASG_TAGS:
                problems.append(f"{where}: asg tag {tag!r} is not one of cxrvlp.constants.ASG_TAGS")
        # One surface form must lead to one entity, or by_synonym would depend on file order.
        for term in {normalise_term(t) for t in (name, *raw["synonyms"])}:
            owner = term_owner.setdefault(term, name)
            if owner != name:
                problems.append(f"{where}: synonym {term!r} already belongs to {owner!r}")
        checked.append({**raw, "chexpert": chexpert, "chexpert_implied": implied})
    return checked
