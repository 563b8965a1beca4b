"""Writers of synthetic studies in the real dataset layouts of DATA_FORMATS.md.

One exporter per cohort, each a world of its own patients under one root folder:

    exporter = EXPORTERS["mimic"](out_dir)
    for study in studies:            # one at a time, in order: images go to disk at once
        truth_rows += exporter.add(study)
    exporter.close()                 # index files (CSV / JSON) are written here

Images are written at the exact size of their arrays, so every box of the truth rows is in
the exported image's pixel coordinates. Chest ImaGenome's ``x1, y1, x2, y2, width, height``
are those pixel coordinates scaled to a 224 x 224 image (``x * 224 / W``, ``y * 224 / H``),
as the real release scales them; ``original_*`` are the pixel coordinates themselves.

Everything is deterministic: identifiers come from hashes of (cohort, patient, study), a
collision moves an identifier to the next free value, question ids count in arrival order,
gzip carries no time or file name, PNG no time chunk, DICOM no timestamp and only UIDs
derived from the study.

Truth rows (one per exported image) carry ``split`` in the dataset's own split names
(MIMIC ``validate``, CheXpert ``valid``, NIH ``train_val``, COVIDx ``val``, ...; RSNA and SIIM
ship everything as ``train``). Splits are per patient: a patient keeps the split of its first
study. SIIM rows add ``pneumothorax_pixels``, the size of the image's exported mask.
"""

from __future__ import annotations

from cxrvlp.synth.writers.base import Exporter, ExportError
from cxrvlp.synth.writers.chexpert import ChexpertExporter
from cxrvlp.synth.writers.covidx import CovidxExporter
from cxrvlp.synth.writers.iu_xray import IuXrayExporter
from cxrvlp.synth.writers.mimic import MimicExporter
from cxrvlp.synth.writers.nih import NihExporter
from cxrvlp.synth.writers.rsna import RsnaExporter
from cxrvlp.synth.writers.siim import SiimExporter
from cxrvlp.synth.writers.slake import SlakeExporter
from cxrvlp.synth.writers.vqa_rad import VqaRadExporter

__all__ = ["EXPORTERS", "ExportError", "Exporter"]

# cohort name (as in world.COHORTS) -> its exporter
EXPORTERS: dict[str, type[Exporter]] = {
    "mimic": MimicExporter,
    "rsna": RsnaExporter,
    "nih": NihExporter,
    "chexpert": ChexpertExporter,
    "iu_xray": IuXrayExporter,
    "vqa_rad": VqaRadExporter,
    "slake": SlakeExporter,
    "siim": SiimExporter,
    "covidx": CovidxExporter,
}
