"""A rendered synthetic study: everything an exporter needs to write one study's files."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrvlp.synth.questions import QuestionAnswer
from cxrvlp.synth.report import Report
from cxrvlp.synth.scene import Scene


@dataclass(frozen=True)
class RenderedStudy:
    """One study of one patient of one cohort (each export is a cohort of its own patients).

    Images are float32 arrays in [0, 1], shape (height, width), displayed-radiograph
    convention: dense (bone, fluid) is bright, air is dark. ``study_index`` counts this
    patient's studies from 0 in time order.
    """

    cohort: str  # a COHORTS name: "mimic", "rsna", "nih", ..., "siim", "covidx"
    patient_index: int
    study_index: int
    seed: int  # the study's own seed: identifiers may be derived from it
    split: str  # "train", "validate" or "test" (exporters map it to each format's names)
    age: int
    scene: Scene  # the frontal image's truth (sex, view, size are in scene.anatomy)
    frontal: np.ndarray
    lateral: np.ndarray | None
    report: Report
    questions: tuple[QuestionAnswer, ...]
