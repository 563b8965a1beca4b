"""The DICOM files of the Kaggle sets built on NIH images (RSNA, SIIM), with no timestamp and
only UIDs derived from the study."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from cxrvlp.synth.study import RenderedStudy
from cxrvlp.synth.writers.base import write_bytes


def write_dicom(path: Path, dataset: pydicom.Dataset) -> None:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    write_bytes(path, buffer.getvalue())


def kaggle_dicom(
    study: RenderedStudy,
    *,
    source: str,
    key: str,
    patient_id: str,
    sop_class: str,
    stored: np.ndarray,
    bits: int,
    photometric: str,
    spacing: float,
) -> pydicom.Dataset:
    """The de-identified frontal DICOM of the Kaggle sets built on NIH images (RSNA, SIIM):
    placeholder date and time, the patient id as name, ``view: PA`` as series description,
    and UIDs derived from (source, key). ``stored`` holds ``bits`` of uint8 or uint16 pixels.
    """

    def uid(kind: str) -> str:
        return generate_uid(entropy_srcs=["cxrvlp", source, key, kind])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uid("instance")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    # The Kaggle sets' de-identified dates and times are all the same placeholder.
    ds.StudyDate = "19010101"
    ds.StudyTime = "000000.00"
    ds.AccessionNumber = ""
    ds.Modality = "CR"
    ds.ConversionType = "WSD"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = f"view: {study.scene.anatomy.view}"
    ds.PatientName = patient_id
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = study.scene.anatomy.sex
    ds.PatientAge = f"{study.age:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = study.scene.anatomy.view
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = stored.shape
    ds.PixelSpacing = [f"{spacing}"] * 2
    ds.BitsAllocated = 8 if stored.dtype == np.uint8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    data = stored.astype("<u2").tobytes() if ds.BitsAllocated == 16 else stored.tobytes()
    ds.PixelData = data + b"\0" * (len(data) % 2)  # values have even length
    return ds
