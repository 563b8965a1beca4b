"""What `cxrvlp benchmark` runs, and on which files.

A *data file* says where each data set lives (the reader names of :mod:`cxrvlp.data.readers`),
so the same protocol runs on the publishers' releases or on a `cxrvlp synth` world. A
*protocol* lists evaluations of the pre-trained models and fine-tuning runs; it expands into a
flat list of :class:`Run`, each with a stable folder name, so a finished run is never redone.

Data file (paths relative to the file)::

    pretraining: /data/mimic          # holds mimic-cxr-jpg/, mimic-cxr-reports/, chest-imagenome/
    datasets:
      rsna: /data/rsna-pneumonia
      vqa-rad: {root: /data/vqa-rad, boxes: boxes/vqa-rad.jsonl}   # `detector annotate` output

Protocol (shipped ones: ``cxrvlp benchmark --list-protocols``)::

    fractions: [0.01, 1.0]            # label fractions of every fine-tuning run (by patient)
    seeds: [0]
    models: all                       # 'random' plus every --models NAME, or a list of names
    evaluations:
      - {task: retrieval}
      - {task: zero-shot, datasets: [rsna, nih]}
    finetune:
      - {task: classification, dataset: rsna, linear_probe: true, steps: 40}
      - {task: localization, dataset: rsna, steps: 250, batch_size: 8, lr: 3.0e-4, seeds: [0, 1]}
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cxrvlp.data.readers import READERS
from cxrvlp.tasks.evaluation import EVALUATIONS
from cxrvlp.tasks.task import TASK_MODULES

PROTOCOLS_DIR = Path(__file__).parent / "protocols"
RANDOM_INIT = "random"
ALL_MODELS = "all"
SEED_SUFFIX = "-seed"  # run name ending of every seed but 0 (seed 0 keeps the plain name)
PRETRAINING_DATA = "pretraining"  # the data file's key of the pre-training root
# Tasks whose model runs the GK module on region boxes (the data file's `boxes`): GK-MVLP's
# image-report encoder and report decoder, which an ASG model does not have.
REGION_BOX_TASKS = ("generation", "vqa")
# Measured seconds of a run on the 2-core CPU with gkmvlp-tiny (set-up and scoring, then per
# training step at the task's batch size): only for --dry-run and the ETA, never a limit.
SECONDS = {
    "retrieval": (15, 0.0),
    "grounding": (30, 0.0),
    "entities": (15, 0.0),
    "tags": (15, 0.0),
    "zero-shot": (10, 0.0),
    "classification": (15, 0.25),
    "localization": (20, 0.45),
    "segmentation": (20, 0.5),
    "generation": (60, 0.6),
    "vqa": (40, 0.6),
}
RUN_KEYS = {"task", "dataset", "datasets", "linear_probe", "steps", "lr", "batch_size",
            "fractions", "seeds", "models"}  # fmt: skip
PROTOCOL_KEYS = {"name", "description", "fractions", "seeds", "models", "evaluations",
                 "finetune", "batch_size", "threads"}  # fmt: skip


class ProtocolError(ValueError):
    """A protocol or data file that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class DataSources:
    """Where each data set lives: reader name -> root, optional region-box files, and the
    pre-training root (for the evaluations of the pre-trained models)."""

    roots: dict[str, Path]
    boxes: dict[str, Path] = field(default_factory=dict)
    pretraining: Path | None = None
    source: str = "<data>"

    def root_of(self, dataset: str) -> Path | None:
        return self.pretraining if dataset == PRETRAINING_DATA else self.roots.get(dataset)

    def to_dict(self) -> dict[str, Any]:
        datasets: dict[str, dict[str, str]] = {}
        for name, root in self.roots.items():
            datasets[name] = {"root": str(root)}
            if name in self.boxes:
                datasets[name]["boxes"] = str(self.boxes[name])
        document: dict[str, Any] = {"datasets": datasets}
        if self.pretraining is not None:
            document[PRETRAINING_DATA] = str(self.pretraining)
        return document


def load_data_file(path: str | Path) -> DataSources:
    path = Path(path)
    if not path.is_file():
        raise ProtocolError(
            f"data file {path} not found: write one (see `cxrvlp benchmark --help`), or use the "
            "data.yaml that `cxrvlp synth` writes into its world"
        )
    try:
        document = OmegaConf.to_container(OmegaConf.load(path)) or {}
    except Exception as error:
        raise ProtocolError(f"{path}: not valid YAML ({error})") from error
    return data_sources(document, base=path.parent, source=str(path))


def data_sources(document: dict[str, Any], base: Path, source: str = "<data>") -> DataSources:
    """A data file's content; relative paths are taken from ``base``."""
    unknown_keys = set(document) - {"datasets", PRETRAINING_DATA}
    if unknown_keys:
        raise ProtocolError(
            f"{source}: unknown keys {sorted(unknown_keys)}; a data file has 'datasets' and "
            f"'{PRETRAINING_DATA}'"
        )
    roots, boxes = {}, {}
    for name, entry in (document.get("datasets") or {}).items():
        if name not in READERS:
            raise ProtocolError(
                f"{source}: unknown data set {name!r}; the readers are {', '.join(READERS)}"
            )
        entry = {"root": entry} if isinstance(entry, str) else dict(entry or {})
        if not entry.get("root") or set(entry) - {"root", "boxes"}:
            raise ProtocolError(
                f"{source}: data set {name!r} needs 'root' (and optionally 'boxes'), got {entry}"
            )
        roots[name] = base / str(entry["root"])
        if entry.get("boxes"):
            boxes[name] = base / str(entry["boxes"])
    pretraining = document.get(PRETRAINING_DATA)
    return DataSources(
        roots=roots,
        boxes=boxes,
        pretraining=None if pretraining is None else base / str(pretraining),
        source=source,
    )


def write_data_file(path: Path, sources: DataSources, comment: str = "") -> Path:
    """Write ``sources`` as a data file whose paths are relative to its own folder, so that it
    reads back the same from any working directory and moves with the folder it sits in."""
    base = Path(path).parent.resolve()

    def relative(target: Path) -> Path:
        return Path(os.path.relpath(Path(target).resolve(), base))

    portable = DataSources(
        roots={name: relative(root) for name, root in sources.roots.items()},
        boxes={name: relative(boxes) for name, boxes in sources.boxes.items()},
        pretraining=None if sources.pretraining is None else relative(sources.pretraining),
    )
    text = OmegaConf.to_yaml(OmegaConf.create(portable.to_dict()))
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    path.write_text(header + text)
    return path


@dataclass(frozen=True)
class Run:
    """One evaluation or fine-tuning run of a protocol."""

    kind: str  # "evaluate" or "finetune"
    task: str
    dataset: str  # a reader name, or "pretraining"
    model: str  # "random" or a --models name
    fraction: float = 1.0
    seed: int = 0
    linear_probe: bool = False
    steps: int | None = None
    lr: float | None = None
    batch_size: int | None = None

    @property
    def name(self) -> str:
        """The run's folder name: stable, so that a finished run is found again."""
        if self.kind == "evaluate":
            if EVALUATIONS[self.task].reads == "dataset":
                return f"{self.task}-{self.dataset}-{self.model}"
            return f"{self.task}-{self.model}"
        mode = "probe" if self.linear_probe else "tune"
        base = f"{self.task}-{self.dataset}-{mode}-{self.model}-{self.fraction:g}"
        return f"{base}{SEED_SUFFIX}{self.seed}" if self.seed else base

    @property
    def folder(self) -> str:
        return "evaluate" if self.kind == "evaluate" else "finetune"

    def estimated_seconds(self) -> float:
        setup, per_step = SECONDS.get(self.task, (30, 0.5))
        return setup + per_step * (self.steps or 0)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "folder": self.folder, **asdict(self)}


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    runs: list[Run]
    source: str


def protocol_names() -> list[str]:
    return sorted(p.stem for p in PROTOCOLS_DIR.glob("*.yaml"))


def protocol_path(name_or_path: str | Path) -> Path:
    """A shipped protocol by name (``quick``, ``full``, ``paper``, ``pretraining``) or a YAML
    file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ProtocolError(f"protocol file {path} not found")
        return path
    shipped = PROTOCOLS_DIR / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise ProtocolError(
            f"unknown protocol {name_or_path!r}: choose from {', '.join(protocol_names())} "
            "or pass a YAML file"
        )
    return shipped


def load_protocol(
    name_or_path: str | Path, models: list[str], overrides: list[str] | None = None
) -> Protocol:
    """Expand a protocol for the pre-trained ``models`` (their --models names); ``overrides``
    are OmegaConf dot-list changes of the protocol (e.g. ``fractions=[1.0]``)."""
    path = protocol_path(name_or_path)
    try:
        document = OmegaConf.load(path)
        if overrides:
            document = OmegaConf.merge(document, OmegaConf.from_dotlist(list(overrides)))
        spec = OmegaConf.to_container(document) or {}
    except Exception as error:
        raise ProtocolError(f"{path}: cannot be read ({error})") from error
    return Protocol(
        name=str(spec.get("name", path.stem)),
        description=str(spec.get("description", "")).strip(),
        runs=expand(spec, models, str(path)),
        source=str(path),
    )


def expand(spec: dict[str, Any], models: list[str], source: str = "<protocol>") -> list[Run]:
    """Every run of a protocol document, evaluations first, in a fixed order."""
    unknown = set(spec) - PROTOCOL_KEYS
    if unknown:
        raise ProtocolError(
            f"{source}: unknown keys {sorted(unknown)}; known: {sorted(PROTOCOL_KEYS)}"
        )
    runs: list[Run] = []
    for entry in spec.get("evaluations") or []:
        task = _task(entry, EVALUATIONS, source)
        datasets = (
            _datasets(entry, source) if EVALUATIONS[task].reads == "dataset" else [PRETRAINING_DATA]
        )
        for model in _models(entry, spec, models, source):
            if model == RANDOM_INIT:
                continue  # evaluations judge what pre-training learnt
            runs += [Run("evaluate", task, dataset, model) for dataset in datasets]
    for entry in spec.get("finetune") or []:
        task = _task(entry, TASK_MODULES, source)
        for dataset in _datasets(entry, source):
            for model in _models(entry, spec, models, source):
                for fraction in entry.get("fractions", spec.get("fractions", [1.0])):
                    for seed in entry.get("seeds", spec.get("seeds", [0])):
                        runs.append(
                            Run(
                                "finetune",
                                task,
                                dataset,
                                model,
                                fraction=float(fraction),
                                seed=int(seed),
                                linear_probe=bool(entry.get("linear_probe", False)),
                                steps=entry.get("steps"),
                                lr=entry.get("lr"),
                                batch_size=entry.get("batch_size", spec.get("batch_size")),
                            )
                        )
    names = [run.name for run in runs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ProtocolError(f"{source}: runs listed twice: {repeated}")
    return runs


def _task(entry: dict[str, Any], known: Any, source: str) -> str:
    unknown = set(entry) - RUN_KEYS
    if unknown:
        raise ProtocolError(f"{source}: {entry}: unknown keys {sorted(unknown)}")
    task = entry.get("task")
    if task not in known:
        raise ProtocolError(f"{source}: {entry}: 'task' must be one of {', '.join(known)}")
    return task


def _datasets(entry: dict[str, Any], source: str) -> list[str]:
    datasets = entry.get("datasets") or ([entry["dataset"]] if entry.get("dataset") else [])
    if not datasets:
        raise ProtocolError(f"{source}: {entry}: name a 'dataset' (or 'datasets')")
    unknown = [d for d in datasets if d not in READERS]
    if unknown:
        raise ProtocolError(f"{source}: {entry}: unknown data sets {unknown}")
    return list(datasets)


def _models(entry: dict[str, Any], spec: dict[str, Any], models: list[str], source: str) -> list:
    chosen = entry.get("models", spec.get("models", ALL_MODELS))
    if chosen == ALL_MODELS:
        return [RANDOM_INIT, *models]
    if isinstance(chosen, str) or not all(isinstance(m, str) for m in chosen):
        raise ProtocolError(f"{source}: 'models' is '{ALL_MODELS}' or a list of names")
    return list(chosen)
