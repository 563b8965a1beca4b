"""`cxrvlp demo`: the whole pipeline on a synthetic world, end to end, with one command.

synth -> tokenizer -> region detector (train, annotate the downstream sets) -> pre-train
GK-MVLP and an ITC-only (CLIP-style) model of the same encoders -> export both -> pre-training
evaluations (retrieval, entity presence, grounding) and zero-shot classification -> every
fine-tuning task at each label fraction from random init, ITC-only and GK-MVLP -> report.html,
report.md and results.json. Every step is skipped when its output already exists, so an
interrupted demo continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

log = logging.getLogger(__name__)

DESCRIPTION = """Run the whole pipeline on a synthetic world and write a report.

  cxrvlp demo --out runs/demo                       # the CPU demo (50-100 min on 2 cores)
  cxrvlp demo --out runs/demo finetune.fractions=[1.0] pretrain.max_steps=100

OUT receives world/, detector/, pretrain-gkmvlp/, pretrain-itc/, models, evaluations,
finetune/<task>-<dataset>-<init>-<fraction>/ runs, results.json, report.md and report.html.
"""

# Row names of every table: the starting point of a fine-tuning run.
INITS = {"random": "random init", "itc": "ITC-only", "gkmvlp": "GK-MVLP"}
ITC_ONLY_OVERRIDES = [
    "model.losses.itm=0",
    "model.losses.lm=0",
    "model.losses.ecls=0",
    "model.gk.enabled=false",
]
DEFAULT_CONFIG = {
    "world": {
        "studies": 900,
        "image_size": 256,
        "downstream_fraction": 0.4,
        # Localisation needs more test boxes than 0.4 x 900 RSNA studies give (13 boxes in 54
        # test images: every mAP was noise).
        "cohort_studies": {"rsna": 1000},
        "seed": 0,
    },
    "workers": 2,
    "threads": 2,
    "tokenizer": {"vocab_size": 2000},
    "detector": {"image_size": 160, "batch_size": 4, "max_steps": 120},
    "pretrain": {
        "config": None,
        "batch_size": 32,
        "lr": 5.0e-4,
        "warmup_steps": 40,
        "max_steps": 300,
        # No wall-clock cap by default: a cap makes the pre-trained model (and every table)
        # depend on how fast the machine happens to be. Set it to bound a slow machine.
        "max_minutes": None,
        "itc_max_steps": 300,
    },
    "evaluate": {"zero_shot": ["rsna", "nih", "chexpert"]},
    "finetune": {
        "fractions": [0.01, 0.1, 1.0],
        "inits": list(INITS),
        # Training seeds of every run (a run spec may name its own): the tables show the mean
        # over them, and its spread where there is more than one seed.
        "seeds": [0],
        "batch_size": 16,
        "runs": [
            {"task": "classification", "dataset": "rsna", "linear_probe": True, "steps": 40},
            {"task": "classification", "dataset": "nih", "linear_probe": True, "steps": 40},
            {"task": "classification", "dataset": "chexpert", "linear_probe": True, "steps": 40},
            {"task": "classification", "dataset": "rsna", "linear_probe": False, "steps": 40},
            {
                "task": "localization",
                "dataset": "rsna",
                "linear_probe": False,
                # A detector learns far slower than a linear head: 100 steps left every row
                # at mAP@0.5 <= 0.09 (noise); 250 steps reach 0.1-0.3 with all 700 labelled
                # films of the 1000-study cohort, at 2.3-2.5 min a run on this 2-core CPU.
                # Two seeds: one random-init run scored 0.239 with seed 0 and 0.131 with
                # seed 1, a spread larger than any gap between the rows.
                "steps": 250,
                "batch_size": 8,
                "lr": 3.0e-4,
                "seeds": [0, 1],
            },
            {"task": "generation", "dataset": "iu-xray", "linear_probe": False, "steps": 50},
            # The VQA head is first fitted on frozen features (LP-FT, see tasks/vqa.py); then
            # 40 steps at a BERT fine-tuning rate. Faster rates undo what the frozen GK-MVLP
            # features give on the closed questions (VQA-RAD 100 %: closed 0.66 at 1e-5, 0.65
            # at 2e-5; with the fused-mean head alone 0.63 at 2e-5, 0.54 at 1e-4, 0.48 at
            # 5e-4), and random init gains nothing from faster rates (overall 0.60-0.63).
            {"task": "vqa", "dataset": "vqa-rad", "linear_probe": False, "steps": 40, "lr": 1.0e-5},
            {"task": "vqa", "dataset": "slake", "linear_probe": False, "steps": 40, "lr": 1.0e-5},
        ],
    },
}
# Where each downstream data set lives in a `cxrvlp synth` world.
WORLD_FOLDERS = {
    "rsna": "rsna",
    "nih": "nih",
    "chexpert": "chexpert",
    "iu-xray": "iu_xray",
    "vqa-rad": "vqa_rad",
    "slake": "slake",
}
GK_TASKS = ("generation", "vqa")
SEED_SUFFIX = "-seed"  # run name suffix of every seed but 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="demo folder")
    parser.add_argument("--config", type=Path, help="demo YAML (defaults: the CPU demo)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. world.studies=300")


def demo_config(config_file: Path | None, overrides: list[str] | None) -> DictConfig:
    config = OmegaConf.create(DEFAULT_CONFIG)
    if config_file is not None:
        config = OmegaConf.merge(config, OmegaConf.load(config_file))
    if overrides:
        config = OmegaConf.merge(config, OmegaConf.from_dotlist(overrides))
    unknown = set(config.finetune.inits) - set(INITS)
    if unknown:
        raise ValueError(f"finetune.inits: unknown {sorted(unknown)}; choose from {list(INITS)}")
    return config


class Demo:
    """The steps of the demo, in order; see the module docstring."""

    def __init__(self, out: Path, config: DictConfig):
        self.out = Path(out)
        self.config = config
        self.world = self.out / "world"
        self.tokenizer = self.out / "tokenizer"
        self.detector = self.out / "detector"
        self.models = {"gkmvlp": self.out / "model-gkmvlp", "itc": self.out / "model-itc"}
        self.timings: dict[str, float] = {}

    # ---- helpers ----------------------------------------------------------------------------
    def _cli(self, argv: list[str]) -> None:
        from cxrvlp.cli import main

        code = main([str(a) for a in argv])
        if code:
            raise RuntimeError(f"`cxrvlp {' '.join(map(str, argv))}` exited with {code}")

    def _step(self, name: str, done: Path, action: Callable[[], None]) -> None:
        if done.exists():
            print(f"demo: {name}: done already ({done})")
            return
        print(f"demo: {name} ...", flush=True)
        started = time.monotonic()
        action()
        self.timings[name] = round((time.monotonic() - started) / 60, 2)
        print(f"demo: {name}: {self.timings[name]} min", flush=True)

    def _data_root(self, dataset: str) -> Path:
        return self.world / WORLD_FOLDERS[dataset]

    # ---- steps ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "demo.yaml").write_text(OmegaConf.to_yaml(self.config))
        c = self.config
        self._step("synthesise the world", self.world / "world.json", self.synthesise)
        self._step(
            "train the tokenizer",
            self.tokenizer / "tokenizer.json",
            lambda: self._cli(
                ["text", "tokenizer", "--corpus", self.world, "--out", self.tokenizer,
                 "--vocab-size", c.tokenizer.vocab_size]
            ),
        )  # fmt: skip
        self._step("train the region detector", self.detector / "model.safetensors", self.detect)
        for dataset in sorted({r.dataset for r in c.finetune.runs if r.task in GK_TASKS}):
            boxes = self._boxes(dataset)
            self._step(
                f"region boxes of {dataset}",
                boxes,
                lambda d=dataset, b=boxes: self._cli(
                    ["detector", "annotate", "--model", self.detector, "--dataset", d,
                     "--root", self._data_root(d), "--out", b]
                ),
            )  # fmt: skip
        for init, extra in (("gkmvlp", []), ("itc", ITC_ONLY_OVERRIDES)):
            if init not in c.finetune.inits:
                continue
            self._step(
                f"pre-train {INITS[init]}",
                self.models[init] / "model.safetensors",
                lambda i=init, e=extra: self.pretrain(i, e),
            )
        self._step("evaluate the pre-trained models", self.out / "evaluate", self.evaluate)
        self._step("fine-tune every task", self.out / "finetune" / "done.json", self.finetune_all)
        results = self.collect()
        results["minutes"] = round((time.monotonic() - started) / 60, 2)
        results["step_minutes"] = self.timings
        (self.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        from cxrvlp.viz.report import write_report

        report = write_report(self.out, results)
        print(report.summary)
        print(f"demo: {results['minutes']} min; report {self.out / 'report.html'}")
        return results

    def synthesise(self) -> None:
        w = self.config.world
        self._cli(
            ["synth", "--out", self.world, "--studies", w.studies, "--image-size", w.image_size,
             "--downstream-fraction", w.downstream_fraction, "--seed", w.seed,
             "--cohort-studies", ",".join(f"{k}={v}" for k, v in w.cohort_studies.items()),
             "--workers", self.config.workers, "--preview"]
        )  # fmt: skip

    def detect(self) -> None:
        d = self.config.detector
        argv = [
            "detector", "train", "--imagenome", self.world / "chest-imagenome",
            "--images", self.world / "mimic-cxr-jpg", "--out", self.detector,
            "--image-size", d.image_size, "--batch-size", d.batch_size,
            "--max-steps", d.max_steps, "--threads", self.config.threads,
        ]  # fmt: skip
        if (self.detector / "checkpoints").is_dir():
            argv += ["--resume", "latest"]
        self._cli(argv)

    def _boxes(self, dataset: str) -> Path:
        return self.out / "boxes" / f"{dataset}.jsonl"

    def pretrain(self, init: str, extra: list[str]) -> None:
        p = self.config.pretrain
        run = self.out / f"pretrain-{init}"
        steps = p.max_steps if init == "gkmvlp" else p.itc_max_steps
        argv = ["pretrain", "--data", self.world, "--out", run, "--max-steps", steps, "--quiet"]
        if p.config:
            argv += ["--config", p.config]
        argv += [
            f"model.text.tokenizer={self.tokenizer}",
            f"train.batch_size={p.batch_size}",
            f"train.lr={p.lr}",
            f"train.warmup_steps={p.warmup_steps}",
            f"train.max_minutes={'null' if p.max_minutes is None else p.max_minutes}",
            f"train.threads={self.config.threads}",
            f"train.checkpoint_every={steps}",
            *extra,
        ]
        if (run / "checkpoints").is_dir():
            argv += ["--resume", "latest"]
        self._cli(argv)
        self._cli(["export", run, "--out", self.models[init]])

    def evaluate(self) -> None:
        folder = self.out / "evaluate-running"
        for init in self.models:
            if init not in self.config.finetune.inits:
                continue
            model = self.models[init]
            tasks = ["retrieval", "grounding"] + (["entities"] if init == "gkmvlp" else [])
            for task in tasks:
                self._cli(
                    ["evaluate", task, "--pretrained", model, "--root", self.world,
                     "--out", folder / f"{task}-{init}", "--quiet"]
                )  # fmt: skip
            for dataset in self.config.evaluate.zero_shot:
                self._cli(
                    ["evaluate", "zero-shot", "--pretrained", model, "--dataset", dataset,
                     "--root", self._data_root(dataset),
                     "--out", folder / f"zero-shot-{dataset}-{init}", "--quiet"]
                )  # fmt: skip
        folder.rename(self.out / "evaluate")

    def finetune_runs(self) -> list[tuple[str, dict[str, Any]]]:
        c = self.config.finetune
        runs = []
        for spec in c.runs:
            for init in c.inits:
                for fraction in spec.get("fractions", c.fractions):
                    mode = "probe" if spec.linear_probe else "tune"
                    base = f"{spec.task}-{spec.dataset}-{mode}-{init}-{fraction:g}"
                    for seed in spec.get("seeds", c.seeds):
                        # Seed 0 keeps the plain name, so runs of a one-seed demo stay valid.
                        name = f"{base}{SEED_SUFFIX}{seed}" if seed else base
                        run = {"spec": spec, "init": init, "fraction": fraction, "seed": seed}
                        runs.append((name, run))
        return runs

    def finetune_all(self) -> None:
        from cxrvlp.tasks.finetune import RESULTS_FILE

        folder = self.out / "finetune"
        runs = self.finetune_runs()
        bar = tqdm(runs, desc="fine-tune", unit="run")
        for name, run in bar:
            bar.set_postfix_str(name)
            if (folder / name / RESULTS_FILE).is_file():
                continue
            spec, init = run["spec"], run["init"]
            pretrained = "none" if init == "random" else self.models[init]
            argv = [
                "finetune", spec.task, "--pretrained", pretrained, "--dataset", spec.dataset,
                "--root", self._data_root(spec.dataset), "--out", folder / name,
                "--fraction", run["fraction"], "--max-steps", spec.steps,
                "--batch-size", spec.get("batch_size", self.config.finetune.batch_size),
                "--seed", run["seed"], "--threads", self.config.threads, "--quiet",
            ]  # fmt: skip
            if spec.linear_probe:
                argv.append("--linear-probe")
            if spec.get("lr"):
                argv += ["--lr", spec.lr]
            if init == "random":
                argv += ["--tokenizer", self.tokenizer]
            if spec.task in GK_TASKS:
                argv += ["--boxes", self._boxes(spec.dataset)]
            self._cli(argv)
        bar.close()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "done.json").write_text(json.dumps({"runs": len(runs)}) + "\n")

    def collect(self) -> dict[str, Any]:
        """Every result of the demo folder in one document."""
        from cxrvlp.tasks.finetune import RESULTS_FILE

        evaluations = {}
        for path in sorted((self.out / "evaluate").glob(f"*/{RESULTS_FILE}")):
            evaluations[path.parent.name] = json.loads(path.read_text())
        finetunes = {}
        for name, _ in self.finetune_runs():
            path = self.out / "finetune" / name / RESULTS_FILE
            if path.is_file():
                finetunes[name] = json.loads(path.read_text())
        pretraining = {}
        for init in self.models:
            summary = self.out / f"pretrain-{init}" / "summary.json"
            if summary.is_file():
                pretraining[init] = json.loads(summary.read_text())
        return {
            "config": OmegaConf.to_container(self.config),
            "pretraining": pretraining,
            "evaluations": evaluations,
            "finetune": finetunes,
        }


def run(args: argparse.Namespace) -> int:
    config = demo_config(args.config, args.overrides)
    Demo(args.out, config).run()
    return 0
