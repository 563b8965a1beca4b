"""Synthetic studies as SIIM-ACR Pneumothorax, with run-length encoded masks."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import ClassVar

from pydicom.uid import SecondaryCaptureImageStorage

from cxrvlp.synth.render import pneumothorax_mask
from cxrvlp.synth.study import RenderedStudy
from cxrvlp.synth.writers.base import (
    NIH_PIXEL_SPACINGS,
    WORLD_SPLITS,
    Exporter,
    check_frontal,
    pixels8,
    stable_digest,
    stable_number,
    write_text,
)
from cxrvlp.synth.writers.dicom import kaggle_dicom, write_dicom

SIIM_RLE_HEADER = "ImageId, EncodedPixels"  # with the leading space, as shipped
SIIM_IMAGES = "dicom-images-train"


class SiimExporter(Exporter):
    """SIIM-ACR Pneumothorax: train-rle.csv (one row per image, ``-1`` without pneumothorax) and
    one 8-bit MONOCHROME2 DICOM per image, as on Kaggle, under
    ``dicom-images-train/<StudyInstanceUID>/<SeriesInstanceUID>/<ImageId>.dcm`` with ImageId
    the SOPInstanceUID. The mask is `render.pneumothorax_mask`: the pneumothorax as drawn.
    Everything is ``train`` (the labelled release); readers split it themselves.
    """

    folder = "siim"
    split_names: ClassVar[dict[str, str]] = {s: "train" for s in WORLD_SPLITS}

    def __init__(self, out_dir: Path) -> None:
        # The reader's own encoding, so that its decoding is the exact inverse. Imported here:
        # the readers' package imports torch, which no other exporter needs.
        from cxrvlp.data.readers.siim import encode_rle

        super().__init__(out_dir)
        self._encode_rle = encode_rle
        self._rows: list[str] = []

    def add(self, study: RenderedStudy) -> list[dict]:
        check_frontal(study)
        split = self._split(study)
        patient_id = str(
            uuid.UUID(bytes=stable_digest("siim", study.patient_index)[:16], version=4)
        )
        ds = kaggle_dicom(
            study,
            source="siim",
            key=f"{patient_id}/{study.study_index}",
            patient_id=patient_id,
            sop_class=SecondaryCaptureImageStorage,
            stored=pixels8(study.frontal),
            bits=8,
            photometric="MONOCHROME2",
            spacing=NIH_PIXEL_SPACINGS[stable_number("siim-spacing", study.patient_index) % 3],
        )
        image_id = str(ds.SOPInstanceUID)
        mask = pneumothorax_mask(study.scene)
        self._rows.append(f"{image_id},{self._encode_rle(mask)}")
        series = self.base / SIIM_IMAGES / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID)
        path = series / f"{image_id}.dcm"
        write_dicom(path, ds)
        row = self._truth(
            study,
            path,
            study.frontal,
            image_id=image_id,
            study_id=str(ds.StudyInstanceUID),
            patient_id=patient_id,
            view=study.scene.anatomy.view,
            split=split,
            regions=study.scene.region_boxes(),
        )
        return [row | {"pneumothorax_pixels": int(mask.sum())}]

    def close(self) -> None:
        write_text(
            self.base / "train-rle.csv",
            "".join(f"{line}\n" for line in [SIIM_RLE_HEADER, *self._rows]),
        )
