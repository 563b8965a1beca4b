"""Generate a whole synthetic world: every cohort rendered and exported in the real formats.

Each cohort (one per real data set) has its own patients. Every patient's randomness comes
from a seed derived from (world seed, cohort, patient), so the output does not depend on how
many worker processes render it: the same seed gives the same bytes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cxrvlp.synth.anatomy import sample_anatomy
from cxrvlp.synth.questions import write_questions
from cxrvlp.synth.render import render_frontal, render_lateral
from cxrvlp.synth.report import ReportNoise, write_report
from cxrvlp.synth.scene import (
    COVID_NAME,
    FINDING_TYPES,
    SAMPLED_FINDINGS,
    Scene,
    place_finding,
    sample_scene,
)
from cxrvlp.synth.study import RenderedStudy


@dataclass(frozen=True)
class CohortSpec:
    """How one exported data set's patients and images look."""

    name: str
    aspect: float  # height / width of its images
    ap_fraction: float  # share of portable AP films
    lateral_fraction: float  # share of studies that also have a lateral view
    studies_per_patient: tuple[float, ...]  # probabilities of 1, 2, 3 ... studies
    split_fractions: tuple[float, float, float]  # train, validate, test
    # (finding, probability): each study's scene gets the finding with that probability (on
    # top of the findings drawn for it), as a data set built around one finding has it often.
    enriched: tuple[tuple[str, float], ...] = ()


# The cohort's index in COHORTS seeds its patients: new cohorts go at the end.
COHORTS: dict[str, CohortSpec] = {
    spec.name: spec
    for spec in (
        CohortSpec(
            "mimic",
            aspect=1.15,
            ap_fraction=0.35,
            lateral_fraction=0.4,
            studies_per_patient=(0.55, 0.3, 0.15),
            split_fractions=(0.8, 0.1, 0.1),
        ),
        CohortSpec(
            "rsna",
            aspect=1.0,
            ap_fraction=0.45,
            lateral_fraction=0.0,
            studies_per_patient=(1.0,),
            split_fractions=(0.7, 0.15, 0.15),
        ),
        CohortSpec(
            "nih",
            aspect=1.0,
            ap_fraction=0.3,
            lateral_fraction=0.0,
            studies_per_patient=(0.6, 0.3, 0.1),
            split_fractions=(0.7, 0.1, 0.2),
        ),
        CohortSpec(
            "chexpert",
            aspect=1 / 1.15,
            ap_fraction=0.5,
            lateral_fraction=0.3,
            studies_per_patient=(0.7, 0.3),
            split_fractions=(0.8, 0.1, 0.1),
        ),
        CohortSpec(
            "iu_xray",
            aspect=1.0,
            ap_fraction=0.0,
            lateral_fraction=1.0,
            studies_per_patient=(1.0,),
            split_fractions=(0.7, 0.1, 0.2),
        ),
        CohortSpec(
            "vqa_rad",
            aspect=1.0,
            ap_fraction=0.3,
            lateral_fraction=0.0,
            studies_per_patient=(1.0,),
            split_fractions=(0.75, 0.0, 0.25),
        ),
        CohortSpec(
            "slake",
            aspect=1.0,
            ap_fraction=0.3,
            lateral_fraction=0.0,
            studies_per_patient=(1.0,),
            split_fractions=(0.7, 0.1, 0.2),
        ),
        # SIIM-ACR: about 22 % of images have a pneumothorax; a margin keeps tiny worlds mixed.
        CohortSpec(
            "siim",
            aspect=1.0,
            ap_fraction=0.3,
            lateral_fraction=0.0,
            studies_per_patient=(1.0,),
            split_fractions=(0.7, 0.15, 0.15),
            enriched=(("pneumothorax", 0.3),),
        ),
        # COVIDx: about half positive; many of its films are portable AP.
        CohortSpec(
            "covidx",
            aspect=1.0,
            ap_fraction=0.5,
            lateral_fraction=0.0,
            studies_per_patient=(1.0,),
            split_fractions=(0.8, 0.1, 0.1),
            enriched=((COVID_NAME, 0.5),),
        ),
    )
}
SPLITS = ("train", "validate", "test")
# Where each cohort's exporter puts the data sets it writes: reader name -> folder of the world.
DATA_FOLDERS = {
    "mimic": {"mimic-cxr": "mimic-cxr-jpg"},
    "rsna": {"rsna": "rsna"},
    "nih": {"nih": "nih"},
    "chexpert": {"chexpert": "chexpert"},
    "iu_xray": {"iu-xray": "iu_xray"},
    "vqa_rad": {"vqa-rad": "vqa_rad"},
    "slake": {"slake": "slake"},
    "siim": {"siim": "siim"},
    "covidx": {"covidx": "covidx"},
}
DATA_FILE = "data.yaml"


@dataclass(frozen=True)
class WorldConfig:
    out: Path
    studies: int  # MIMIC-CXR (pre-training) studies
    seed: int = 0
    image_size: int = 512
    downstream_fraction: float = 0.25  # each downstream cohort's studies per MIMIC study
    workers: int = 1
    noise: ReportNoise = field(default_factory=ReportNoise)
    # (cohort, studies) pairs that replace the downstream fraction for those cohorts.
    cohort_sizes: tuple[tuple[str, int], ...] = ()

    def cohort_studies(self, cohort: str) -> int:
        if cohort == "mimic":
            return self.studies
        sizes = dict(self.cohort_sizes)
        if cohort in sizes:
            return max(8, sizes[cohort])
        return max(8, round(self.studies * self.downstream_fraction))


@dataclass(frozen=True)
class PatientTask:
    cohort: str
    patient_index: int
    n_studies: int
    split: str
    seed: int
    image_size: int
    noise: ReportNoise


def _patient_tasks(config: WorldConfig, cohort_index: int, cohort: str) -> list[PatientTask]:
    """Patients of one cohort, with their study counts and a patient-level split."""
    spec = COHORTS[cohort]
    rng = np.random.default_rng([config.seed, cohort_index, 0xC0FFEE])
    wanted = config.cohort_studies(cohort)
    counts: list[int] = []
    while sum(counts) < wanted:
        n = int(rng.choice(len(spec.studies_per_patient), p=spec.studies_per_patient)) + 1
        counts.append(min(n, wanted - sum(counts)))
    order = rng.permutation(len(counts))
    bounds = np.cumsum(spec.split_fractions) * len(counts)
    splits = [""] * len(counts)
    for rank, patient in enumerate(order):
        splits[patient] = SPLITS[int(np.searchsorted(bounds, rank, side="right"))]
    _ensure_evaluation_splits(splits, spec)
    return [
        PatientTask(
            cohort, i, n, splits[i], int(rng.integers(2**63)), config.image_size, config.noise
        )
        for i, n in enumerate(counts)
    ]


def _ensure_evaluation_splits(splits: list[str], spec: CohortSpec) -> None:
    """Tiny worlds still get at least one validate/test patient where the cohort has them."""
    for split, fraction in zip(SPLITS[1:], spec.split_fractions[1:], strict=True):
        if fraction > 0 and split not in splits and splits.count("train") > 1:
            splits[len(splits) - 1 - splits[::-1].index("train")] = split


def _evolve(rng: np.random.Generator, previous: Scene) -> Scene:
    """A follow-up study: most findings persist, some resolve, a new one may appear."""
    kept = tuple(f for f in previous.findings if rng.random() < 0.65)
    anatomy = previous.base_anatomy
    if rng.random() < 0.3:
        present = {f.name for f in kept}
        candidates = [name for name in SAMPLED_FINDINGS if name not in present]
        name = candidates[int(rng.integers(len(candidates)))]
        kept = (*kept, place_finding(rng, anatomy, name, anatomy.region_boxes()))
    return Scene(anatomy, kept)


def _enrich(
    rng: np.random.Generator, scene: Scene, enriched: tuple[tuple[str, float], ...]
) -> Scene:
    """The scene with each enriched finding added with its probability (a new placement
    replaces one of the same name). No draws without enrichment: other cohorts are as before."""
    for name, probability in enriched:
        if rng.random() < probability:
            anatomy = scene.base_anatomy
            added = place_finding(rng, anatomy, name, anatomy.region_boxes())
            findings = [*scene.without(name).findings, added]
            order = list(FINDING_TYPES)
            findings.sort(key=lambda finding: order.index(finding.name))
            scene = Scene(anatomy, tuple(findings))
    return scene


def render_patient(task: PatientTask) -> list[RenderedStudy]:
    """All studies of one patient, in time order (runs in a worker process)."""
    spec = COHORTS[task.cohort]
    rng = np.random.default_rng(task.seed)
    sex = "F" if rng.random() < 0.48 else "M"
    age = int(np.clip(rng.normal(62, 16), 18, 95))
    width = task.image_size
    height = round(task.image_size * spec.aspect)
    view = "AP" if rng.random() < spec.ap_fraction else "PA"
    anatomy = sample_anatomy(rng, width, height, view, sex)
    studies: list[RenderedStudy] = []
    previous: Scene | None = None
    for index in range(task.n_studies):
        study_seed = int(rng.integers(2**63))
        study_rng = np.random.default_rng(study_seed)
        scene = (
            sample_scene(study_rng, anatomy) if previous is None else _evolve(study_rng, previous)
        )
        scene = _enrich(study_rng, scene, spec.enriched)
        frontal = render_frontal(scene, study_rng)
        has_lateral = spec.lateral_fraction == 1.0 or (
            view == "PA" and study_rng.random() < spec.lateral_fraction
        )
        lateral = render_lateral(scene, study_rng) if has_lateral else None
        report = write_report(scene, study_rng, previous=previous, noise=task.noise)
        questions = tuple(write_questions(scene, study_rng))
        studies.append(
            RenderedStudy(
                cohort=task.cohort,
                patient_index=task.patient_index,
                study_index=index,
                seed=study_seed,
                split=task.split,
                age=age + index,
                scene=scene,
                frontal=frontal,
                lateral=lateral,
                report=report,
                questions=questions,
            )
        )
        previous = scene
    return studies


@dataclass
class WorldSummary:
    seed: int
    image_size: int
    cohorts: dict[str, dict[str, int]]
    findings: dict[str, int]
    normal_studies: int
    total_studies: int
    total_images: int


def _stream(tasks: list[PatientTask], workers: int) -> Iterator[list[RenderedStudy]]:
    if workers <= 1:
        yield from map(render_patient, tasks)
        return
    context = multiprocessing.get_context("spawn" if os.name == "nt" else "fork")
    with context.Pool(workers) as pool:
        yield from pool.imap(render_patient, tasks, chunksize=2)


def generate_world(
    config: WorldConfig, cohorts: tuple[str, ...] = tuple(COHORTS), progress: bool = True
) -> tuple[WorldSummary, list[RenderedStudy]]:
    """Render and export every cohort under ``config.out``; return a summary and the
    first frontal studies of the first cohort (for the preview)."""
    from cxrvlp.synth.writers import EXPORTERS

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    all_tasks = {
        cohort: _patient_tasks(config, list(COHORTS).index(cohort), cohort) for cohort in cohorts
    }
    total = sum(task.n_studies for tasks in all_tasks.values() for task in tasks)
    findings: Counter[str] = Counter()
    cohort_counts: dict[str, dict[str, int]] = {}
    normal = images = 0
    sample: list[RenderedStudy] = []
    # Redirected output (CI logs) gets an update every few seconds, not a line per study.
    interval = 0.1 if sys.stderr.isatty() else 5.0
    bar = tqdm(total=total, desc="synth", unit="study", disable=not progress, mininterval=interval)
    with (out / "truth.jsonl").open("w") as truth:
        for cohort, tasks in all_tasks.items():
            exporter = EXPORTERS[cohort](out)
            counts = Counter()
            for patient_studies in _stream(tasks, config.workers):
                for study in patient_studies:
                    rows = exporter.add(study)
                    for row in rows:
                        truth.write(json.dumps(row) + "\n")
                    counts["studies"] += 1
                    counts["images"] += len(rows)
                    counts[study.split] += 1
                    findings.update(f.name for f in study.scene.findings)
                    normal += study.scene.is_normal
                    if len(sample) < 16 and cohort == cohorts[0]:
                        sample.append(study)
                    bar.update(1)
                    bar.set_postfix(cohort=cohort)
                counts["patients"] += 1
            exporter.close()
            cohort_counts[cohort] = dict(counts)
            images += counts["images"]
    bar.close()
    summary = WorldSummary(
        seed=config.seed,
        image_size=config.image_size,
        cohorts=cohort_counts,
        findings=dict(sorted(findings.items())),
        normal_studies=normal,
        total_studies=total,
        total_images=images,
    )
    (out / "world.json").write_text(json.dumps(asdict(summary), indent=2, sort_keys=True) + "\n")
    write_world_data_file(out, cohorts)
    return summary, sample


def write_world_data_file(out: Path, cohorts: tuple[str, ...]) -> Path:
    """``data.yaml`` of the world (`cxrvlp benchmark --data`), paths relative to it."""
    from cxrvlp.benchmark.protocol import DataSources, write_data_file

    roots = {name: out / folder for c in cohorts for name, folder in DATA_FOLDERS[c].items()}
    sources = DataSources(roots=roots, pretraining=out if "mimic" in cohorts else None)
    comment = "Data file of a `cxrvlp synth` world: cxrvlp benchmark --data THIS_FILE ..."
    return write_data_file(out / DATA_FILE, sources, comment)


def run_timed(config: WorldConfig, **kwargs) -> tuple[WorldSummary, list[RenderedStudy], float]:
    start = time.perf_counter()
    summary, sample = generate_world(config, **kwargs)
    return summary, sample, time.perf_counter() - start
