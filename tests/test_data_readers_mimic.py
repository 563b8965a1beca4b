"""MIMIC-CXR-JPG (+ reports) and Chest ImaGenome readers, and MIMIC report sectioning.

Checked against the synthetic world's truth (truth.jsonl) and exported files, plus bad input:
missing images, empty and missing reports, broken scene graphs, missing mandatory files.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from torch.utils.data import DataLoader

from cxrvlp import cli
from cxrvlp.constants import CHEST_IMAGENOME_REGIONS, CHEXPERT_LABELS
from cxrvlp.data.readers.imagenome import ChestImaGenomeDataset
from cxrvlp.data.readers.mimic import MIMICCXRDataset
from cxrvlp.data.sample import collate_samples
from cxrvlp.errors import MissingFileError
from cxrvlp.text.sections import (
    SECTIONED_COLUMNS,
    parse_mimic_report,
    section_mimic_report,
    write_sectioned_csv,
)

WORLD_ARGS = ["--studies", "16", "--image-size", "96", "--cohorts", "mimic,nih,chexpert"]


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small synthetic world per session, shared with the CheXpert/NIH reader tests."""
    root = tmp_path_factory.getbasetemp() / "readers-world"
    if not (root / "truth.jsonl").exists():
        assert (
            cli.main(["synth", "--out", str(root), *WORLD_ARGS, "--quiet", "--workers", "1"]) == 0
        )
    return root


@pytest.fixture(scope="session")
def mimic_truth(world: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (world / "truth.jsonl").read_text().splitlines()]
    return {row["image_id"]: row for row in rows if row["dataset"] == "mimic-cxr-jpg"}


@pytest.fixture(scope="session")
def mimic(world: Path) -> MIMICCXRDataset:
    return MIMICCXRDataset(world / "mimic-cxr-jpg")


@pytest.fixture(scope="session")
def imagenome(world: Path) -> ChestImaGenomeDataset:
    return ChestImaGenomeDataset(world / "chest-imagenome")


def copy_mimic(world: Path, tmp_path: Path) -> Path:
    """A writable copy of the MIMIC-CXR-JPG root, its reports and Chest ImaGenome."""
    for folder in ("mimic-cxr-jpg", "mimic-cxr-reports", "chest-imagenome"):
        shutil.copytree(world / folder, tmp_path / folder)
    return tmp_path


def report_path(root: Path, subject_id: str, study_id: str) -> Path:
    return root / "mimic-cxr-reports/files" / f"p{subject_id[:2]}/p{subject_id}/s{study_id}.txt"


# ---- sectioning ----------------------------------------------------------------------------


def test_sections_findings_and_impression_with_wrapped_lines():
    text = (
        "                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n \n"
        " COMPARISON:  ___.\n \n FINDINGS:\n \n The lungs are clear. No pleural\n effusion.\n"
        " \n IMPRESSION:\n \n No acute process.\n"
    )
    parsed = parse_mimic_report(text)
    assert parsed.findings == "The lungs are clear. No pleural effusion."
    assert parsed.impression == "No acute process."
    assert parsed.comparison == "___."
    assert parsed.last_paragraph == "No acute process."
    sections = section_mimic_report(text)
    assert (sections.findings, sections.impression, sections.text) == (
        parsed.findings,
        parsed.impression,
        text,
    )


@pytest.mark.parametrize(
    ("heading", "section"),
    [
        ("FINDINGS AND IMPRESSION:", "impression"),
        ("CONCLUSION:", "impression"),
        ("FINDINGS/IMPRESSION:", "impression"),
        ("Impression:", "impression"),
        ("IMPRESSON:", "impression"),
        ("FINIDNGS:", "findings"),
        ("Findings:", "findings"),
    ],
)
def test_sections_heading_variants(heading: str, section: str):
    parsed = parse_mimic_report(f" INDICATION: cough.\n\n {heading} Small left effusion.\n")
    assert getattr(parsed, section) == "Small left effusion."
    other = "findings" if section == "impression" else "impression"
    assert getattr(parsed, other) == ""


def test_sections_fallback_last_paragraph_and_colon_in_text():
    text = (
        " PA and lateral views of the chest.\n\n Heart size: normal. Lungs are clear.\n"
        "\r\n Dr. ___ was paged at 10:30: findings discussed.\r\n"
    )
    parsed = parse_mimic_report(text)
    assert parsed.findings == ""
    # Neither a mixed-case phrase nor a time before a colon is a heading.
    assert parsed.impression == "Dr. ___ was paged at 10:30: findings discussed."
    assert set(parsed.sections) == {"preamble"}


def test_sections_repeated_heading_last_wins_and_empty_report():
    parsed = parse_mimic_report(" IMPRESSION: first.\n\n ADDENDUM: x\n\n IMPRESSION: second.\n")
    assert parsed.impression == "second."
    assert parsed.sections["addendum"] == "x"
    assert section_mimic_report(" FINDINGS:\n \n IMPRESSION:\n \n").is_empty
    assert section_mimic_report("").is_empty


def test_write_sectioned_csv_counts_and_is_deterministic(world: Path, tmp_path: Path):
    reports = tmp_path / "reports"
    shutil.copytree(world / "mimic-cxr-reports", reports)
    files = sorted((reports / "files").glob("p*/p*/s*.txt"))
    files[0].write_bytes(b"\xff\xfe not utf-8 \xff")
    files[1].write_text(" FINDINGS:\n \n IMPRESSION:\n")
    out = tmp_path / "mimic_cxr_sectioned.csv.gz"
    stats = write_sectioned_csv(reports, out, progress=False)
    assert (stats.n_reports, stats.n_written, stats.n_empty) == (len(files), len(files) - 1, 1)
    assert stats.n_unreadable == 1 and stats.unreadable[0][0] == str(files[0])
    frame = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert tuple(frame.columns) == SECTIONED_COLUMNS
    assert frame["study"].tolist() == [path.stem for path in files[1:]]
    assert frame["study"].str.fullmatch(r"s\d{8}").all()
    assert (frame["findings"].str.len() > 0).sum() == len(files) - 2
    data = out.read_bytes()
    assert data[4:8] == b"\0\0\0\0"  # gzip without a time stamp
    again = tmp_path / "again.csv.gz"
    write_sectioned_csv(reports, again, progress=False)
    assert again.read_bytes() == data


def test_write_sectioned_csv_names_a_missing_folder(tmp_path: Path):
    with pytest.raises(MissingFileError, match=r"mimic-cxr-reports\.zip"):
        write_sectioned_csv(tmp_path / "nowhere", tmp_path / "out.csv.gz", progress=False)


# ---- MIMIC-CXR-JPG -------------------------------------------------------------------------


def test_mimic_records_match_truth(mimic: MIMICCXRDataset, mimic_truth: dict[str, dict], world):
    frontal = {k: row for k, row in mimic_truth.items() if row["view"] != "LATERAL"}
    assert mimic.problems == []
    assert mimic.n_rows == len(mimic_truth)
    assert mimic.n_filtered_views == len(mimic_truth) - len(frontal)
    assert {r.image_id for r in mimic.records} == set(frontal)
    for record in mimic.records:
        row = frontal[record.image_id]
        assert record.image_path == world / row["path"]
        assert (record.patient_id, record.study_id) == (row["patient_id"], row["study_id"])
        assert (record.view, record.split) == (row["view"], row["split"])
    summary = mimic.summary()
    assert summary["n_patients"] == len({row["patient_id"] for row in frontal.values()})


def test_mimic_labels_match_exported_csv(mimic: MIMICCXRDataset, world: Path):
    negbio = MIMICCXRDataset(world / "mimic-cxr-jpg", label_source="negbio")
    for source, reader in (("chexpert", mimic), ("negbio", negbio)):
        exported = pd.read_csv(
            world / f"mimic-cxr-jpg/mimic-cxr-2.0.0-{source}.csv.gz", dtype={"study_id": str}
        ).set_index("study_id")
        for record in reader.records:
            expected = exported.loc[record.study_id, list(CHEXPERT_LABELS)].to_numpy(np.float32)
            np.testing.assert_array_equal(record.labels, expected)  # NaN == NaN here
    assert mimic.label_names == CHEXPERT_LABELS
    with pytest.raises(ValueError, match="label_source"):
        MIMICCXRDataset(world / "mimic-cxr-jpg", label_source="chexbert")


def test_mimic_reports_hold_every_region_phrase(
    mimic: MIMICCXRDataset, imagenome: ChestImaGenomeDataset
):
    """The sectioner keeps every sentence the report writer linked to a region."""
    phrases_of = {r.image_id: r.extra["region_phrases"] for r in imagenome.records}
    n_phrases = 0
    for record in mimic.records:
        assert record.report is not None
        assert record.report.findings and record.report.impression
        text = record.report.findings_and_impression
        for pairs in phrases_of[record.image_id].values():
            for phrase, _ in pairs:
                assert " ".join(phrase.split()) in text
                n_phrases += 1
    assert n_phrases > len(mimic.records)


def test_mimic_sectioned_csv_gives_the_same_reports(
    mimic: MIMICCXRDataset, world: Path, tmp_path: Path
):
    sectioned = tmp_path / "mimic_cxr_sectioned.csv.gz"
    write_sectioned_csv(world / "mimic-cxr-reports", sectioned, progress=False)
    from_csv = MIMICCXRDataset(world / "mimic-cxr-jpg", sectioned=sectioned)
    assert [r.image_id for r in from_csv.records] == [r.image_id for r in mimic.records]
    for a, b in zip(from_csv.records, mimic.records, strict=True):
        assert (a.report.findings, a.report.impression) == (b.report.findings, b.report.impression)
    explicit = MIMICCXRDataset(world / "mimic-cxr-jpg", reports=world / "mimic-cxr-reports/files")
    assert len(explicit) == len(mimic)


def test_mimic_nan_sections_are_counted_skips(mimic: MIMICCXRDataset, world: Path, tmp_path):
    sectioned = tmp_path / "mimic_cxr_sectioned.csv.gz"
    write_sectioned_csv(world / "mimic-cxr-reports", sectioned, progress=False)
    frame = pd.read_csv(sectioned, dtype=str)
    both_blank, findings_blank = frame["study"].iloc[0], frame["study"].iloc[1]
    frame.loc[0, ["findings", "impression"]] = np.nan
    frame.loc[1, "findings"] = np.nan
    frame.to_csv(sectioned, index=False)
    reader = MIMICCXRDataset(world / "mimic-cxr-jpg", sectioned=sectioned)
    kept = {r.study_id for r in reader.records}
    assert both_blank.removeprefix("s") not in kept
    assert findings_blank.removeprefix("s") in kept
    assert len(reader.records) == len(mimic.records) - sum(
        r.study_id == both_blank.removeprefix("s") for r in mimic.records
    )
    assert any(both_blank.removeprefix("s") in p.source for p in reader.problems)


@pytest.mark.parametrize("split", ["train", "validate", "test"])
def test_mimic_split_filter(mimic_truth: dict[str, dict], world: Path, split: str):
    dataset = MIMICCXRDataset(world / "mimic-cxr-jpg", split=split, views=None)
    expected = {k for k, row in mimic_truth.items() if row["split"] == split}
    assert {r.image_id for r in dataset.records} == expected
    assert dataset.n_filtered_views == 0


def test_mimic_loads_images(mimic: MIMICCXRDataset, mimic_truth: dict[str, dict]):
    sample = mimic[0]
    row = mimic_truth[sample.image_id]
    assert sample.error == ""
    assert sample.image.shape == (1, row["height"], row["width"])
    assert sample.original_size == (row["height"], row["width"])
    assert 0.0 <= float(sample.image.min()) < float(sample.image.max()) <= 1.0
    assert sample.labels.shape == sample.label_mask.shape == (len(CHEXPERT_LABELS),)
    assert sample.report.findings


def test_mimic_bad_input_is_counted(mimic: MIMICCXRDataset, world: Path, tmp_path: Path):
    root = copy_mimic(world, tmp_path)
    records = mimic.records
    # Four different studies: an image missing, a report empty, missing, not UTF-8.
    by_study = {}
    for record in records:
        by_study.setdefault(record.study_id, record)
    lost_image, empty_report, no_report, bad_report = list(by_study.values())[:4]
    (root / lost_image.image_path.relative_to(world)).unlink()
    report_path(root, empty_report.patient_id, empty_report.study_id).write_text(
        " FINDINGS:\n \n IMPRESSION:\n"
    )
    report_path(root, no_report.patient_id, no_report.study_id).unlink()
    report_path(root, bad_report.patient_id, bad_report.study_id).write_bytes(b"\xff\xfe\xff")
    dataset = MIMICCXRDataset(root / "mimic-cxr-jpg")
    reasons = sorted(p.reason.split(":")[0] for p in dataset.problems)
    assert reasons == [
        "image listed but missing",
        "report has neither findings nor impression",
        "study has no report",
        "unreadable report",
    ]
    assert any(p.source.endswith(f"s{no_report.study_id}.txt") for p in dataset.problems)
    dropped = {empty_report.study_id, no_report.study_id, bad_report.study_id}
    expected = {r.image_id for r in records if r.study_id not in dropped} - {lost_image.image_id}
    assert {r.image_id for r in dataset.records} == expected


def test_mimic_corrupt_image_is_skipped_by_the_loader(world: Path, tmp_path: Path):
    root = copy_mimic(world, tmp_path)
    dataset = MIMICCXRDataset(root / "mimic-cxr-jpg")
    dataset.records[1].image_path.write_bytes(b"\xff\xd8\xff not a JPEG")
    loader = DataLoader(dataset, batch_size=4, collate_fn=collate_samples)
    batches = list(loader)
    skipped = [item for batch in batches for item in batch["skipped"]]
    assert len(skipped) == 1 and dataset.records[1].image_id in skipped[0][0]
    assert sum(len(batch["image_id"]) for batch in batches) == len(dataset) - 1
    assert all(batch["report"] and all(batch["report"]) for batch in batches)


def test_mimic_missing_files_name_the_fix(world: Path, tmp_path: Path):
    root = tmp_path / "mimic-cxr-jpg"
    shutil.copytree(world / "mimic-cxr-jpg", root)
    # No reports anywhere: the error names both options and the command.
    with pytest.raises(MissingFileError) as error:
        MIMICCXRDataset(root)
    message = str(error.value)
    assert "reports=" in message and "sectioned=" in message
    assert "cxrvlp data sections --reports DIR --out FILE" in message
    labels_only = MIMICCXRDataset(root, labels_only=True)
    assert len(labels_only) > 0 and all(r.report is None for r in labels_only.records)
    with pytest.raises(MissingFileError, match="cxrvlp data sections"):
        MIMICCXRDataset(root, sectioned=tmp_path / "absent.csv.gz")
    (root / "mimic-cxr-2.0.0-split.csv.gz").unlink()
    with pytest.raises(MissingFileError, match=r"mimic-cxr-2\.0\.0-split\.csv\.gz.*PhysioNet"):
        MIMICCXRDataset(root, labels_only=True)


# ---- Chest ImaGenome -----------------------------------------------------------------------


def test_imagenome_boxes_match_truth(
    imagenome: ChestImaGenomeDataset, mimic_truth: dict[str, dict], world: Path
):
    frontal = {k: row for k, row in mimic_truth.items() if row["view"] != "LATERAL"}
    assert imagenome.problems == []
    assert imagenome.n_missing_regions == 0
    assert {r.image_id for r in imagenome.records} == set(frontal)
    for record in imagenome.records:
        row = frontal[record.image_id]
        assert record.box_labels == CHEST_IMAGENOME_REGIONS
        expected = np.array([row["regions"][name] for name in CHEST_IMAGENOME_REGIONS])
        np.testing.assert_allclose(record.boxes, expected, atol=1e-4)
        assert record.image_path == world / row["path"]
        assert record.split == row["split"]
        for pairs in record.extra["region_phrases"].values():
            for phrase, attributes in pairs:
                assert phrase and all(len(a.split("|")) == 3 for a in attributes)
    assert sum(bool(r.extra["region_phrases"]) for r in imagenome.records) == len(frontal)


def test_imagenome_split_names(mimic_truth: dict[str, dict], world: Path):
    valid = ChestImaGenomeDataset(world / "chest-imagenome/silver_dataset", split="valid")
    expected = {k for k, row in mimic_truth.items() if row["split"] == "validate"}
    assert {r.image_id for r in valid.records} == expected
    assert {r.split for r in valid.records} == {"validate"}
    with pytest.raises(ValueError, match="split"):
        ChestImaGenomeDataset(world / "chest-imagenome", split="val")


def test_imagenome_loads_image_with_boxes(imagenome: ChestImaGenomeDataset, mimic_truth):
    sample = imagenome[0]
    row = mimic_truth[sample.image_id]
    assert sample.image.shape == (1, row["height"], row["width"])
    np.testing.assert_allclose(sample.boxes.numpy(), imagenome.records[0].boxes, atol=1e-4)
    assert sample.box_labels == CHEST_IMAGENOME_REGIONS


def test_imagenome_gold_images_leave_train(imagenome: ChestImaGenomeDataset, world, tmp_path):
    root = copy_mimic(world, tmp_path)
    splits = root / "chest-imagenome/silver_dataset/splits"
    train = pd.read_csv(splits / "train.csv", index_col=0, dtype=str)
    train.iloc[:1].to_csv(splits / "images_to_avoid.csv", index=False)
    gold = train.iloc[0]["dicom_id"]
    dataset = ChestImaGenomeDataset(root / "chest-imagenome")
    assert dataset.n_excluded_gold == 1
    assert gold not in {r.image_id for r in dataset.records}
    kept = ChestImaGenomeDataset(root / "chest-imagenome", exclude_gold=False)
    assert len(kept) == len(imagenome)


def test_imagenome_bad_scene_graphs_are_counted(imagenome, world: Path, tmp_path: Path):
    root = copy_mimic(world, tmp_path)
    graphs = sorted((root / "chest-imagenome/silver_dataset/scene_graph").glob("*.json"))
    broken, deleted, nested, partial = graphs[:4]
    broken.write_text('{"objects": [')
    deleted.unlink()
    # Some extractions nest the graphs one level deeper: still found.
    (nested.parent / "deeper").mkdir()
    nested.rename(nested.parent / "deeper" / nested.name)
    graph = json.loads(partial.read_text())
    graph["objects"] = [o for o in graph["objects"] if o["bbox_name"] != "svc"]
    partial.write_text(json.dumps(graph))
    dataset = ChestImaGenomeDataset(root / "chest-imagenome")
    reasons = sorted(p.reason.split(":")[0] for p in dataset.problems)
    assert reasons == ["broken scene graph", "scene graph missing"]
    assert len(dataset) == len(imagenome) - 2
    assert dataset.n_missing_regions == 1
    record = next(r for r in dataset.records if partial.name.startswith(r.image_id))
    assert np.isnan(record.boxes[CHEST_IMAGENOME_REGIONS.index("svc")]).all()
    assert np.isfinite(np.delete(record.boxes, CHEST_IMAGENOME_REGIONS.index("svc"), 0)).all()


def test_imagenome_missing_files_name_the_fix(world: Path, tmp_path: Path):
    shutil.copytree(world / "chest-imagenome", tmp_path / "chest-imagenome")
    root = tmp_path / "chest-imagenome"
    with pytest.raises(MissingFileError, match="images="):
        ChestImaGenomeDataset(root)  # no MIMIC-CXR-JPG beside it
    labels_only = ChestImaGenomeDataset(root, labels_only=True)
    assert len(labels_only) > 0 and all(r.image_path is None for r in labels_only.records)
    (root / "silver_dataset/splits/valid.csv").unlink()
    with pytest.raises(MissingFileError, match=r"valid\.csv"):
        ChestImaGenomeDataset(root, labels_only=True)
    train_only = ChestImaGenomeDataset(root, labels_only=True, split="train")
    assert {r.split for r in train_only.records} == {"train"}


def test_sectioned_csv_is_gzip_of_plain_csv(world: Path, tmp_path: Path):
    plain, packed = tmp_path / "s.csv", tmp_path / "s.csv.gz"
    write_sectioned_csv(world / "mimic-cxr-reports", plain, progress=False)
    write_sectioned_csv(world / "mimic-cxr-reports", packed, progress=False)
    assert gzip.decompress(packed.read_bytes()) == plain.read_bytes()
