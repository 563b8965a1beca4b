"""Run a protocol's runs through the library's own functions: skip what is finished or has no
data, run the rest (side by side with ``jobs`` > 1, each job its share of the CPU threads or
one GPU), record a failing run's error and go on, and collect every result in one document."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from tqdm import tqdm

from cxrvlp.benchmark.protocol import (
    RANDOM_INIT,
    REGION_BOX_TASKS,
    DataSources,
    Protocol,
    Run,
)
from cxrvlp.tasks.evaluation import EVALUATIONS

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
ERROR_FILE = "error.json"
DEFAULT_RANDOM_MODEL = "gkmvlp-tiny"


@dataclass(frozen=True)
class Setup:
    """What every run of one benchmark shares."""

    out: Path
    data: DataSources
    bundles: dict[str, Path]  # --models NAME -> bundle folder
    tokenizer: Path | None = None  # random-init runs that read text use it (else trained)
    random_model: str = DEFAULT_RANDOM_MODEL  # architecture of random-init runs
    threads: int | None = None  # torch CPU threads of each run


@dataclass
class Outcome:
    run: Run
    status: str  # "done", "failed" or "skipped"
    results: dict[str, Any] | None = None
    error: str | None = None
    reason: str | None = None  # why a run was skipped
    reused: bool = False  # found finished in the output folder

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {"run": self.run.to_dict(), "status": self.status}
        for key in ("results", "error", "reason"):
            if getattr(self, key) is not None:
                document[key] = getattr(self, key)
        if self.reused:
            document["reused"] = True
        return document


@dataclass
class Plan:
    to_run: list[Run] = field(default_factory=list)
    finished: list[Outcome] = field(default_factory=list)
    skipped: list[Outcome] = field(default_factory=list)

    def estimated_seconds(self, jobs: int = 1) -> float:
        return sum(run.estimated_seconds() for run in self.to_run) / max(1, jobs)


def run_folder(setup: Setup, run: Run) -> Path:
    return setup.out / run.folder / run.name


def skip_reason(setup: Setup, run: Run) -> str | None:
    """Why ``run`` cannot run with this data file and these models, or None."""
    if setup.data.root_of(run.dataset) is None:
        return f"the data file names no {run.dataset!r}"
    if run.model != RANDOM_INIT and run.model not in setup.bundles:
        return f"no bundle for model {run.model!r} (pass --models {run.model}=BUNDLE)"
    config = _bundle_config(setup.bundles.get(run.model))
    recipe = str(config.get("recipe", "gkmvlp")) if config is not None else None
    no_ecls = recipe != "gkmvlp" or float(config.losses.get("ecls", 0)) <= 0
    if run.task == "entities" and config is not None and no_ecls:
        return f"{run.model} has no ECLS head: it has no entity scores"
    if run.task == "tags" and recipe not in (None, "asg"):
        return f"{run.model} has no image-tag decoder (ASG's IRL)"
    if run.task in REGION_BOX_TASKS and recipe not in (None, "gkmvlp"):
        return f"{run.model} ({recipe}) has no image-report encoder and report decoder"
    return None


def _bundle_config(bundle: Path | None) -> Any:
    """The bundle's model config, or None (random init, or an incomplete bundle: the run will
    fail and say so)."""
    from cxrvlp.bundle import MODEL_CONFIG_FILE

    if bundle is None or not (Path(bundle) / MODEL_CONFIG_FILE).is_file():
        return None
    return OmegaConf.load(Path(bundle) / MODEL_CONFIG_FILE)


def plan(setup: Setup, protocol: Protocol) -> Plan:
    result = Plan()
    for run in protocol.runs:
        reason = skip_reason(setup, run)
        results_path = run_folder(setup, run) / RESULTS_FILE
        if reason is not None:
            result.skipped.append(Outcome(run, "skipped", reason=reason))
        elif results_path.is_file():
            results = json.loads(results_path.read_text())
            result.finished.append(Outcome(run, "done", results=results, reused=True))
        else:
            result.to_run.append(run)
    return result


def execute(setup: Setup, run: Run, progress: bool = False) -> Outcome:
    """Run one evaluation or fine-tuning run; a failure becomes an Outcome with its error (and
    RUN/error.json with the traceback), never an exception."""
    folder = run_folder(setup, run)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ERROR_FILE).unlink(missing_ok=True)
    try:
        if run.kind == "evaluate":
            results = _evaluate(setup, run, folder, progress)
        else:
            results = _finetune(setup, run, folder, progress)
    except (Exception, SystemExit) as error:
        message = f"{type(error).__name__}: {error}"
        log.error("benchmark run %s failed: %s", run.name, message)
        document = {"error": message, "traceback": traceback.format_exc()}
        (folder / ERROR_FILE).write_text(json.dumps(document, indent=2) + "\n")
        return Outcome(run, "failed", error=message)
    return Outcome(run, "done", results=results)


def _finetune(setup: Setup, run: Run, folder: Path, progress: bool) -> dict[str, Any]:
    from cxrvlp.tasks.finetune import finetune
    from cxrvlp.tasks.task import RANDOM_INIT as NO_BUNDLE

    random_init = run.model == RANDOM_INIT
    boxes = setup.data.boxes.get(run.dataset) if run.task in REGION_BOX_TASKS else None
    return finetune(
        run.task,
        NO_BUNDLE if random_init else setup.bundles[run.model],
        run.dataset,
        setup.data.root_of(run.dataset),
        folder,
        fraction=run.fraction,
        linear_probe=run.linear_probe,
        max_steps=run.steps,
        batch_size=run.batch_size,
        lr=run.lr,
        model_name=setup.random_model,
        tokenizer=setup.tokenizer if random_init else None,
        boxes=boxes,
        seed=run.seed,
        threads=setup.threads,
        progress=progress,
    )


def _evaluate(setup: Setup, run: Run, folder: Path, progress: bool) -> dict[str, Any]:
    from cxrvlp.tasks.evaluation import evaluate_pretrained

    if setup.threads:
        import torch

        torch.set_num_threads(setup.threads)
    bundle = setup.bundles[run.model]
    dataset = run.dataset if EVALUATIONS[run.task].reads == "dataset" else None
    results = evaluate_pretrained(
        run.task,
        bundle,
        setup.data.root_of(run.dataset),
        dataset=dataset,
        progress=progress,
        out=folder,
    )
    (folder / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    return results


def run_all(
    setup: Setup, protocol: Protocol, jobs: int = 1, progress: bool = True
) -> list[Outcome]:
    """Every run of ``protocol`` in protocol order: finished ones reused, skipped ones listed,
    the others run (``jobs`` at a time) under one progress bar with an ETA."""
    work = plan(setup, protocol)
    outcomes = {o.run.name: o for o in work.finished + work.skipped}
    bar = tqdm(
        total=round(work.estimated_seconds()),
        disable=not progress or not work.to_run,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]",
    )
    failed = 0

    def finished(outcome: Outcome) -> None:
        nonlocal failed
        outcomes[outcome.run.name] = outcome
        failed += outcome.status == "failed"
        done = len(outcomes) - len(work.finished) - len(work.skipped)
        bar.set_description_str(
            f"benchmark {protocol.name} ({done}/{len(work.to_run)} runs, {failed} failed)",
            refresh=False,
        )
        bar.update(round(outcome.run.estimated_seconds()))

    bar.set_description_str(f"benchmark {protocol.name} (0/{len(work.to_run)} runs)")
    if jobs <= 1 or len(work.to_run) <= 1:
        for run in work.to_run:
            finished(execute(setup, run))
    else:
        _run_side_by_side(setup, work.to_run, jobs, finished)
    bar.close()
    return [outcomes[run.name] for run in protocol.runs]


def _run_side_by_side(setup: Setup, runs: list[Run], jobs: int, finished) -> None:
    """``jobs`` worker processes; on a CPU each gets its share of the threads, with GPUs each
    worker is pinned to one device."""
    import torch

    gpus = torch.cuda.device_count()
    jobs = min(jobs, len(runs), gpus or jobs)
    threads = setup.threads or max(1, torch.get_num_threads() // jobs)
    shared = replace(setup, threads=None if gpus else threads)
    context = multiprocessing.get_context("spawn")
    slots = context.Queue()
    for slot in range(jobs):
        slots.put(slot)
    with ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_start_worker, initargs=(slots, gpus)
    ) as pool:
        pending: set[Future] = {pool.submit(execute, shared, run) for run in runs}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                finished(future.result())


def _start_worker(slots: Any, gpus: int) -> None:
    slot = slots.get()
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
    logging.basicConfig(level=logging.WARNING, format=f"[job {slot}] %(levelname)s %(message)s")


def collect(
    setup: Setup, protocol: Protocol, outcomes: list[Outcome], started: float | None = None
) -> dict[str, Any]:
    """The benchmark's results document (results.json)."""
    counts = {status: sum(o.status == status for o in outcomes)
              for status in ("done", "failed", "skipped")}  # fmt: skip
    document = {
        "protocol": {
            "name": protocol.name,
            "source": protocol.source,
            "description": protocol.description,
        },
        "data": setup.data.to_dict(),
        "models": {name: str(path) for name, path in setup.bundles.items()},
        "counts": counts,
        "runs": {o.run.name: o.to_dict() for o in outcomes},
    }
    if started is not None:
        document["minutes"] = round((time.monotonic() - started) / 60, 2)
    return document
