"""The whole pipeline at micro scale: synth -> detector -> pre-training -> benchmark -> report."""

import json

import pytest

from cxrvlp.cli import main
from cxrvlp.demo import FULL, QUICK, demo_config

pytestmark = pytest.mark.slow  # the whole pipeline, end to end

MICRO = """
world: {studies: 40, image_size: 96, downstream_fraction: 0.5, cohort_studies: {rsna: 24}}
threads: 1
workers: 1
tokenizer: {vocab_size: 400}
detector: {image_size: 96, batch_size: 2, max_steps: 2}
pretrain: {batch_size: 4, warmup_steps: 1, max_steps: 2, models: [gkmvlp, itc, asg]}
"""
MICRO_PROTOCOL = """
name: micro
fractions: [0.5, 1.0]
batch_size: 2
evaluations:
  - {task: retrieval}
  - {task: grounding}
  - {task: entities}
  - {task: tags}
  - {task: zero-shot, datasets: [nih]}
finetune:
  - {task: classification, dataset: chexpert, linear_probe: true, steps: 1, seeds: [0, 1]}
  - {task: localization, dataset: rsna, steps: 1}
  - {task: generation, dataset: iu-xray, steps: 1}
  - {task: vqa, dataset: slake, steps: 1}
"""


def test_demo_runs_every_step_and_reports_every_task(tmp_path, capsys):
    config = tmp_path / "micro.yaml"
    config.write_text(MICRO)
    protocol = tmp_path / "micro-protocol.yaml"
    protocol.write_text(MICRO_PROTOCOL)
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--config", str(config), "--protocol", str(protocol)]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["pretraining"]) == {"gkmvlp", "itc", "asg"}
    runs = results["runs"]
    # evaluations: retrieval, grounding, zero-shot of every model, entities of GK-MVLP only
    # (ITC-only and ASG have no ECLS, so they are skipped with the reason), tags of ASG only
    for name in ("entities-itc", "entities-asg"):
        assert runs[name]["status"] == "skipped" and "ECLS" in runs[name]["reason"]
    assert runs["tags-gkmvlp"]["status"] == "skipped" and "tag" in runs["tags-gkmvlp"]["reason"]
    done = ("retrieval-gkmvlp", "grounding-gkmvlp", "entities-gkmvlp", "zero-shot-nih-itc",
            "retrieval-asg", "grounding-asg", "tags-asg", "zero-shot-nih-asg")  # fmt: skip
    for name in done:
        assert runs[name]["status"] == "done", name
    assert runs["grounding-asg"]["results"]["primary_map"] == "asg_region_sentence"
    finetune = {name: e for name, e in runs.items() if e["run"]["kind"] == "finetune"}
    # four task families x four starting points x two fractions, the first with two seeds;
    # ASG has no report decoder: its generation and VQA runs are skipped with the reason
    assert len(finetune) == 5 * 4 * 2
    skipped = {name for name, entry in finetune.items() if entry["status"] == "skipped"}
    assert skipped == {
        f"{task}-tune-asg-{fraction}"
        for task in ("generation-iu-xray", "vqa-slake")
        for fraction in ("0.5", "1")
    }
    assert "decoder" in finetune["vqa-slake-tune-asg-1"]["reason"]
    assert all(entry["status"] == "done" for name, entry in finetune.items() if name not in skipped)
    assert finetune["vqa-slake-tune-random-0.5"]["results"]["init"] == "random"
    seeded = "classification-chexpert-probe-gkmvlp-1-seed1"
    assert json.loads((out / "finetune" / seeded / "finetune.json").read_text())["seed"] == 1
    data = (out / "data.yaml").read_text()
    assert "boxes/slake.jsonl" in data and "boxes/iu-xray.jsonl" in data
    report = (out / "report.md").read_text()
    assert "GK-MVLP" in report and "ITC-only" in report and "ASG" in report
    assert "random init" in report
    assert "±" in report.split("**classification / chexpert / linear probe: AUROC**")[1]
    assert (out / "report.html").is_file() and (out / "roc_curves.png").is_file()
    assert "grounding_gk_findings.png" in report and "grounding_gk.png" in report
    hits = report.split("**Grounding: pointing-game hits per finding type")[1].split("\n\n")[1]
    assert hits.splitlines()[2].startswith("| all findings |")
    printed = capsys.readouterr().out
    assert "Headline" in printed and f"report: {out / 'report.html'}" in printed
    assert "next: cxrvlp generate" in printed
    # A second call finds every step done and only rewrites the report.
    assert main(argv) == 0
    assert "done already" in capsys.readouterr().out


def test_quick_and_full_presets_and_overrides():
    quick = demo_config()
    assert quick.protocol == "quick" and list(quick.pretrain.models) == ["gkmvlp"]
    full = demo_config("full")
    assert full.world.studies == FULL["world"]["studies"] and "itc" in full.pretrain.models
    assert "asg" in full.pretrain.models
    changed = demo_config(None, None, ["pretrain.max_steps=7", "jobs=2"])
    assert changed.pretrain.max_steps == 7 and changed.jobs == 2
    assert QUICK["pretrain"]["max_minutes"] is None  # tables never depend on machine speed
