"""`cxrvlp demo`: the whole pipeline on a synthetic world with one command.

synth -> tokenizer -> region detector (trained on the world's Chest ImaGenome boxes, then
annotating the data sets whose tasks run the GK module) -> pre-train GK-MVLP (and, for the
full protocol, an ITC-only model of the same encoders) -> export -> ``cxrvlp benchmark`` with
the quick protocol (or another) -> report.html, report.md and results.json. Every step calls
the library's functions and is skipped when its output exists, so an interrupted demo goes on
where it stopped.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from cxrvlp.benchmark import run_benchmark
from cxrvlp.benchmark.protocol import (
    REGION_BOX_TASKS,
    DataSources,
    load_data_file,
    load_protocol,
    write_data_file,
)
from cxrvlp.benchmark.report import MODEL_NAMES, summary_line, write_report
from cxrvlp.benchmark.runner import Setup
from cxrvlp.synth.world import COHORTS

DESCRIPTION = """Run the whole pipeline on a synthetic world and write a report.

  cxrvlp demo --out runs/demo                       # quick protocol: about 15 min on 2 cores
  cxrvlp demo --out runs/demo-full --protocol full  # the full tables, ITC-only and ASG: 80+ min
  cxrvlp demo --out runs/demo --jobs 2 pretrain.max_steps=200

OUT receives world/ (with data.yaml), tokenizer/, detector/, boxes/, pretrain-*/ runs,
model-*/ bundles, evaluate/ and finetune/ runs, results.json, report.md and report.html.
Settings (key=value overrides) are in demo.yaml of OUT.
"""

# Pre-training of each starting model: its registered config and overrides.
RECIPES = {
    "gkmvlp": ("gkmvlp-tiny", []),
    # Same encoders, contrastive loss alone: what the knowledge and grounding add.
    "itc": ("gkmvlp-tiny", ["model.losses.itm=0", "model.losses.lm=0", "model.losses.ecls=0",
                            "model.gk.enabled=false"]),
    # ASG on the same encoders: IRA, ARSA, IRL and ERL.
    "asg": ("asg-tiny", []),
}  # fmt: skip
# The quick demo fits the 15 minutes a newcomer waits: a smaller world, a shorter detector and
# pre-training, GK-MVLP against random init (`pretrain.models=[gkmvlp,asg]` adds ASG: about 20
# minutes). The full demo is the full protocol's world, with ITC-only and ASG beside GK-MVLP.
QUICK = {
    "protocol": "quick",
    # The quick protocol reads neither SIIM nor COVIDx: their cohorts are not rendered.
    "world": {"studies": 500, "image_size": 192, "downstream_fraction": 0.4,
              "cohort_studies": {"rsna": 700}, "seed": 0,
              "cohorts": ["mimic", "rsna", "nih", "chexpert", "iu_xray", "vqa_rad", "slake"]},
    "threads": 2,
    "workers": 2,
    "jobs": 2,  # two benchmark runs side by side, one thread each: 6 min against 8 on 2 cores
    "tokenizer": {"vocab_size": 2000},
    "detector": {"image_size": 160, "batch_size": 4, "max_steps": 80},
    "pretrain": {"config": None, "batch_size": 32, "lr": 5.0e-4, "warmup_steps": 20,
                 "max_steps": 150, "max_minutes": None, "models": ["gkmvlp"]},
    "benchmark": {"overrides": []},
}  # fmt: skip
FULL = {
    **QUICK,
    "protocol": "full",
    # SIIM and COVIDx as large as RSNA, so that 1 % of their labels is several patients.
    "world": {"studies": 900, "image_size": 256, "downstream_fraction": 0.4,
              "cohort_studies": {"rsna": 1000, "siim": 1000, "covidx": 1000}, "seed": 0,
              "cohorts": list(COHORTS)},
    "detector": {"image_size": 160, "batch_size": 4, "max_steps": 120},
    "pretrain": {"config": None, "batch_size": 32, "lr": 5.0e-4, "warmup_steps": 40,
                 "max_steps": 300, "max_minutes": None, "models": ["gkmvlp", "itc", "asg"]},
}  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="demo folder")
    parser.add_argument(
        "--protocol", help="quick (default) | full | FILE.yaml: quick runs the quick world"
    )
    parser.add_argument("--config", type=Path, help="demo YAML merged over the defaults")
    parser.add_argument("--jobs", type=int, help="benchmark runs side by side")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. world.studies=300")


def demo_config(
    protocol: str | None = None, config_file: Path | None = None, overrides: list[str] | None = None
) -> DictConfig:
    """The quick or the full preset, then ``config_file``, then the overrides."""
    preset = QUICK if protocol in (None, "quick") else FULL
    config = OmegaConf.create(preset)
    if protocol is not None:
        config.protocol = protocol
    if config_file is not None:
        config = OmegaConf.merge(config, OmegaConf.load(config_file))
    if overrides:
        config = OmegaConf.merge(config, OmegaConf.from_dotlist(list(overrides)))
    unknown = set(config.pretrain.models) - set(RECIPES)
    if unknown:
        raise ValueError(f"pretrain.models: unknown {sorted(unknown)}; choose from {list(RECIPES)}")
    return config


class Demo:
    """The steps of the demo, in order; see the module docstring."""

    def __init__(self, out: Path, config: DictConfig):
        self.out = Path(out)
        self.config = config
        self.world = self.out / "world"
        self.tokenizer = self.out / "tokenizer"
        self.detector = self.out / "detector"
        self.models = {name: self.out / f"model-{name}" for name in config.pretrain.models}
        self.minutes: dict[str, float] = {}

    def _step(self, name: str, done: Path, action: Callable[[], Any]) -> None:
        if done.exists():
            print(f"demo: {name}: done already ({done})")
            return
        print(f"demo: {name} ...", flush=True)
        started = time.monotonic()
        action()
        self.minutes[name] = round((time.monotonic() - started) / 60, 2)
        print(f"demo: {name}: {self.minutes[name]} min", flush=True)

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "demo.yaml").write_text(OmegaConf.to_yaml(self.config))
        torch.set_num_threads(int(self.config.threads))
        self._step("synthesise the world", self.world / "world.json", self.synthesise)
        self._step("train the tokenizer", self.tokenizer / "tokenizer.json", self.train_tokenizer)
        self._step("train the region detector", self.detector / "model.safetensors", self.detect)
        protocol = load_protocol(
            self.config.protocol, list(self.models), list(self.config.benchmark.overrides)
        )
        for dataset in sorted({r.dataset for r in protocol.runs if r.task in REGION_BOX_TASKS}):
            boxes = self.boxes(dataset)
            self._step(f"region boxes of {dataset}", boxes, lambda d=dataset: self.annotate(d))
        for name in self.models:
            self._step(
                f"pre-train {MODEL_NAMES.get(name, name)}",
                self.models[name] / "model.safetensors",
                lambda n=name: self.pretrain(n),
            )
        setup = Setup(
            out=self.out,
            data=load_data_file(self.write_data_file()),
            bundles=self.models,
            tokenizer=self.tokenizer,
            threads=int(self.config.threads) // max(1, int(self.config.jobs)),
        )
        print(f"demo: benchmark '{protocol.name}' ({len(protocol.runs)} runs) ...", flush=True)
        benchmark_started = time.monotonic()
        document, _ = run_benchmark(setup, protocol, jobs=int(self.config.jobs))
        self.minutes["benchmark"] = round((time.monotonic() - benchmark_started) / 60, 2)
        document["minutes"] = round((time.monotonic() - started) / 60, 2)
        document["step_minutes"] = self.minutes
        document["demo"] = OmegaConf.to_container(self.config)
        document["pretraining"] = self.pretraining_summaries()
        (self.out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
        report = write_report(
            self.out,
            document,
            title="cxrvlp demo report",
            notes=self.notes(document),
            extra_pictures=[
                ("GK-MVLP pre-training losses", self.out / "pretrain-gkmvlp" / "losses.png"),
                ("The synthetic world (findings red, devices blue)", self.world / "preview.png"),
            ],
        )
        print()
        print(report.headline)
        print(summary_line(document))
        print(f"\nreport: {self.out / 'report.html'} (whole demo {document['minutes']} min)")
        print(f"next: {self.next_command(document)}")
        return document

    # ---- steps ------------------------------------------------------------------------------
    def synthesise(self) -> None:
        from cxrvlp.synth.preview import contact_sheet
        from cxrvlp.synth.world import WorldConfig, generate_world

        w = self.config.world
        config = WorldConfig(
            out=self.world,
            studies=int(w.studies),
            seed=int(w.seed),
            image_size=int(w.image_size),
            downstream_fraction=float(w.downstream_fraction),
            cohort_sizes=tuple(sorted((k, int(v)) for k, v in w.cohort_studies.items())),
            workers=int(self.config.workers),
        )
        _, sample = generate_world(config, cohorts=tuple(w.cohorts))
        if sample:
            contact_sheet(sample[:12], self.world / "preview.png")

    def train_tokenizer(self) -> None:
        from cxrvlp.text.tokenizer import corpus_from_paths, train_wordpiece

        corpus = corpus_from_paths([self.world])
        train_wordpiece(corpus, self.tokenizer, vocab_size=int(self.config.tokenizer.vocab_size))

    def detect(self) -> None:
        from cxrvlp.detector.train import TrainOptions, train_detector

        d = self.config.detector
        train_detector(
            TrainOptions(
                imagenome=self.world / "chest-imagenome",
                images=self.world / "mimic-cxr-jpg",
                out=self.detector,
                image_size=int(d.image_size),
                batch_size=int(d.batch_size),
                max_steps=int(d.max_steps),
                resume="latest" if (self.detector / "checkpoints").is_dir() else None,
            )
        )

    def boxes(self, dataset: str) -> Path:
        return self.out / "boxes" / f"{dataset}.jsonl"

    def annotate(self, dataset: str) -> None:
        from cxrvlp.data.readers import reader_class
        from cxrvlp.detector.bundle import load_detector
        from cxrvlp.detector.evaluate import annotate_dataset
        from cxrvlp.detector.train import detector_transform

        root = load_data_file(self.world / "data.yaml").root_of(dataset)
        model = load_detector(self.detector)
        reader = reader_class(dataset)(
            root, split=None, transform=detector_transform(model.config.image_size, augment=False)
        )
        annotate_dataset(model, reader, self.boxes(dataset))

    def pretrain(self, name: str) -> None:
        from cxrvlp.engine.checkpoint import LATEST
        from cxrvlp.export import export
        from cxrvlp.pretrain import build_config, pretrain

        p = self.config.pretrain
        run = self.out / f"pretrain-{name}"
        overrides = [
            f"model.text.tokenizer={self.tokenizer}",
            f"train.batch_size={p.batch_size}",
            f"train.lr={p.lr}",
            f"train.warmup_steps={p.warmup_steps}",
            f"train.max_minutes={'null' if p.max_minutes is None else p.max_minutes}",
            f"train.threads={self.config.threads}",
            f"train.checkpoint_every={p.max_steps}",
        ]
        model_name, recipe_overrides = RECIPES[name]
        overrides += recipe_overrides
        config = build_config(model_name, p.config, overrides, self.world, int(p.max_steps))
        resume = LATEST if (run / "checkpoints").is_dir() else None
        pretrain(config, run, resume=resume)
        export(run, self.models[name])

    def write_data_file(self) -> Path:
        """OUT/data.yaml: the world's data file with the detector's boxes added."""
        world = load_data_file(self.world / "data.yaml")
        boxes = {d: self.boxes(d) for d in world.roots if self.boxes(d).is_file()}
        sources = DataSources(roots=world.roots, boxes=boxes, pretraining=world.pretraining)
        comment = "The demo's data: its synthetic world, with the region detector's boxes."
        return write_data_file(self.out / "data.yaml", sources, comment)

    # ---- what the report adds ---------------------------------------------------------------
    def pretraining_summaries(self) -> dict[str, Any]:
        summaries = {}
        for name in self.models:
            path = self.out / f"pretrain-{name}" / "summary.json"
            if path.is_file():
                summaries[name] = json.loads(path.read_text())
        return summaries

    def notes(self, document: dict[str, Any]) -> list[str]:
        steps = ", ".join(f"{name} {minutes} min" for name, minutes in self.minutes.items())
        w, p = self.config.world, self.config.pretrain
        return [
            f"Synthetic world of {w.studies} MIMIC-CXR studies (seed {w.seed}, {w.image_size} px); "
            f"{', '.join(MODEL_NAMES.get(m, m) for m in self.models)} pre-trained "
            f"{p.max_steps} steps of batch {p.batch_size} (gkmvlp-tiny, asg-tiny). Step times "
            f"this call: {steps or 'every step was done already'}."
        ]

    def next_command(self, document: dict[str, Any]) -> str:
        """A report for one of the world's radiographs from the fine-tuned generator, or the
        full protocol when the demo fine-tuned none."""
        images = sorted((self.world / "iu_xray").glob("images/**/*.png"))[:1]
        by_fraction = sorted(document["runs"].items(), key=lambda item: -item[1]["run"]["fraction"])
        for name, entry in by_fraction:
            run = entry["run"]
            done = entry["status"] == "done" and run["model"] != "random"
            if run["task"] == "generation" and done and images:
                bundle = self.out / "finetune" / name / "model"
                return f"cxrvlp generate {images[0]} --model {bundle} --boxes-from {self.detector}"
        models = " ".join(f"{n}={p}" for n, p in self.models.items())
        return (
            f"cxrvlp benchmark --data {self.out / 'data.yaml'} --protocol full --models {models} "
            f"--tokenizer {self.tokenizer} --out {self.out / 'full'}"
        )


def run(args: argparse.Namespace) -> int:
    config = demo_config(args.protocol, args.config, args.overrides)
    if args.jobs:
        config.jobs = args.jobs
    Demo(args.out, config).run()
    return 0
