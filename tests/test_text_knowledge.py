"""The knowledge base: shipped files validate and are complete; lookups; clear errors."""

import dataclasses
import json
import shutil

import pytest

from cxrvlp.constants import ASG_TAGS, CHEST_IMAGENOME_REGIONS, CHEXPERT_LABELS
from cxrvlp.text.knowledge import (
    ENTITY_CATEGORIES,
    KNOWLEDGE_DIR,
    KnowledgeBaseError,
    load_knowledge_base,
    read_knowledge_base,
)

CANONICAL_FINDINGS = (
    "pleural effusion",
    "pneumothorax",
    "consolidation",
    "pneumonia",
    "lung opacity",
    "atelectasis",
    "pulmonary edema",
    "cardiomegaly",
    "enlarged cardiomediastinum",
    "nodule",
    "mass",
    "lung lesion",
    "fracture",
    "pleural thickening",
    "emphysema",
    "hyperinflation",
    "calcification",
    "scarring",
    "infiltration",
    "hernia",
    "vascular congestion",
    "interstitial markings",
    "costophrenic blunting",
    "collapse",
    "poor aeration",
    "obscured border",
    "deformity",
    "mediastinal shift",
    "distention",
    "dilation",
    "aspiration",
)
CANONICAL_DEVICES = (
    "endotracheal tube",
    "enteric tube",
    "central venous catheter",
    "pacemaker",
    "chest tube",
    "sternotomy wires",
    "stent",
    "surgical hardware",
    "support device",
)


@pytest.fixture(scope="module")
def kb():
    return load_knowledge_base()


def test_shipped_files_validate_and_version_names_each_file(kb):
    assert load_knowledge_base() is kb  # read once per process
    for name in ("entities", "definitions", "positions"):
        document = json.loads((KNOWLEDGE_DIR / f"{name}.json").read_text(encoding="utf-8"))
        assert f"{name}-{document['version']}" in kb.version
    assert set(kb.names) == set(CANONICAL_FINDINGS) | set(CANONICAL_DEVICES)
    assert len(kb.names) == len(set(kb.names))


@pytest.mark.parametrize("name", CANONICAL_FINDINGS + CANONICAL_DEVICES)
def test_every_canonical_entity_is_complete(kb, name):
    entity = kb.entity(name)
    assert entity.category in ENTITY_CATEGORIES
    assert (entity.category == "device") == (name in CANONICAL_DEVICES)
    assert entity.definition.endswith(".") and len(entity.definition.split()) >= 10
    assert len(entity.synonyms) >= 1
    assert entity.typical_regions
    assert set(entity.typical_regions) <= set(CHEST_IMAGENOME_REGIONS)
    assert entity.chexpert is None or entity.chexpert in CHEXPERT_LABELS
    assert set(entity.asg_tags) <= set(ASG_TAGS)
    for synonym in entity.synonyms:
        assert kb.by_synonym(synonym) is entity


def test_chexpert_and_asg_mapping_cover_the_label_sets(kb):
    mapped = {e.chexpert for e in kb.entities} - {None}
    # "No Finding" is a rule over all observations; "Pleural Other" may map to an entity.
    assert set(CHEXPERT_LABELS) - mapped <= {"No Finding", "Pleural Other"}
    assert kb.entity("pleural effusion").chexpert == "Pleural Effusion"
    assert kb.entity("pulmonary edema").chexpert == "Edema"
    assert "Lung Opacity" in kb.entity("consolidation").chexpert_implied
    assert all(set(e.chexpert_implied) <= set(CHEXPERT_LABELS) for e in kb.entities)
    assert {e.chexpert for e in kb.entities_in_category("device")} == {"Support Devices"}


def test_positions_are_the_29_regions_in_detector_order(kb):
    assert tuple(kb.positions) == CHEST_IMAGENOME_REGIONS
    assert all(len(kb.position(region).split()) >= 8 for region in CHEST_IMAGENOME_REGIONS)
    with pytest.raises(KeyError, match="unknown region 'left knee'"):
        kb.position("left knee")
    with pytest.raises(TypeError):
        kb.positions["trachea"] = "elsewhere"


def test_lookups(kb):
    effusion = kb.entity("pleural effusion")
    assert kb.by_synonym("  Pleural   EFFUSION. ") is effusion
    assert kb.by_synonym("banana") is None
    with pytest.raises(KeyError, match=r"unknown entity 'effusions'.*pleural effusion"):
        kb.entity("effusions")
    devices = kb.entities_in_category("device")
    assert [e.name for e in devices] == [n for n in kb.names if n in CANONICAL_DEVICES]
    not_devices = kb.entities_in_category("finding", "disease")
    assert len(devices) + len(not_devices) == len(kb.entities)
    with pytest.raises(ValueError, match="unknown entity categories"):
        kb.entities_in_category("organ")
    with pytest.raises(dataclasses.FrozenInstanceError):
        effusion.name = "effusion"


# ---- a small knowledge folder for the error cases -------------------------------------------


def _entity(name, synonyms, regions, category="finding", chexpert=None, tags=()):
    return {
        "name": name,
        "category": category,
        "synonyms": list(synonyms),
        "typical_regions": list(regions),
        "chexpert": chexpert,
        "asg_tags": list(tags),
    }


@pytest.fixture
def small_dir(tmp_path):
    entities = [
        _entity(
            "pleural effusion",
            ["effusion"],
            ["left costophrenic angle", "right costophrenic angle"],
            chexpert="Pleural Effusion",
            tags=["pleural effusion"],
        ),
        _entity("pacemaker", ["pacer"], ["left upper lung zone"], "device", "Support Devices"),
    ]
    definitions = {"pleural effusion": "Fluid in the pleural space.", "pacemaker": "A pacer."}
    (tmp_path / "entities.json").write_text(json.dumps({"version": "0.1", "entities": entities}))
    (tmp_path / "definitions.json").write_text(
        json.dumps({"version": "0.2", "definitions": definitions})
    )
    shutil.copy(KNOWLEDGE_DIR / "positions.json", tmp_path / "positions.json")
    return tmp_path


def _edit(folder, file, change):
    path = folder / file
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def test_small_folder_reads(small_dir):
    kb = read_knowledge_base(small_dir)
    assert kb.version.startswith("entities-0.1+definitions-0.2+positions-")
    assert kb.by_synonym("Pacer").name == "pacemaker"
    assert kb.entity("pleural effusion").definition == "Fluid in the pleural space."


@pytest.mark.parametrize(
    ("file", "change", "message"),
    [
        (
            "definitions.json",
            lambda d: d["definitions"].update({"pneumothorax": "Air in the pleura."}),
            "definition for unknown entity 'pneumothorax'",
        ),
        (
            "definitions.json",
            lambda d: d["definitions"].pop("pacemaker"),
            "entity 'pacemaker' has no definition",
        ),
        (
            "positions.json",
            lambda d: d["positions"].update({"left knee": "Below the chest."}),
            "unknown region 'left knee'",
        ),
        (
            "positions.json",
            lambda d: d["positions"].pop("carina"),
            "region 'carina' needs a non-empty position sentence",
        ),
        (
            "entities.json",
            lambda d: d["entities"][0]["typical_regions"].append("left lobe"),
            "unknown region 'left lobe' in typical_regions",
        ),
        (
            "entities.json",
            lambda d: d["entities"][1].update(category="gadget"),
            "category 'gadget' is not one of",
        ),
        (
            "entities.json",
            lambda d: d["entities"][1].update(chexpert="Pacemaker"),
            "chexpert 'Pacemaker' is not a CheXpert-14 observation",
        ),
        (
            "entities.json",
            lambda d: d["entities"][0].update(chexpert_implied=["Opacity"]),
            "chexpert_implied must be a list of CheXpert-14 observations",
        ),
        (
            "entities.json",
            lambda d: d["entities"][1]["asg_tags"].append("gizmo"),
            "asg tag 'gizmo' is not one of",
        ),
        (
            "entities.json",
            lambda d: d["entities"][1]["synonyms"].append("Effusion"),
            "synonym 'effusion' already belongs to 'pleural effusion'",
        ),
        (
            "entities.json",
            lambda d: d["entities"].append(dict(d["entities"][1])),
            "entity 'pacemaker': listed twice",
        ),
        ("entities.json", lambda d: d.pop("version"), 'needs a "version" string'),
        ("definitions.json", lambda d: d.update(definitions=[]), 'needs a "definitions" dict'),
    ],
)
def test_bad_files_give_clear_errors(small_dir, file, change, message):
    _edit(small_dir, file, change)
    with pytest.raises(KnowledgeBaseError, match=message) as raised:
        read_knowledge_base(small_dir)
    assert str(small_dir / file) in str(raised.value)


def test_missing_and_broken_files_are_named(small_dir):
    (small_dir / "positions.json").unlink()
    (small_dir / "entities.json").write_text('{"version": "1.0", "entities": [')
    with pytest.raises(KnowledgeBaseError) as raised:
        read_knowledge_base(small_dir)
    problems = raised.value.problems
    assert len(problems) == 2
    assert "entities.json: not valid JSON at line 1" in problems[0]
    assert "positions.json: file not found" in problems[1]
