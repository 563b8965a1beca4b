"""The DICOM SR of an analysis: written, read back, and checked item by item against the JSON."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO

import numpy as np
import pydicom
import pytest
from highdicom.sr import ComprehensiveSR
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    ComprehensiveSRStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from cxrvlp.constants import CHEST_IMAGENOME_REGIONS
from cxrvlp.serve.dicom_sr import sr_bytes, structured_report

REPORT = "FINDINGS: Small right pleural effusion. IMPRESSION: Right pleural effusion."
NOTICE = "Research use only: not a medical device."


def make_source(patient: bool = True) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    if patient:
        ds.PatientID = "P0001"
        ds.PatientName = "Doe^Jane"
        ds.PatientSex = "F"
        ds.StudyDate = "20240102"
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64).tobytes()
    return ds


def make_result(findings: int = 3) -> dict:
    regions = [
        {"name": name, "box": [i, 2 * i / 3, 10.5 + i, 20.25 + i], "fallback": i % 7 == 0}
        for i, name in enumerate(CHEST_IMAGENOME_REGIONS)
    ]
    names = ["pleural effusion", "cardiomegaly", "enlarged cardiomediastinum"]
    return {
        "model": {"name": "gkmvlp-tiny", "recipe": "gkmvlp", "version": "0.1.0"},
        "notice": NOTICE,
        "report": REPORT,
        "findings": [
            {
                "name": names[k],
                "score": round(0.83 - 0.2 * k, 4),
                "ecls": 1.5 - k if k != 1 else None,
                "source": "zero-shot",
                "regions": [
                    {"name": CHEST_IMAGENOME_REGIONS[k + j], "weight": 0.41 - 0.1 * j}
                    for j in range(3)
                ],
            }
            for k in range(findings)
        ],
        "regions": regions,
        "region_source": "detector",
    }


def read_back(source: pydicom.Dataset, result: dict) -> pydicom.Dataset:
    return pydicom.dcmread(BytesIO(sr_bytes(structured_report(source, result))))


def walk(items) -> Iterator[pydicom.Dataset]:
    for item in items:
        yield item
        yield from walk(item.get("ContentSequence", []))


def concept(item: pydicom.Dataset) -> str:
    return item.ConceptNameCodeSequence[0].CodeMeaning


def children(item: pydicom.Dataset, meaning: str) -> list[pydicom.Dataset]:
    return [child for child in item.get("ContentSequence", []) if concept(child) == meaning]


def num_value(item: pydicom.Dataset) -> float:
    assert item.ValueType == "NUM"
    measured = item.MeasuredValueSequence[0]
    assert measured.MeasurementUnitsCodeSequence[0].CodeValue == "1"
    assert float(measured.NumericValue) == pytest.approx(measured.FloatingPointValue)
    return measured.FloatingPointValue


def groups(sr: pydicom.Dataset, meaning: str) -> list[pydicom.Dataset]:
    return [
        i for i in walk(sr.ContentSequence) if i.ValueType == "CONTAINER" and concept(i) == meaning
    ]


def test_sr_is_in_the_source_study_and_reads_back_with_highdicom():
    source, result = make_source(), make_result()
    sr = read_back(source, result)
    assert sr.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert sr.Modality == "SR"
    assert sr.SOPClassUID == ComprehensiveSRStorage
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert (sr.SeriesNumber, sr.InstanceNumber) == (900, 1)
    assert (sr.PatientID, sr.PatientName, sr.PatientSex) == ("P0001", "Doe^Jane", "F")
    assert sr.ConceptNameCodeSequence[0].CodeMeaning == "Chest X-ray analysis"
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99CXRVLP"
    parsed = ComprehensiveSR.from_dataset(sr)  # highdicom parses and checks the content tree
    assert parsed.content[0].name.meaning == "Chest X-ray analysis"


def test_source_image_is_referenced_in_content_and_evidence():
    source = make_source()
    sr = read_back(source, make_result())
    expected = (source.SOPClassUID, source.SOPInstanceUID)
    references = [
        (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID)
        for item in walk(sr.ContentSequence)
        for ref in item.get("ReferencedSOPSequence", [])
    ]
    assert references == [expected] * len(CHEST_IMAGENOME_REGIONS)
    (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    (series,) = evidence.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    (instance,) = series.ReferencedSOPSequence
    assert (instance.ReferencedSOPClassUID, instance.ReferencedSOPInstanceUID) == expected


def test_report_notice_and_model_are_text_items():
    sr = read_back(make_source(), make_result())
    texts = {concept(i): i.TextValue for i in walk(sr.ContentSequence) if i.ValueType == "TEXT"}
    assert texts["Narrative Summary"] == REPORT
    assert texts["Research use notice"] == NOTICE
    assert texts["Algorithm Name"] == "gkmvlp-tiny"
    assert texts["Algorithm Version"] == "0.1.0"
    assert texts["Algorithm Parameters"] == "recipe=gkmvlp"
    assert texts["Device Observer Name"] == "gkmvlp-tiny"


def test_region_boxes_are_closed_rectangles_on_the_source_image():
    result = make_result()
    sr = read_back(make_source(), result)
    scoords = [i for i in walk(sr.ContentSequence) if i.ValueType == "SCOORD"]
    assert len(scoords) == len(CHEST_IMAGENOME_REGIONS)
    boxes = groups(sr, "Anatomical region box")
    assert len(boxes) == len(result["regions"])
    for group, region in zip(boxes, result["regions"], strict=True):
        (label,) = children(group, "Anatomical Structure")
        assert label.TextValue == region["name"]
        (scoord,) = children(group, "Image Region")
        assert scoord.GraphicType == "POLYLINE"
        points = np.asarray(scoord.GraphicData, np.float64).reshape(-1, 2)
        x1, y1, x2, y2 = region["box"]
        rectangle = [[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]]
        np.testing.assert_allclose(points, rectangle, rtol=1e-6)
        comments = children(group, "Comment")
        assert len(comments) == int(region["fallback"])
        if region["fallback"]:
            assert comments[0].TextValue.startswith("fallback box")


def test_finding_scores_and_grounded_regions():
    result = make_result()
    sr = read_back(make_source(), result)
    findings = groups(sr, "Model finding")
    assert len(findings) == len(result["findings"])
    for group, finding in zip(findings, result["findings"], strict=True):
        (name,) = children(group, "Finding")
        assert name.TextValue == finding["name"]
        (probability,) = children(group, "Probability")
        assert num_value(probability) == finding["score"]
        ecls = children(group, "Entity classification score")
        assert [num_value(i) for i in ecls] == ([finding["ecls"]] if finding["ecls"] else [])
        (source,) = children(group, "Score source")
        assert source.TextValue == "zero-shot"
        sites = children(group, "Finding Site")
        assert [s.TextValue for s in sites] == [r["name"] for r in finding["regions"]]
        weights = [num_value(children(s, "Grounding weight")[0]) for s in sites]
        assert weights == pytest.approx([r["weight"] for r in finding["regions"]])


def test_source_without_patient_read_without_pixels():
    buffer = BytesIO()
    make_source(patient=False).save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    source = pydicom.dcmread(buffer, stop_before_pixels=True)
    assert "PatientID" not in source and "PixelData" not in source
    sr = read_back(source, make_result())
    assert sr.PatientID == "" and sr.PatientName == "" and sr.StudyDate == ""
    assert sr.StudyInstanceUID == source.StudyInstanceUID


def test_invalid_patient_attributes_are_left_empty():
    source = make_source()
    with pytest.warns(UserWarning, match="Invalid value"):
        source.PatientSex, source.StudyDate = "female", "2024-01-02"
    sr = read_back(source, make_result())
    assert (sr.PatientID, sr.PatientSex, sr.StudyDate) == ("P0001", "", "")
    assert source.PatientSex == "female"  # the caller's dataset is left as it was


def test_no_findings_and_no_report():
    result = make_result(findings=0)
    result["report"] = None
    sr = read_back(make_source(), result)
    (section,) = groups(sr, "Findings")
    assert "ContentSequence" not in section
    assert not groups(sr, "Model finding")
    assert not [i for i in walk(sr.ContentSequence) if concept(i) == "Narrative Summary"]
    assert len([i for i in walk(sr.ContentSequence) if i.ValueType == "SCOORD"]) == 29


def test_source_without_uid_or_with_an_unknown_sop_class_is_refused():
    source = make_source()
    del source.SeriesInstanceUID
    with pytest.raises(ValueError, match="SeriesInstanceUID"):
        structured_report(source, make_result())
    source = make_source()
    source.SOPClassUID = "1.2.3.4.5"
    with pytest.raises(ValueError, match=r"SOP Class UID 1\.2\.3\.4\.5"):
        structured_report(source, make_result())
