"""Rule-based radiology report parser: sentences and <finding, region, existence> triplets.

Written for this project in the NegEx / NegBio tradition; transparent, no model, no download.

1. ``clean_report`` removes de-identification marks (``___`` in MIMIC-CXR, ``XXXX`` in Open-i)
   and normalises whitespace. Reports with headings are cut into sections by the MIMIC-CXR
   sectioner and read from FINDINGS and IMPRESSION (Open-i text uses the same headings);
   text without headings is read whole.
2. ``split_sentences`` splits at sentence ends, blank lines and numbered-list markers, never
   after an abbreviation ("vs.") or inside a decimal ("2.5 cm").
3. Each sentence becomes lower-case word tokens, and one greedy longest-match pass over a
   phrase lexicon finds entities (names and synonyms of ``knowledge_data/entities.json``) and
   the phrases of ``knowledge_data/parser_lexicon.json``: cues (negation, uncertainty,
   pseudo-negation, scope ends), locations, laterality, severity and organs. The vocabulary
   grows by editing these two files.
4. Existence: the nearest cue in an entity's scope decides. Pre-cues ("no", "without",
   "possible") reach forward, post-cues ("has resolved", "cannot be excluded") reach back,
   both within their clause: scope ends at ";", "but", "however", a copula that asserts
   something new ("is seen", "is unchanged"), or a comma that opens a new finding ("no
   pneumothorax, small effusion"). Pseudo-cues ("no change in", "partially resolved") shield
   the entity, which stays present.
5. Organs read with their qualifier: "heart size is normal" (cardiomegaly absent), "the
   mediastinum is widened" (enlarged cardiomediastinum present), "osseous structures are
   intact" (fracture absent), "lung volumes are low" (poor aeration present).
6. Laterality, severity and location words attach to the nearest entity of their sentence;
   locations become Chest ImaGenome regions, and an entity without one gets its typical
   regions (on its side when the side is known). A finding offered as the reading of another
   ("opacity at the left base, likely atelectasis") shares that finding's location.

Generic device words ("tube", "line", "tip", ...) give "support device" only in a sentence
that names no specific device.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import pairwise, permutations
from pathlib import Path
from typing import NamedTuple

from cxrvlp.constants import CHEST_IMAGENOME_REGIONS

# When one finding is stated twice, the stronger statement holds (as in the CheXpert labeller).
from cxrvlp.text.chexpert_rules import EXISTENCE_RANK
from cxrvlp.text.sections import ReportSections, parse_mimic_report

ENTITIES_PATH = Path(__file__).with_name("knowledge_data") / "entities.json"
LEXICON_PATH = Path(__file__).with_name("knowledge_data") / "parser_lexicon.json"
# Bump when a rule change alters what parse_report returns: pre-training indexes rebuild.
PARSER_VERSION = 1
EXISTENCES: tuple[str, ...] = ("present", "absent", "uncertain")
SEVERITIES: tuple[str, ...] = ("small", "moderate", "large")

# ---- results ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Triplet:
    """One finding in one region, as one sentence states it."""

    finding: str  # canonical entity name (knowledge/entities.json)
    region: str  # a Chest ImaGenome region
    existence: str  # "present", "absent" or "uncertain"
    severity: str | None  # "small", "moderate", "large" or None
    laterality: str | None  # "right", "left", "bilateral" or None
    sentence: str
    section: str = ""  # "findings", "impression", or "text" for a report without headings
    position_stated: bool = True  # False: the text gives no location; region is a typical one


@dataclass(frozen=True)
class ParsedReport:
    """Triplets of a report, with the sections and sentences they were read from."""

    triplets: list[Triplet]
    sections: dict[str, str]  # section name -> cleaned text
    sentences: list[tuple[str, str]] = field(default_factory=list)  # (section, sentence)

    def findings(self) -> dict[str, str]:
        """Each mentioned finding's existence over the report: present > uncertain > absent."""
        best: dict[str, str] = {}
        for triplet in self.triplets:
            held = best.get(triplet.finding)
            if held is None or EXISTENCE_RANK[triplet.existence] > EXISTENCE_RANK[held]:
                best[triplet.finding] = triplet.existence
        return best

    def existence(self, finding: str) -> str | None:
        """The report's existence of ``finding`` (None when it is not mentioned)."""
        return self.findings().get(finding)


# ---- the knowledge the parser reads ------------------------------------------------------


@dataclass(frozen=True)
class EntityInfo:
    """The parts of a knowledge-base entity the parser and the CheXpert labeller use."""

    name: str
    category: str
    synonyms: tuple[str, ...]
    typical_regions: tuple[str, ...]
    chexpert: str | None  # the CheXpert observation the entity itself is
    chexpert_implied: tuple[str, ...]  # observations a positive mention also makes positive
    asg_tags: tuple[str, ...]


@lru_cache(maxsize=4)
def load_entities(path: str | Path = ENTITIES_PATH) -> dict[str, EntityInfo]:
    """The entities of ``entities.json`` by name (read once per path)."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        raw_entities = document["entities"]
        entities = {
            raw["name"]: EntityInfo(
                name=raw["name"],
                category=raw["category"],
                synonyms=tuple(raw["synonyms"]),
                typical_regions=tuple(raw["typical_regions"]),
                chexpert=raw.get("chexpert"),
                chexpert_implied=tuple(raw.get("chexpert_implied", ())),
                asg_tags=tuple(raw["asg_tags"]),
            )
            for raw in raw_entities
        }
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path}: cannot read the report parser's entities ({error!r}); restore the file "
            'from the repository: {"version": ..., "entities": [{"name", "category", '
            '"synonyms", "typical_regions", "chexpert", "asg_tags"}, ...]}'
        ) from error
    unknown = {r for e in entities.values() for r in e.typical_regions} - set(
        CHEST_IMAGENOME_REGIONS
    )
    if unknown:
        raise ValueError(f"{path}: typical_regions not in CHEST_IMAGENOME_REGIONS: {unknown}")
    return entities


def _read_lexicon_tables(path: Path) -> dict:
    """The phrase tables of ``parser_lexicon.json``: cues, sides, severities, organs, zones..."""
    try:
        tables = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{path}: cannot read the report parser's lexicon ({error!r}); restore the file "
            "from the repository"
        ) from error
    # A misspelt region fails no parse, it only gives wrong triplets: refuse it here.
    zone_regions = {
        template.format(side=side)
        for zone in tables["zones"]
        for template in zone["regions"]
        for side in ("right", "left")
    }
    unknown = (set(tables["places"]) | zone_regions) - set(CHEST_IMAGENOME_REGIONS)
    if unknown:
        raise ValueError(f"{path}: regions not in CHEST_IMAGENOME_REGIONS: {sorted(unknown)}")
    return tables


_LEXICON_TABLES = _read_lexicon_tables(LEXICON_PATH)


# ---- cleaning and sentences ----------------------------------------------------------------

_DEIDENTIFIED = re.compile(r"_{2,}|\bX{2,}\b")
_SPACES = re.compile(r"[ \t\f\v\xa0]+")
_SPACE_BEFORE_PUNCTUATION = re.compile(r" +([.,;:])")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def clean_report(text: str) -> str:
    """Drop ``___`` / ``XXXX`` de-identification marks and normalise whitespace.

    Paragraph breaks (blank lines) and line starts survive: they are sentence and list
    boundaries; every other run of spaces becomes one space.
    """
    text = _DEIDENTIFIED.sub(" ", text.replace("\r\n", "\n").replace("\r", "\n"))
    lines = (_SPACE_BEFORE_PUNCTUATION.sub(r"\1", _SPACES.sub(" ", line)).strip() for line in
             text.split("\n"))  # fmt: skip
    return _MANY_NEWLINES.sub("\n\n", "\n".join(lines)).strip()


# Candidate sentence ends: ". " / "! " (checked against abbreviations), "? " before a capital,
# a blank line, a line that opens a numbered item, an inline "2. Capital" item marker, a
# missing space ("clear.No"), and an inline heading ("... IMPRESSION: ...").
_BOUNDARY = re.compile(
    r"(?P<period>(?<=[.!])\s+)"
    r"|(?<=\?)\s+(?=[A-Z])"
    r"|\n[ \t]*\n\s*"
    r"|\n(?=[ \t]*\d{1,2}[.)]\s)"
    r"|(?<=\s)(?=\d{1,2}\.\s+[A-Z])"
    r"|(?<=[a-z]{2}\.)(?=[A-Z][a-z])"
    r"|\s+(?=[A-Z]{3,}(?: [A-Z]{2,})*:)"
)
# Numbered-list markers and inline headings ("IMPRESSION:") that open a sentence.
_LIST_MARKER = re.compile(r"^(?:\(?\d{1,2}[.)](?:\s+|$)|[A-Z]{3,}(?: [A-Z]{2,})*:\s*)+")
_HAS_WORD = re.compile(r"[A-Za-z]")
_ABBREVIATIONS = frozenset(_LEXICON_TABLES["abbreviations"])


def _ends_with_abbreviation(text: str, period_end: int) -> bool:
    word_start = max(text.rfind(" ", 0, period_end), text.rfind("\n", 0, period_end)) + 1
    word = text[word_start:period_end].lower().rstrip(".!").lstrip("(")
    return word in _ABBREVIATIONS


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``, whitespace collapsed, list markers ("1.") removed."""
    sentences: list[str] = []
    start = 0
    for boundary in _BOUNDARY.finditer(text):
        if boundary.group("period") is not None and _ends_with_abbreviation(text, boundary.start()):
            continue
        _add_sentence(text[start : boundary.start()], sentences)
        start = boundary.end()
    _add_sentence(text[start:], sentences)
    return sentences


def _add_sentence(chunk: str, sentences: list[str]) -> None:
    sentence = _LIST_MARKER.sub("", " ".join(chunk.split()))
    if _HAS_WORD.search(sentence):
        sentences.append(sentence)


# ---- the phrase lexicon ------------------------------------------------------------------

_TOKEN = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?|[;:,?/()]")


def tokens_of(text: str) -> list[str]:
    """The parser's word tokens: lower case; hyphens, slashes and apostrophes split words."""
    return _TOKEN.findall(text.lower())


# Role kinds of a lexicon phrase (one phrase may play several roles, e.g. "large").
ENTITY, GENERIC_DEVICE, NEGATED_ONLY, STATES_ABSENT = "entity", "generic", "negated", "absent"
# The cue kinds name the phrase lists under "cues" in the lexicon file.
NEG_PRE, NEG_POST = "negation_before", "negation_after"
UNC_PRE, UNC_POST = "uncertainty_before", "uncertainty_after"
PSEUDO, TERMINATOR, AFFIRM = "pseudo_negation", "scope_end", "affirmation"
CHANGE, LINK = "change", "link"
# A comma that opens a new statement ends a scope, except that of a cue announcing a list
# ("differential diagnosis includes atelectasis, small infiltrate, scarring").
COMMA_BREAK, LIST_SCOPE = "comma", "list_opener"
SIDE, ZONE, PLACE, SEVERITY, ORGAN, QUALIFIER, IGNORE = (
    "side", "zone", "place", "severity", "organ", "qual", "ignore"
)  # fmt: skip


class _Role(NamedTuple):
    kind: str
    value: object = None


class _Zone(NamedTuple):
    templates: tuple[str, ...]  # region names with "{side}", e.g. "{side} lower lung zone"
    fixed_side: str | None  # "right", "left", "both" for "lingula", "bibasilar", ...


class _Organ(NamedTuple):
    """What a qualifier of this organ states: qualifier class -> entities it concerns."""

    enlarged: tuple[str, ...] = ()
    reduced: tuple[str, ...] = ()
    normal: tuple[str, ...] = ()


# Generic device words: "support device" only where no specific device is named.
GENERIC_DEVICE_WORDS = frozenset(_LEXICON_TABLES["generic_device_words"])

_CUES: dict[str, tuple[str, ...]] = {
    kind: tuple(phrases) for kind, phrases in _LEXICON_TABLES["cues"].items()
}

# Phrases read as nothing: they shadow shorter phrases inside them that would mislead.
_IGNORED: tuple[str, ...] = tuple(_LEXICON_TABLES["ignored"])

_SIDES: dict[str, str] = _LEXICON_TABLES["sides"]


def _by_phrase(groups: dict[str, list[str]]) -> dict[str, str]:
    """``{value: [phrase, ...]}`` of the lexicon file as ``{phrase: value}``."""
    return {phrase: value for value, phrases in groups.items() for phrase in phrases}


_SEVERITY_WORDS: dict[str, str] = _by_phrase(_LEXICON_TABLES["severity"])
_QUALIFIERS: dict[str, str] = _by_phrase(_LEXICON_TABLES["qualifiers"])

# What a qualifier says of each organ of the lexicon file's "organs".
_ORGAN_READINGS: dict[str, _Organ] = {
    "heart": _Organ(enlarged=("cardiomegaly",), normal=("cardiomegaly",)),
    "mediastinum": _Organ(
        enlarged=("enlarged cardiomediastinum",), normal=("enlarged cardiomediastinum",)
    ),
    # An enlarged cardiomediastinal silhouette may be heart or mediastinum: the broader finding
    # is the safe reading; a normal one rules out both.
    "cardiomediastinum": _Organ(
        enlarged=("enlarged cardiomediastinum",),
        normal=("cardiomegaly", "enlarged cardiomediastinum"),
    ),
    "bones": _Organ(normal=("fracture",)),
    "lung volumes": _Organ(
        enlarged=("hyperinflation",),
        reduced=("poor aeration",),
        normal=("hyperinflation", "poor aeration"),
    ),
    # "Pulmonary vascularity is normal" says nothing of edema in the CheXpert convention.
    "vascularity": _Organ(enlarged=("vascular congestion",)),
}
_ORGANS: dict[str, _Organ] = {
    phrase: _ORGAN_READINGS[organ]
    for phrase, organ in _by_phrase(_LEXICON_TABLES["organs"]).items()
}

# Phrases that negate a finding only when negated themselves: "no acute osseous abnormality"
# rules out a fracture, "osseous abnormality" alone states none.
_NEGATED_ONLY: dict[str, str] = _by_phrase(_LEXICON_TABLES["negated_only"])
# Phrases that state a finding's absence by themselves.
_STATES_ABSENT: dict[str, str] = _by_phrase(_LEXICON_TABLES["states_absent"])
# Phrases that name two findings at once.
_COMPOUNDS: dict[str, tuple[str, ...]] = {
    phrase: tuple(names) for phrase, names in _LEXICON_TABLES["compounds"].items()
}

_ZONE_TEMPLATES = {
    "upper": "{side} upper lung zone",
    "mid": "{side} mid lung zone",
    "middle": "{side} mid lung zone",
    "lower": "{side} lower lung zone",
}
_ALL_LUNG_ZONES = ("{side} upper lung zone", "{side} mid lung zone", "{side} lower lung zone")
_ZONE_NOUNS: tuple[str, ...] = tuple(_LEXICON_TABLES["zone_nouns"])
# A zone's "side" is set where the word tells it ("bibasilar", "lingula"); otherwise the side
# written with the word applies.
_ZONES: dict[str, _Zone] = {
    phrase: _Zone(tuple(zone["regions"]), zone["side"])
    for zone in _LEXICON_TABLES["zones"]
    for phrase in zone["phrases"]
}
_PLACES: dict[str, tuple[str, ...]] = {
    phrase: (region,) for phrase, region in _by_phrase(_LEXICON_TABLES["places"]).items()
}


def _zone_coordinations() -> dict[str, _Zone]:
    """ "mid and lower lung zones", "upper to mid lung", "upper, mid and lower lobes", ..."""
    zones: dict[str, _Zone] = {}
    for noun in _ZONE_NOUNS:
        for word, template in _ZONE_TEMPLATES.items():
            zones[f"{word} {noun}"] = _Zone((template,), None)
        for first, second in permutations(_ZONE_TEMPLATES, 2):
            both = (_ZONE_TEMPLATES[first], _ZONE_TEMPLATES[second])
            for joint in ("and", "to", "through", "or", ""):
                zones[" ".join(f"{first} {joint} {second} {noun}".split())] = _Zone(both, None)
        for joint in ("upper mid and lower", "upper mid lower", "upper middle and lower"):
            zones[f"{joint} {noun}"] = _Zone(_ALL_LUNG_ZONES, None)
    zones.pop("middle lobe", None)  # the right middle lobe: a fixed side, in _ZONES
    for phrase, zone in _ZONES.items():  # "left perihilar lung", "retrocardiac region"
        if " " not in phrase and phrase not in ("lung", "lungs"):
            for noun in ("lung", "lungs", "region", "regions", "area", "areas", "aspect"):
                zones[f"{phrase} {noun}"] = zone
    return zones


class _Lexicon(NamedTuple):
    phrases: dict[str, tuple[_Role, ...]]
    longest: dict[str, int]  # first token -> most tokens of a phrase starting with it


@lru_cache(maxsize=1)
def _lexicon() -> _Lexicon:
    roles: dict[str, list[_Role]] = {}

    def add(phrase: str, role: _Role) -> None:
        key = " ".join(tokens_of(phrase))
        held = roles.setdefault(key, [])
        if role not in held:
            held.append(role)

    for entity in load_entities().values():
        for term in (entity.name, *entity.synonyms):
            generic = entity.name == "support device" and term in GENERIC_DEVICE_WORDS
            add(term, _Role(GENERIC_DEVICE if generic else ENTITY, (entity.name,)))
    for phrase, names in _COMPOUNDS.items():
        add(phrase, _Role(ENTITY, names))
    for phrase, name in _NEGATED_ONLY.items():
        add(phrase, _Role(NEGATED_ONLY, (name,)))
    for phrase, name in _STATES_ABSENT.items():
        add(phrase, _Role(STATES_ABSENT, (name,)))
    for kind, phrases in _CUES.items():
        for phrase in phrases:
            add(phrase, _Role(kind))
    for phrase in _IGNORED:
        add(phrase, _Role(IGNORE))
    for phrase, side in _SIDES.items():
        add(phrase, _Role(SIDE, side))
    for phrase, level in _SEVERITY_WORDS.items():
        add(phrase, _Role(SEVERITY, level))
    for phrase, qualifier in _QUALIFIERS.items():
        add(phrase, _Role(QUALIFIER, qualifier))
    for phrase, organ in _ORGANS.items():
        add(phrase, _Role(ORGAN, organ))
    for phrase, zone in {**_zone_coordinations(), **_ZONES}.items():
        add(phrase, _Role(ZONE, zone))
    for phrase, regions in _PLACES.items():
        add(phrase, _Role(PLACE, regions))
    phrases = {key: tuple(value) for key, value in roles.items()}
    longest: dict[str, int] = {}
    for key in phrases:
        words = key.split(" ")
        longest[words[0]] = max(longest.get(words[0], 0), len(words))
    return _Lexicon(phrases, longest)


# ---- reading one sentence ------------------------------------------------------------------


class _Match(NamedTuple):
    start: int  # token span [start, end)
    end: int
    roles: tuple[_Role, ...]


def _scan(tokens: list[str], lexicon: _Lexicon) -> list[_Match]:
    """Greedy longest match from left to right; unmatched tokens are skipped."""
    matches = []
    phrases, longest = lexicon.phrases, lexicon.longest
    position, count = 0, len(tokens)
    while position < count:
        most = longest.get(tokens[position], 0)
        for size in range(min(most, count - position), 0, -1):
            roles = phrases.get(" ".join(tokens[position : position + size]))
            if roles is not None:
                matches.append(_Match(position, position + size, roles))
                position += size
                break
        else:
            position += 1
    return matches


@dataclass
class _Mention:
    """One entity mention of a sentence, filled in step by step."""

    names: tuple[str, ...]
    start: int
    end: int
    kind: str  # ENTITY, GENERIC_DEVICE, NEGATED_ONLY, STATES_ABSENT or ORGAN
    existence: str = "present"
    severity: str | None = None
    sides: set[str] = field(default_factory=set)
    zones: list[tuple[_Zone, str | None]] = field(default_factory=list)  # zone, bound side
    places: list[tuple[str, ...]] = field(default_factory=list)
    is_device: bool = False


PRE_WINDOW = 16  # tokens a pre-cue reaches forward
POST_WINDOW = 8  # tokens a post-cue reaches back
_PRE_TRIGGERS = {NEG_PRE: "absent", UNC_PRE: "uncertain"}
_POST_TRIGGERS = {NEG_POST: "absent", UNC_POST: "uncertain"}
_BACKWARD_STOPS = frozenset((TERMINATOR, PSEUDO, AFFIRM))
_FORWARD_STOPS = frozenset((TERMINATOR, PSEUDO, AFFIRM, CHANGE))
# A comma followed by these opens a new statement ("no pneumothorax, small left effusion")
# unless an "or" later in the clause shows a list of negated findings.
_NEW_STATEMENT_KINDS = frozenset((SEVERITY, SIDE))
_LIST_WORDS = frozenset(("or", "nor", "/"))
_CONJUNCTIONS = frozenset(("and", "or", "with", "nor", "but", "as", "plus"))


_CUE_KINDS = frozenset(
    (NEG_PRE, NEG_POST, UNC_PRE, UNC_POST, PSEUDO, TERMINATOR, AFFIRM, CHANGE, LINK, LIST_SCOPE)
)


class _Cue(NamedTuple):
    start: int
    end: int
    kinds: frozenset[str]


def _cues(matches: list[_Match], tokens: list[str]) -> list[_Cue]:
    """Scope cues in token order, with scope-ending commas added as terminators."""
    cues = [
        _Cue(m.start, m.end, kinds)
        for m in matches
        if (kinds := frozenset(r.kind for r in m.roles) & _CUE_KINDS)
    ]
    starts = {m.start: m for m in matches}
    for position, token in enumerate(tokens):
        if token != ",":
            continue
        following = starts.get(position + 1)
        if following is None:
            continue
        kinds = {r.kind for r in following.roles}
        if kinds & {AFFIRM, CHANGE} or (
            kinds & _NEW_STATEMENT_KINDS and not _LIST_WORDS.intersection(tokens[position + 1 :])
        ):
            cues.append(_Cue(position, position + 1, frozenset((COMMA_BREAK,))))
    cues.sort()
    return cues


def _existence(start: int, end: int, cues: list[_Cue]) -> str:
    """The existence the nearest cue in scope gives the token span [start, end)."""
    before: tuple[int, str] | None = None
    comma_break = False
    for cue in reversed(cues):
        if cue.end > start:
            continue
        if start - cue.end > PRE_WINDOW:
            break
        trigger = next((k for k in cue.kinds if k in _PRE_TRIGGERS), None)
        if trigger is not None:
            if not comma_break or LIST_SCOPE in cue.kinds:
                before = (start - cue.end, _PRE_TRIGGERS[trigger])
            break
        if cue.kinds & _BACKWARD_STOPS:
            break
        comma_break = comma_break or COMMA_BREAK in cue.kinds
    after: tuple[int, str] | None = None
    for cue in cues:
        if cue.start < end:
            continue
        if cue.start - end > POST_WINDOW:
            break
        trigger = next((k for k in cue.kinds if k in _POST_TRIGGERS), None)
        if trigger is not None:
            after = (cue.start - end, _POST_TRIGGERS[trigger])
            break
        if cue.kinds & _FORWARD_STOPS or COMMA_BREAK in cue.kinds:
            break
    nearest = min((c for c in (before, after) if c is not None), default=None)
    return "present" if nearest is None else nearest[1]


def _organ_mentions(
    matches: list[_Match], tokens: list[str], cues: list[_Cue]
) -> tuple[list[_Mention], set[int]]:
    """Findings stated by an organ and its qualifier; also the organ matches so used."""
    mentions: list[_Mention] = []
    used: set[int] = set()
    listed: tuple[int, tuple[str, str | None, tuple[int, int]]] | None = None
    for index, match in enumerate(matches):
        organ = next((r.value for r in match.roles if r.kind == ORGAN), None)
        if organ is None:
            continue
        found = _qualifier(matches, index, tokens)
        # "Normal heart size and mediastinal contours": the list shares its qualifier.
        if (
            found is None
            and listed is not None
            and _ORGAN_LIST_WORDS.issuperset(tokens[listed[0] : match.start])
        ):
            found = listed[1]
        if found is None:
            continue
        listed = (match.end, found)
        qualifier, severity, between = found
        used.add(index)
        if qualifier == "normal":
            names, existence = organ.normal, "absent"
        elif qualifier == "reduced":
            names, existence = organ.reduced, "present"
        else:
            names = organ.enlarged
            existence = "uncertain" if qualifier == "borderline" else "present"
            kinds = {k for cue in cues if between[0] <= cue.start < between[1] for k in cue.kinds}
            if kinds & {UNC_PRE, UNC_POST}:
                existence = "uncertain"
            elif NEG_PRE in kinds:
                existence = "absent"
        for name in names:
            mention = _Mention((name,), match.start, match.end, ORGAN, existence)
            mention.severity = severity if existence != "absent" else None
            mentions.append(mention)
    return mentions, used


def _qualifier(
    matches: list[_Match], index: int, tokens: list[str]
) -> tuple[str, str | None, tuple[int, int]] | None:
    """(qualifier class, severity, token span between) for the organ ``matches[index]``."""
    organ = matches[index]
    if index > 0:  # "normal heart size", "mildly enlarged heart"
        previous = matches[index - 1]
        qualifier = _role_value(previous, QUALIFIER)
        adjacent = previous.end == organ.start or (
            organ.start - previous.end == 1 and tokens[previous.end] not in ",;:"
        )
        if qualifier is not None and adjacent:
            severity = _role_value(matches[index - 2], SEVERITY) if index > 1 else None
            return qualifier, severity, (previous.end, previous.end)
    severity = None
    previous_end = organ.end
    for match in matches[index + 1 :]:  # "heart size is mildly enlarged"
        if match.start - organ.end > 10:
            return None
        gap = tokens[previous_end : match.start]
        previous_end = match.end
        kinds = {r.kind for r in match.roles}
        if kinds & {ORGAN, ENTITY} and QUALIFIER not in kinds:
            # Organs listed together share the qualifier: "heart, mediastinum and hila are
            # normal", "heart size and vascular engorgement appear within limits of normal";
            # "silhouette with top normal heart size" does not list them.
            if not _ORGAN_LIST_WORDS.issuperset(gap):
                return None
            continue
        if "," in gap:
            return None
        qualifier = _role_value(match, QUALIFIER)
        if qualifier is not None:
            return qualifier, severity or _role_value(match, SEVERITY), (organ.end, match.start)
        # "The silhouette is stable and unremarkable": the qualifier follows the stability.
        if AFFIRM in kinds and tokens[match.end : match.end + 1] == ["and"]:
            continue
        if kinds & {TERMINATOR, AFFIRM, ENTITY, GENERIC_DEVICE}:
            return None
        if SEVERITY in kinds:
            severity = _role_value(match, SEVERITY)
    return None


_ORGAN_LIST_WORDS = frozenset((",", "and", "or", "the", "as", "well"))


def _read_normal_predicates(
    mentions: list[_Mention], matches: list[_Match], tokens: list[str]
) -> None:
    """ "Vascular engorgement appears within normal limits": a finding said to be normal."""
    following = {m.start: m for m in matches}
    for mention in mentions:
        if mention.kind != ENTITY or mention.existence != "present":
            continue
        position = mention.end
        while position < len(tokens) and tokens[position] in _COPULAS:
            position += 1
        match = following.get(position)
        if match is not None and _role_value(match, QUALIFIER) == "normal":
            mention.existence = "absent"


_COPULAS = frozenset(("is", "are", "appear", "appears", "seems", "seem", "remains", "remain"))


def _role_value(match: _Match, kind: str) -> object:
    return next((r.value for r in match.roles if r.kind == kind), None)


def _attach_cost(
    modifier: _Match,
    kind: str,
    mention: _Mention,
    tokens: list[str],
    modifier_positions: dict[int, str],
) -> int:
    """How far a modifier is from a mention: words between, more for commas and 'and'.

    Other modifiers between are free, with the 'and' or comma that joins them ("perihilar and
    lower lobe opacities"), and so are prepositions that open a location after its finding
    ("opacity in the left lower lobe"). Ties go to the mention an adjective precedes and to
    the mention a location phrase follows.
    """
    after = modifier.start >= mention.end
    if after:
        between = range(mention.end, modifier.start)
    elif modifier.end <= mention.start:
        between = range(modifier.end, mention.start)
    else:
        return 0
    cost = 1 if after == (kind in (SIDE, SEVERITY)) else 0
    for position in between:
        token = tokens[position]
        if token in (";", ":"):
            return 1000
        if position in modifier_positions or (
            token in _JOINERS
            and modifier_positions.get(position - 1, "left")
            == modifier_positions.get(position + 1, "right")
        ):
            continue
        if token == "," or token in _CONJUNCTIONS:
            cost += 4
        elif not (after and token in _PREPOSITIONS):
            cost += 1
    return cost


_MODIFIER_GROUP = {SIDE: "side", SEVERITY: "severity", ZONE: "location", PLACE: "location"}
_JOINERS = frozenset((",", "and", "or", "/", "to", "through"))
_PREPOSITIONS = frozenset(
    ("in", "at", "of", "within", "over", "the", "a", "an", "involving", "along", "throughout",
     "into", "overlying", "projecting", "projects", "to", "from", "near", "on", "its", "both")
)  # fmt: skip


_MAX_COST = {SIDE: 6, SEVERITY: 4, ZONE: 8, PLACE: 8}
# A bare "lungs" is most often its own statement ("clear lungs"): it reaches only close by.
_SHORT_REACH = frozenset(("lung", "lungs"))
_SHORT_REACH_COST = 2
# Device positions are told at length: "tube in place, with the tip 4 cm above the carina".
_DEVICE_EXTRA_REACH = 8


def _attach_modifiers(
    matches: list[_Match], mentions: list[_Mention], tokens: list[str], organs_used: set[int]
) -> None:
    """Give each laterality, severity and location word to its nearest mention."""
    targets = [m for m in mentions if m.kind != ORGAN]
    if not targets:
        return
    modifier_positions = {
        position: _MODIFIER_GROUP[role.kind]
        for m in matches
        for role in m.roles
        if role.kind in _MODIFIER_GROUP
        for position in range(m.start, m.end)
    }
    side_matches = [m for m in matches if any(r.kind == SIDE for r in m.roles)]
    sides_ending = {m.end: m for m in side_matches}
    sides_starting = {m.start: m for m in side_matches}
    for index, match in enumerate(matches):
        for role in match.roles:
            # An organ read with its qualifier ("the heart is enlarged") locates nothing else.
            if role.kind not in _MAX_COST or (role.kind in (ZONE, PLACE) and index in organs_used):
                continue
            cost, best = min(
                (_attach_cost(match, role.kind, t, tokens, modifier_positions), n)
                for n, t in enumerate(targets)
            )
            target = targets[best]
            reach = _MAX_COST[role.kind]
            if role.kind in (ZONE, PLACE):
                if " ".join(tokens[match.start : match.end]) in _SHORT_REACH:
                    reach = _SHORT_REACH_COST
                elif target.is_device:
                    reach += _DEVICE_EXTRA_REACH
            if cost > reach:
                continue
            if role.kind == SIDE:
                target.sides.add(role.value)
            elif role.kind == SEVERITY:
                target.severity = target.severity or role.value
            elif role.kind == PLACE:
                target.places.append(role.value)
            else:
                # The side word written against a zone: "left lower lobe", "bases bilaterally".
                neighbour = sides_ending.get(match.start) or sides_starting.get(match.end)
                bound = _role_value(neighbour, SIDE) if neighbour is not None else None
                target.zones.append((role.value, bound))


def _is_lateral(region: str) -> bool:
    side, _, rest = region.partition(" ")
    mirrored = {"right": "left", "left": "right"}.get(side)
    return mirrored is not None and f"{mirrored} {rest}" in _REGION_SET


_REGION_SET = frozenset(CHEST_IMAGENOME_REGIONS)


def _laterality(sides: Iterable[str]) -> str | None:
    sides = set(sides)
    if "both" in sides or {"right", "left"} <= sides:
        return "bilateral"
    return next(iter(sides), None)


def _expand(templates: tuple[str, ...], side: str | None) -> list[str]:
    chosen = ("right", "left") if side in (None, "both", "bilateral") else (side,)
    return [t.format(side=s) for t in templates for s in chosen]


def _regions(mention: _Mention, entity: EntityInfo) -> tuple[list[str], str | None, bool]:
    """The mention's regions, its laterality, and whether the text stated the location (else
    the entity's typical regions, on the stated side when there is one)."""
    laterality = _laterality(mention.sides)
    regions: list[str] = []
    zone_sides = set()
    for zone, bound in mention.zones:
        side = zone.fixed_side or bound
        zone_sides.add(side)
        regions += _expand(zone.templates, side or laterality)
    for place in mention.places:
        regions += place
    if regions:
        if laterality is None:  # "retrocardiac", "lingula": the location tells the side
            laterality = _laterality(zone_sides - {None})
    else:
        typical = entity.typical_regions
        if laterality in ("right", "left"):
            regions = [r for r in typical if not _is_lateral(r) or r.startswith(laterality)]
        regions = regions or list(typical)
        return list(dict.fromkeys(regions)), laterality, False
    return list(dict.fromkeys(regions)), laterality, True


def _inherit_linked_locations(
    mentions: list[_Mention], matches: list[_Match], cues: list[_Cue], tokens: list[str]
) -> None:
    """ "Opacity at the left base, likely atelectasis": atelectasis is at the left base too.

    Two findings of one noun phrase ("calcified right midlung nodule", only modifiers
    between) share the location that went to either of them.
    """
    links = [c for c in cues if LINK in c.kinds]
    modifier_positions = {
        position
        for m in matches
        if any(r.kind in _MODIFIER_GROUP for r in m.roles)
        for position in range(m.start, m.end)
    }
    ordered = sorted(
        (m for m in mentions if m.kind in (ENTITY, GENERIC_DEVICE)), key=lambda m: m.start
    )
    for previous, mention in pairwise(ordered):
        modifiers_between = range(previous.end, mention.start)
        if modifiers_between and modifier_positions.issuperset(modifiers_between):
            located = [m for m in (previous, mention) if m.zones or m.places]
            if len(located) == 1:
                unlocated = mention if located[0] is previous else previous
                unlocated.zones = list(located[0].zones)
                unlocated.places = list(located[0].places)
            continue
        if mention.sides or mention.zones or mention.places:
            continue
        if not (previous.sides or previous.zones or previous.places):
            continue
        # "airspace disease/atelectasis": two readings of one finding, side by side
        linked = previous.end == mention.start or any(
            previous.end <= c.start and c.end <= mention.start for c in links
        )
        between = tokens[previous.end : mention.start]
        if linked and ";" not in between and ":" not in between:
            mention.sides = set(previous.sides)
            mention.zones = list(previous.zones)
            mention.places = list(previous.places)


def _stronger(triplet: Triplet, held: Triplet) -> bool:
    """The stronger statement of one (finding, region): the higher existence, then the one
    whose location the text states ("kyphotic curvature of the thoracic spine")."""
    rank, held_rank = EXISTENCE_RANK[triplet.existence], EXISTENCE_RANK[held.existence]
    return rank > held_rank or (
        rank == held_rank and triplet.position_stated and not held.position_stated
    )


def parse_sentence(sentence: str, section: str = "") -> list[Triplet]:
    """Triplets of one sentence: one per (finding, region), the strongest statement kept."""
    tokens = tokens_of(sentence)
    if not tokens:
        return []
    lexicon = _lexicon()
    entities = load_entities()
    matches = _scan(tokens, lexicon)
    cues = _cues(matches, tokens)
    mentions: list[_Mention] = []
    for match in matches:
        for role in match.roles:
            if role.kind in (ENTITY, GENERIC_DEVICE, NEGATED_ONLY, STATES_ABSENT):
                mentions.append(_Mention(role.value, match.start, match.end, role.kind))
    for mention in mentions:
        mention.is_device = entities[mention.names[0]].category == "device"
    if any(m.kind == ENTITY and m.is_device for m in mentions):
        mentions = [m for m in mentions if m.kind != GENERIC_DEVICE]
    organ_mentions, organs_used = _organ_mentions(matches, tokens, cues)
    for mention in mentions:
        if mention.kind == STATES_ABSENT:
            mention.existence = "absent"
        else:
            mention.existence = _existence(mention.start, mention.end, cues)
    mentions = [m for m in mentions if m.kind != NEGATED_ONLY or m.existence == "absent"]
    _read_normal_predicates(mentions, matches, tokens)
    mentions += organ_mentions
    if not mentions:
        return []
    _attach_modifiers(matches, mentions, tokens, organs_used)
    _inherit_linked_locations(mentions, matches, cues, tokens)

    best: dict[tuple[str, str], Triplet] = {}
    for mention in mentions:
        for name in mention.names:
            regions, laterality, stated = _regions(mention, entities[name])
            severity = mention.severity if mention.existence != "absent" else None
            for region in regions:
                triplet = Triplet(
                    name,
                    region,
                    mention.existence,
                    severity,
                    laterality,
                    sentence,
                    section,
                    position_stated=stated,
                )
                held = best.get((name, region))
                if held is None or _stronger(triplet, held):
                    best[(name, region)] = triplet
    return list(best.values())


# ---- reports -------------------------------------------------------------------------------


def report_sections(report: str | ReportSections) -> dict[str, str]:
    """The cleaned sections a report is read from: findings and impression where headed."""
    if isinstance(report, ReportSections):
        headed = {"findings": report.findings, "impression": report.impression}
        sections = {name: clean_report(text) for name, text in headed.items() if text.strip()}
        if sections or not report.text.strip():
            return sections
        report = report.text
    text = clean_report(report)
    parsed = parse_mimic_report(text)
    if not any(name != "preamble" for name in parsed.sections):
        return {"text": text} if text else {}
    return {
        name: value
        for name, value in (("findings", parsed.findings), ("impression", parsed.impression))
        if value
    }


def parse_report(report: str | ReportSections) -> ParsedReport:
    """Triplets of a report: MIMIC-CXR or Open-i text with headings, or plain report text."""
    sections = report_sections(report)
    triplets: list[Triplet] = []
    sentences: list[tuple[str, str]] = []
    for section, text in sections.items():
        for sentence in split_sentences(text):
            sentences.append((section, sentence))
            triplets += parse_sentence(sentence, section)
    return ParsedReport(triplets=triplets, sections=sections, sentences=sentences)
