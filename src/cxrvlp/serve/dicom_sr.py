"""A DICOM Structured Report of the service's analysis of a DICOM radiograph, made with highdicom.

`structured_report(source, result)` turns the service's JSON for one image into a Comprehensive
SR in the source image's study; `sr_bytes` writes it as a DICOM file (explicit VR little endian).

Design. A plain Comprehensive SR with a template-free content tree, not a TID 1500 Measurement
Report: highdicom's `MeasurementReport` has no place for the narrative report or the notice, and
its measurement groups would hold region boxes that measure nothing. Standard templates are
used where they fit (TID 1204 language, TID 1002/1004 device observer, TID 4019 algorithm),
standard codes wherever pydicom's code dictionary has one, and private codes of the scheme
``99CXRVLP`` (declared in the Coding Scheme Identification Sequence) for the rest::

    CONTAINER  Chest X-ray analysis                                  (99CXRVLP)
    ├─ HAS CONCEPT MOD  Language = English (United States)           (TID 1204)
    ├─ HAS OBS CONTEXT  Observer Type = Device, Device Observer UID/Name/Model (TID 1002/1004)
    ├─ HAS CONCEPT MOD  TEXT Algorithm Name, Version, Parameters     (TID 4019)
    ├─ CONTAINS  TEXT  Research use notice                           (99CXRVLP)
    ├─ CONTAINS  TEXT  Narrative Summary = the report                (DCM 111412; if any)
    ├─ CONTAINS  CONTAINER  Findings                                 (DCM 121070)
    │   └─ CONTAINER  Model finding, one per finding                 (99CXRVLP)
    │       ├─ TEXT  Finding = "pleural effusion"                    (DCM 121071)
    │       ├─ NUM   Probability, unit "1" (no units)                (DCM 122157, UCUM)
    │       ├─ NUM   Entity classification score, "1"                (99CXRVLP; if any)
    │       ├─ TEXT  Score source                                    (99CXRVLP; if any)
    │       └─ TEXT  Finding Site = region name, one per region      (SCT 363698007)
    │           └─ HAS PROPERTIES  NUM Grounding weight, "1"         (99CXRVLP)
    └─ CONTAINS  CONTAINER  Anatomical region boxes                  (99CXRVLP)
        └─ CONTAINER  Anatomical region box, one per box             (99CXRVLP)
            ├─ TEXT    Anatomical Structure = region name            (SCT 91723000)
            ├─ SCOORD  Image Region, POLYLINE: the box as a closed rectangle of 5 points
            │   └─ SELECTED FROM  IMAGE  Source = the source image   (DCM 111030, SCT 260753009)
            └─ TEXT    Comment = why the box is a fallback           (DCM 121106; fallback only)

Boxes are ``[x1, y1, x2, y2]`` in the source image's pixels (x the column, y the row), written
unchanged as SCOORD (column, row) pairs: DICOM puts 0.0\\0.0 at the top left corner of the top
left pixel, as the boxes do. The SR has a new series and instance, the source's study and
patient (missing patient or study attributes stay empty), its image reference in the content
and in the Current Requested Procedure Evidence Sequence, and UTF-8 text. Scores that are not
finite numbers are left out. The document is unverified and preliminary: research output.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from io import BytesIO
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    ComprehensiveSR,
    ContainerContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    ImageRegion,
    LanguageOfContentItemAndDescendants,
    NumContentItem,
    ObservationContext,
    ObserverContext,
    RelationshipTypeValues,
    SourceImageForRegion,
    TextContentItem,
)
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from pydicom.valuerep import DA, TM

CONTAINS = RelationshipTypeValues.CONTAINS
HAS_PROPERTIES = RelationshipTypeValues.HAS_PROPERTIES

# Private codes: concepts that no standard code names. Every other concept is a standard code
# (DCM, SCT, UCUM) from pydicom's code dictionary.
PRIVATE_SCHEME = "99CXRVLP"
TITLE = CodedConcept("CXR-ANALYSIS", PRIVATE_SCHEME, "Chest X-ray analysis")
NOTICE = CodedConcept("NOTICE", PRIVATE_SCHEME, "Research use notice")
FINDING = CodedConcept("FINDING", PRIVATE_SCHEME, "Model finding")
ECLS_SCORE = CodedConcept("ECLS", PRIVATE_SCHEME, "Entity classification score")
SCORE_SOURCE = CodedConcept("SCORE-SOURCE", PRIVATE_SCHEME, "Score source")
GROUNDING_WEIGHT = CodedConcept("GROUNDING", PRIVATE_SCHEME, "Grounding weight")
REGIONS = CodedConcept("REGIONS", PRIVATE_SCHEME, "Anatomical region boxes")
REGION = CodedConcept("REGION", PRIVATE_SCHEME, "Anatomical region box")
ENGLISH = CodedConcept("en-US", "RFC5646", "English (United States)")
NO_UNITS = codes.UCUM.NoUnits  # "1": probabilities, ranking scores and weights

REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
# The Type 2 patient and study attributes highdicom reads from the evidence; absent or
# unparsable ones are written empty.
PATIENT_STUDY = {
    "PatientID": None,
    "PatientName": None,
    "PatientBirthDate": DA,
    "PatientSex": hd.PatientSexValues,
    "AccessionNumber": None,
    "StudyID": None,
    "StudyDate": DA,
    "StudyTime": TM,
}
FALLBACK_NOTE = {
    "detector": "fallback box: the detector did not find this region; "
    "the box is its mean position over the detector's training set",
    "whole image": "fallback box: no region detector was loaded; the box is the whole image",
}


def structured_report(
    source: pydicom.Dataset,
    result: dict[str, Any],
    *,
    series_number: int = 900,
    instance_number: int = 1,
    manufacturer: str = "cxrvlp",
) -> ComprehensiveSR:
    """A Comprehensive SR of ``result`` (the service's JSON for ``source``) in the source's study.

    ``source`` needs its Study/Series/SOP Instance UIDs and a SOP Class UID that highdicom
    knows (pixel data may be absent); a ``ValueError`` says what is missing. highdicom checks
    and copies the content tree as it builds it: a few seconds of CPU for 40 findings, so a
    web handler should call this off its event loop."""
    missing = [keyword for keyword in REQUIRED_UIDS if not source.get(keyword)]
    if missing:
        raise ValueError(f"the source DICOM lacks {', '.join(missing)}: the SR cannot reference it")
    model = result.get("model") or {}
    name = str(model.get("name") or manufacturer)
    version = str(model.get("version") or "unknown")
    recipe = model.get("recipe")

    root = ContainerContentItem(name=TITLE, is_content_continuous=False)
    try:
        root.ContentSequence = ContentSequence(
            [
                *LanguageOfContentItemAndDescendants(ENGLISH),
                *_observation_context(name, version, recipe, manufacturer),
                *AlgorithmIdentification(
                    name, version, parameters=[f"recipe={recipe}"] if recipe else None
                ),
                *_texts(result),
                _findings(result.get("findings") or []),
                _regions(result.get("regions") or [], source, result.get("region_source")),
            ]
        )
        return ComprehensiveSR(
            evidence=[_evidence(source)],
            content=root,
            series_instance_uid=generate_uid(),
            series_number=series_number,
            sop_instance_uid=generate_uid(),
            instance_number=instance_number,
            manufacturer=manufacturer,
            is_complete=True,
            series_description="cxrvlp chest X-ray analysis (research use only)",
            manufacturer_model_name=name,
            software_versions=version,
            coding_schemes=[
                CodingSchemeIdentificationItem(
                    PRIVATE_SCHEME,
                    name="cxrvlp private codes",
                    responsible_organization=manufacturer,
                )
            ],
            specific_character_set="ISO_IR 192",
        )
    except KeyError as error:  # highdicom's IOD tables raise KeyError for an unknown SOP class
        if "No IOD found" not in str(error):
            raise
        raise ValueError(
            f"highdicom knows no IOD for the source's SOP Class UID {source.SOPClassUID}"
        ) from error


def sr_bytes(sr: pydicom.Dataset) -> bytes:
    """The SR as a DICOM file (preamble, file meta, explicit VR little endian)."""
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, sr, enforce_file_format=True, little_endian=True, implicit_vr=False)
    return buffer.getvalue()


def _evidence(source: pydicom.Dataset) -> pydicom.Dataset:
    """The source without pixel or overlay data, its patient/study attributes made safe."""
    evidence = pydicom.Dataset()
    for element in source:
        group = element.tag.group
        if group == 0x7FE0 or (0x6000 <= group <= 0x60FF and element.tag.element == 0x3000):
            continue
        evidence.add(copy.deepcopy(element))  # never alter the caller's dataset
    for keyword, parse in PATIENT_STUDY.items():
        value = evidence.get(keyword)
        if value in (None, ""):
            setattr(evidence, keyword, None)
        elif parse is not None:
            try:
                parse(value)
            except ValueError:
                setattr(evidence, keyword, None)
    return evidence


def _observation_context(
    name: str, version: str, recipe: str | None, manufacturer: str
) -> ObservationContext:
    uid = generate_uid(entropy_srcs=["cxrvlp", name, version, str(recipe)])
    device = DeviceObserverIdentifyingAttributes(
        uid=uid,
        name=name,
        manufacturer_name=manufacturer,
        model_name=f"{name} {version}",
    )
    return ObservationContext(
        observer_device_context=ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def _texts(result: dict[str, Any]) -> list[TextContentItem]:
    items = []
    if result.get("notice"):
        items.append(TextContentItem(NOTICE, str(result["notice"]), CONTAINS))
    if result.get("report"):
        items.append(TextContentItem(codes.DCM.NarrativeSummary, str(result["report"]), CONTAINS))
    return items


def _number(
    name: CodedConcept, value: Any, relationship: RelationshipTypeValues
) -> list[NumContentItem]:
    """A NUM item in a list, or no item when ``value`` is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return []
    return [NumContentItem(name, float(value), NO_UNITS, relationship_type=relationship)]


def _findings(findings: Sequence[dict[str, Any]]) -> ContainerContentItem:
    section = ContainerContentItem(codes.DCM.Findings, False, relationship_type=CONTAINS)
    groups = []
    for finding in findings:
        items = [TextContentItem(codes.DCM.Finding, str(finding["name"]), CONTAINS)]
        items += _number(codes.DCM.Probability, finding.get("score"), CONTAINS)
        items += _number(ECLS_SCORE, finding.get("ecls"), CONTAINS)
        if finding.get("source"):
            items.append(TextContentItem(SCORE_SOURCE, str(finding["source"]), CONTAINS))
        for region in finding.get("regions") or []:
            site = TextContentItem(codes.SCT.FindingSite, str(region["name"]), CONTAINS)
            weight = _number(GROUNDING_WEIGHT, region.get("weight"), HAS_PROPERTIES)
            if weight:
                site.ContentSequence = ContentSequence(weight)
            items.append(site)
        group = ContainerContentItem(FINDING, False, relationship_type=CONTAINS)
        group.ContentSequence = ContentSequence(items)
        groups.append(group)
    if groups:
        section.ContentSequence = ContentSequence(groups)
    return section


def _regions(
    regions: Sequence[dict[str, Any]], source: pydicom.Dataset, region_source: str | None
) -> ContainerContentItem:
    # A multi-frame source is analysed in its first frame.
    frames = [1] if int(source.get("NumberOfFrames") or 1) > 1 else None
    section = ContainerContentItem(REGIONS, False, relationship_type=CONTAINS)
    groups = []
    for region in regions:
        box = np.asarray(region["box"], dtype=np.float64)
        if box.shape != (4,) or not np.isfinite(box).all():
            raise ValueError(f"region {region['name']!r}: box {region['box']!r} is not 4 numbers")
        x1, y1, x2, y2 = box
        corners = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], np.float32)
        items = [
            TextContentItem(codes.SCT.AnatomicalStructure, str(region["name"]), CONTAINS),
            ImageRegion(
                "POLYLINE",
                corners,
                SourceImageForRegion(str(source.SOPClassUID), str(source.SOPInstanceUID), frames),
            ),
        ]
        if region.get("fallback"):
            note = FALLBACK_NOTE.get(str(region_source), "fallback box: an estimated position")
            items.append(TextContentItem(codes.DCM.Comment, note, CONTAINS))
        group = ContainerContentItem(REGION, False, relationship_type=CONTAINS)
        group.ContentSequence = ContentSequence(items)
        groups.append(group)
    if groups:
        section.ContentSequence = ContentSequence(groups)
    return section
