"""IU X-Ray (R2Gen and Open-i), VQA-RAD, SLAKE and generic pairs readers.

Synthetic exports are checked against truth.jsonl and the exported JSON; the Open-i reader
runs on the real NLMCXR_reports.tgz that ships with torchxrayvision, read in place.
"""

import importlib.util
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from torch.utils.data import DataLoader

from cxrvlp.cli import main
from cxrvlp.data.readers.iu_xray import IUXrayDataset, OpenIReports
from cxrvlp.data.readers.pairs import ImageReportPairs
from cxrvlp.data.readers.vqa import SLAKEDataset, VQARADDataset, normalize_answer
from cxrvlp.data.sample import collate_samples
from cxrvlp.data.transforms import ResizePad
from cxrvlp.errors import DataError, MissingFileError


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("world_iu_vqa")
    argv = ["synth", "--out", str(out), "--studies", "12", "--image-size", "96", "--quiet"]
    assert main([*argv, "--cohorts", "iu_xray,vqa_rad,slake"]) == 0
    truth = [json.loads(line) for line in (out / "truth.jsonl").read_text().splitlines()]
    return out, truth


def _json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _copy(world_root: Path, folder: str, tmp_path: Path) -> Path:
    shutil.copytree(world_root / folder, tmp_path / folder)
    return tmp_path / folder


# ---- IU X-Ray (R2Gen annotation.json) --------------------------------------------------------


def test_iu_records_have_both_views_and_the_report(world):
    out, truth = world
    root = out / "iu_xray"
    annotation = _json(root / "annotation.json")
    rows = {row["path"]: row for row in truth if row["dataset"] == "iu_xray"}
    dataset = IUXrayDataset(root)
    assert dataset.problems == [] and dataset.n_rows == sum(map(len, annotation.values()))
    entries = [entry for split in ("train", "val", "test") for entry in annotation[split]]
    assert sorted(r.extra["id"] for r in dataset.records) == sorted(e["id"] for e in entries)
    by_id = {record.extra["id"]: record for record in dataset.records}
    for entry in entries:
        record = by_id[entry["id"]]
        frontal = rows[f"iu_xray/images/{entry['image_path'][0]}"]
        lateral = rows[f"iu_xray/images/{entry['image_path'][1]}"]
        assert record.image_path == out / frontal["path"] and frontal["view"] != "LATERAL"
        assert record.extra_paths == (out / lateral["path"],) and lateral["view"] == "LATERAL"
        assert record.split == entry["split"] == frontal["split"]
        assert record.study_id == frontal["study_id"] == entry["id"]
        assert record.report.findings == entry["report"] and record.report.impression == ""
        assert record.report.findings_and_impression == entry["report"]
    assert dataset.summary()["n_images"] == 2 * len(entries)
    for split in ("train", "val", "test"):
        part = IUXrayDataset(root, split=split)
        assert sorted(r.extra["id"] for r in part.records) == sorted(
            e["id"] for e in annotation[split]
        )
    single = IUXrayDataset(root, two_views=False)
    assert len(single) == len(entries) and all(r.extra_paths == () for r in single.records)
    with pytest.raises(ValueError, match="split"):
        IUXrayDataset(root, split="validate")


def test_iu_sample_loads_both_views(world):
    out, truth = world
    dataset = IUXrayDataset(out / "iu_xray", split="train")
    sample = dataset[0]
    record = dataset.records[0]
    rows = {out / row["path"]: row for row in truth}
    frontal, lateral = rows[record.image_path], rows[record.extra_paths[0]]
    assert sample.error == ""
    assert sample.image.shape == (1, frontal["height"], frontal["width"])
    assert len(sample.extra_images) == 1
    assert sample.extra_images[0].shape == (1, lateral["height"], lateral["width"])
    assert sample.report.findings == record.report.findings


def test_iu_batches_hold_both_views_and_the_reports(world):
    out, _ = world
    dataset = IUXrayDataset(out / "iu_xray", transform=ResizePad(64))
    batch = next(iter(DataLoader(dataset, batch_size=4, collate_fn=collate_samples)))
    assert batch["skipped"] == [] and batch["image"].shape == (4, 1, 64, 64)
    assert [views.shape for views in batch["extra_images"]] == [(4, 1, 64, 64)]
    assert batch["report"] == [r.report.findings for r in dataset.records[:4]]


def test_iu_bad_input_is_counted_or_named(world, tmp_path):
    out, _ = world
    root = _copy(out, "iu_xray", tmp_path)
    annotation = _json(root / "annotation.json")
    train = annotation["train"]
    train[0]["report"] = "   "
    train[1]["image_path"] = train[1]["image_path"][:1]
    (root / "images" / train[2]["image_path"][1]).unlink()
    (root / "annotation.json").write_text(json.dumps(annotation))
    dataset = IUXrayDataset(root)
    n_entries = sum(map(len, annotation.values()))
    assert len(dataset) == n_entries - 3
    reasons = {p.source: p.reason for p in dataset.problems}
    assert reasons["annotation.json train[0]"].endswith("empty report")
    assert "two_views needs two" in reasons["annotation.json train[1]"]
    assert reasons[f"images/{train[2]['image_path'][1]}"] == "image listed but missing"
    # Without two views the single-view entry is fine.
    assert len(IUXrayDataset(root, two_views=False, labels_only=True)) == n_entries - 1

    text = (root / "annotation.json").read_text()
    (root / "annotation.json").write_text(text[: len(text) // 2])
    with pytest.raises(DataError, match=r"annotation\.json is not valid JSON \(line"):
        IUXrayDataset(root)
    (root / "annotation.json").write_text('["a list, not splits"]')
    with pytest.raises(DataError, match=r"annotation\.json must be an object of lists"):
        IUXrayDataset(root)
    (root / "annotation.json").unlink()
    with pytest.raises(MissingFileError, match=r"annotation\.json.*R2Gen"):
        IUXrayDataset(root)


# ---- Open-i XML (the real IU X-Ray reports) ----------------------------------------------------


@pytest.fixture(scope="module")
def openi_archive() -> Path:
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None:
        pytest.skip("torchxrayvision (NLMCXR_reports.tgz) is not installed")
    path = Path(spec.submodule_search_locations[0]) / "data" / "NLMCXR_reports.tgz"
    if not path.is_file():
        pytest.skip("NLMCXR_reports.tgz is not in this torchxrayvision install")
    return path


@pytest.fixture(scope="module")
def openi_reports(openi_archive) -> OpenIReports:
    return OpenIReports(openi_archive)


def test_openi_real_reports_from_the_archive(openi_reports):
    reports = openi_reports
    assert reports.summary() == {
        "n_reports": 3_955,
        "n_with_findings": 3_425,
        "n_with_impression": 3_921,
        "n_images": 7_470,
        "n_problems": 0,
    }
    ids = [report.report_id for report in reports]
    assert len(set(ids)) == 3_955 and all(i.startswith("CXR") for i in ids)
    assert all(report.mesh_major for report in reports)
    assert sum(not report.image_ids for report in reports) == 104
    # Image ids name their report: CXR1_1_IM-0001-3001 belongs to CXR1.
    assert all(i.split("_")[0] == r.report_id for r in reports for i in r.image_ids)
    # Text is kept as shipped, de-identified words included.
    assert sum("XXXX" in report.sections.text for report in reports) > 1_000
    with_both = next(r for r in reports if r.sections.findings and r.sections.impression)
    text = with_both.sections.text
    assert text.index("FINDINGS: ") < text.index("IMPRESSION: ")


def test_openi_folder_form_and_bad_files(openi_archive, openi_reports, tmp_path):
    names = ("ecgen-radiology/1.xml", "ecgen-radiology/2.xml", "ecgen-radiology/10.xml")
    with tarfile.open(openi_archive) as archive:
        for name in names:
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_bytes(archive.extractfile(name).read())
    (tmp_path / "ecgen-radiology" / "99999.xml").write_text("<eCitation><uId")
    from_folder = OpenIReports(tmp_path)
    from_archive = {r.file_name: r for r in openi_reports}
    assert [r.file_name for r in from_folder] == ["1.xml", "2.xml", "10.xml"]
    assert all(report == from_archive[report.file_name] for report in from_folder)
    assert [p.source for p in from_folder.problems] == ["99999.xml"]
    broken = tmp_path / "broken.tgz"
    broken.write_bytes(openi_archive.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"broken\.tgz cannot be read"):
        OpenIReports(broken)
    with pytest.raises(MissingFileError, match="NLMCXR_reports"):
        OpenIReports(tmp_path / "absent.tgz")


# ---- VQA-RAD ---------------------------------------------------------------------------------


def test_vqa_rad_mevf_split_matches_the_exported_questions(world):
    out, truth = world
    root = out / "vqa_rad"
    images = {row["image_id"]: row for row in truth if row["dataset"] == "vqa_rad"}
    for split, file_name in (("train", "trainset.json"), ("test", "testset.json")):
        entries = _json(root / file_name)
        dataset = VQARADDataset(root, split=split)
        assert dataset.problems == [] and len(dataset) == len(entries)
        for record, entry in zip(dataset.records, entries, strict=True):
            assert (record.question, record.answer) == (entry["question"], entry["answer"])
            assert (
                record.answer_type == entry["answer_type"] and record.extra["qid"] == entry["qid"]
            )
            assert record.image_path == root / "VQA_RAD Image Folder" / entry["image_name"]
            assert images[record.image_id]["split"] == split == record.split
    both = VQARADDataset(root)
    assert both.summary()["per_split"] == {
        "test": len(_json(root / "testset.json")),
        "train": len(_json(root / "trainset.json")),
    }
    closed = [r for r in both.records if r.answer_type == "CLOSED"]
    assert closed and {normalize_answer(r.answer) for r in closed} <= {"yes", "no"}
    sample = both[0]
    row = images[sample.image_id]
    assert sample.image.shape == (1, row["height"], row["width"])
    assert sample.question == both.records[0].question


def test_vqa_rad_public_json_alone_is_split_all(world, tmp_path):
    out, _ = world
    root = _copy(out, "vqa_rad", tmp_path)
    (root / "trainset.json").unlink()
    (root / "testset.json").unlink()
    public = _json(root / "VQA_RAD Dataset Public.json")
    dataset = VQARADDataset(root)
    assert len(dataset) == len(public) and {r.split for r in dataset.records} == {"all"}
    assert len(VQARADDataset(root, split="all")) == len(public)
    with pytest.raises(MissingFileError, match=r"trainset\.json.*split='all'"):
        VQARADDataset(root, split="train")


def test_vqa_rad_bad_entries_are_counted(world, tmp_path):
    out, _ = world
    root = _copy(out, "vqa_rad", tmp_path)
    entries = _json(root / "trainset.json")
    entries[0]["answer_type"] = "closed "  # stray case and space, as in real files
    entries[1]["answer_type"] = "MAYBE"
    entries[2]["answer"] = ""
    entries[3]["image_name"] = "synpic0.jpg"
    (root / "trainset.json").write_text(json.dumps(entries))
    dataset = VQARADDataset(root, split="train")
    assert len(dataset) == len(entries) - 3 and dataset.records[0].answer_type == "CLOSED"
    reasons = {p.source: p.reason for p in dataset.problems}
    assert "not OPEN or CLOSED" in reasons["trainset.json[1]"]
    assert reasons["trainset.json[2]"].endswith("empty answer")
    assert reasons["VQA_RAD Image Folder/synpic0.jpg"] == "image listed but missing"
    (root / "testset.json").write_text("[{")
    with pytest.raises(DataError, match=r"testset\.json is not valid JSON"):
        VQARADDataset(root, split="test")


def test_normalize_answer():
    assert normalize_answer("  Left   Lung\n") == "left lung"
    assert normalize_answer("YES") == normalize_answer("yes ") == "yes"
    assert normalize_answer(2) == "2"


# ---- SLAKE -----------------------------------------------------------------------------------


def test_slake_keeps_one_language_and_counts_the_others(world):
    out, truth = world
    root = out / "slake"
    images = {row["image_id"]: row for row in truth if row["dataset"] == "slake"}
    entries = {s: _json(root / f"{s}.json") for s in ("train", "validate", "test")}
    everything = [(s, e) for s, split_entries in entries.items() for e in split_entries]
    english = [(s, e) for s, e in everything if e["q_lang"] == "en"]
    n_chinese = len(everything) - len(english)
    assert 0 < n_chinese < len(english)
    dataset = SLAKEDataset(root)
    assert dataset.problems == [] and dataset.n_rows == len(everything)
    assert dataset.summary()["n_other_language"] == dataset.n_other_language == n_chinese
    for record, (split, entry) in zip(dataset.records, english, strict=True):
        assert (record.question, record.answer) == (entry["question"], entry["answer"])
        assert record.split == split == images[entry["img_name"]]["split"]
        assert record.image_path == root / "imgs" / entry["img_name"]
        assert record.study_id == entry["img_name"].split("/")[0]
        assert record.extra["content_type"] == entry["content_type"]
    chinese = SLAKEDataset(root, language="zh")
    assert len(chinese) == n_chinese and chinese.n_other_language == len(english)
    assert {r.answer for r in chinese.records} <= {"是", "否"}
    validate = SLAKEDataset(root, split="validate")
    assert len(validate) == sum(1 for s, _ in english if s == "validate")
    with pytest.raises(ValueError, match="language"):
        SLAKEDataset(root, language="fr")


def test_slake_missing_split_file_is_named(world, tmp_path):
    out, _ = world
    root = _copy(out, "slake", tmp_path)
    (root / "test.json").unlink()
    assert len(SLAKEDataset(root, split="train")) > 0
    with pytest.raises(MissingFileError, match=r"test\.json.*SLAKE"):
        SLAKEDataset(root)


# ---- generic image/report pairs ----------------------------------------------------------------


def test_pairs_csv_with_counted_skips(world, tmp_path):
    out, _ = world
    annotation = _json(out / "iu_xray" / "annotation.json")
    entries = annotation["train"][:4]
    folder = tmp_path / "pairs"
    for entry in entries:
        source = out / "iu_xray" / "images" / entry["image_path"][0]
        (folder / "img" / entry["id"]).mkdir(parents=True)
        shutil.copy(source, folder / "img" / entry["id"] / "frontal.png")
    frame = pd.DataFrame(
        {
            "path": [f"img/{e['id']}/frontal.png" for e in entries] + ["img/absent.png"],
            "text": [entries[0]["report"], np.nan, "  ", entries[3]["report"], "Clear lungs."],
            "subject": ["007", "p2", "p3", "007", "p5"],
            "fold": ["train", "train", "test", "test", "train"],
        }
    )
    csv_path = folder / "pairs.csv"
    frame.to_csv(csv_path, index=False)
    dataset = ImageReportPairs(
        csv_path, "path", "text", patient_column="subject", split_column="fold"
    )
    assert dataset.n_rows == 5 and len(dataset) == 2
    assert [r.patient_id for r in dataset.records] == ["007", "007"]
    assert [r.split for r in dataset.records] == ["train", "test"]
    assert dataset.records[1].report.findings == entries[3]["report"]
    reasons = {p.source: p.reason for p in dataset.problems}
    assert reasons["pairs.csv row 3"].startswith("empty report")
    assert reasons["pairs.csv row 4"].startswith("empty report")
    assert reasons["img/absent.png"] == "image listed but missing"
    sample = dataset[0]
    assert sample.error == "" and sample.image.ndim == 3
    assert len(ImageReportPairs(csv_path, "path", "text", split_column="fold", split="test")) == 1

    with pytest.raises(DataError, match=r"pairs\.csv lacks column\(s\) \['report'\]"):
        ImageReportPairs(csv_path, "path")
    with pytest.raises(MissingFileError, match="pairs CSV"):
        ImageReportPairs(folder / "absent.csv")
