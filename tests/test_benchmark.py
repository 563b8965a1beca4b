"""`cxrvlp benchmark`: protocols and data files, runs through the library, tables that carry the
runs' own figures, failures and skips reported without stopping the others."""

import json
import shutil
from pathlib import Path

import pytest

from cxrvlp.benchmark.protocol import (
    DataSources,
    ProtocolError,
    Run,
    data_sources,
    expand,
    load_data_file,
    load_protocol,
    write_data_file,
)
from cxrvlp.benchmark.report import Cell, compare, families, write_report
from cxrvlp.cli import main

TWO_RUNS = """
name: two-runs
description: one linear probe from the bundle, one from random init
fractions: [1.0]
finetune:
  - {task: classification, dataset: rsna, linear_probe: true, steps: 2, models: [gkmvlp]}
  - {task: classification, dataset: nih, linear_probe: true, steps: 2, batch_size: 4,
     models: [random]}
"""


@pytest.fixture
def unusual_roots(downstream_world, tmp_path):
    """The world's RSNA and NIH releases copied to places named nothing like the world's
    folders, and a data file in a third place naming them by relative paths."""
    releases = tmp_path / "mounted releases"
    shutil.copytree(downstream_world / "rsna", releases / "kaggle pneumonia stage 2")
    shutil.copytree(downstream_world / "nih", releases / "ChestX-ray14 (2017)")
    config = tmp_path / "settings"
    config.mkdir()
    data = config / "my-data.yaml"
    data.write_text(
        "datasets:\n"
        "  rsna: '../mounted releases/kaggle pneumonia stage 2'\n"
        "  nih: {root: '../mounted releases/ChestX-ray14 (2017)'}\n"
    )
    protocol = config / "two-runs.yaml"
    protocol.write_text(TWO_RUNS)
    return data, protocol


def test_benchmark_tables_carry_each_runs_own_results(
    unusual_roots, pretrained_bundle, downstream_world, tmp_path, capsys
):
    data, protocol = unusual_roots
    out = tmp_path / "bench"
    argv = ["benchmark", "--data", str(data), "--protocol", str(protocol), "--out", str(out)]
    argv += ["--models", f"gkmvlp={pretrained_bundle}", "--tokenizer"]
    argv += [str(downstream_world / "tokenizer"), "--quiet", "--threads", "1"]
    assert main(argv) == 0
    document = json.loads((out / "results.json").read_text())
    assert document["counts"] == {"done": 2, "failed": 0, "skipped": 0}
    rsna = json.loads(
        (out / "finetune" / "classification-rsna-probe-gkmvlp-1" / "results.json").read_text()
    )
    nih = json.loads(
        (out / "finetune" / "classification-nih-probe-random-1" / "results.json").read_text()
    )
    assert rsna["dataset"] == "rsna" and rsna["init"] == "pretrained" and rsna["steps"] == 2
    assert nih["init"] == "random" and nih["train_samples"] > 0
    found = {family.key: family for family in families(document)}
    assert found["classification / rsna / linear probe"].cell("gkmvlp", 1.0).mean("auroc") == (
        pytest.approx(rsna["auroc"])
    )
    markdown = (out / "report.md").read_text()
    headline = markdown.split("**Headline")[1].split("\n\n")[1]
    rows = {line.split(" | ")[0].strip("| "): line for line in headline.splitlines()[2:]}
    # columns: family, metric, random init, GK-MVLP, verdict
    assert rows["classification / rsna / linear probe"].split(" | ")[3] == f"{rsna['auroc']:.3f}"
    nih_row = next(r for r in headline.splitlines() if "nih" in r).split(" | ")
    assert nih_row[2] == f"{nih['auroc']:.3f}" and nih_row[3] == "-"
    assert (out / "report.html").read_text().index("Headline") < (
        (out / "report.html").read_text().index("Every task family")
    )
    printed = capsys.readouterr().out
    assert "benchmark two-runs: 2 runs done, 0 failed, 0 skipped" in printed
    # A second call reuses both finished runs and runs nothing.
    assert main(argv) == 0
    again = json.loads((out / "results.json").read_text())
    assert all(entry.get("reused") for entry in again["runs"].values())


def test_a_failing_run_is_reported_and_the_others_complete(downstream_world, tmp_path):
    data = tmp_path / "data.yaml"
    data.write_text(
        f"datasets:\n  rsna: {downstream_world / 'rsna'}\n  chexpert: {tmp_path / 'not-here'}\n"
    )
    protocol = tmp_path / "p.yaml"
    protocol.write_text(
        "fractions: [1.0]\nmodels: [random]\nfinetune:\n"
        "  - {task: classification, datasets: [chexpert, rsna], linear_probe: true, steps: 1}\n"
        "  - {task: vqa, dataset: slake, steps: 1}\n"
    )
    out = tmp_path / "bench"
    argv = ["benchmark", "--data", str(data), "--protocol", str(protocol), "--out", str(out)]
    assert main([*argv, "--quiet", "--threads", "1"]) == 0
    document = json.loads((out / "results.json").read_text())
    runs = document["runs"]
    assert runs["classification-chexpert-probe-random-1"]["status"] == "failed"
    assert "not-here" in runs["classification-chexpert-probe-random-1"]["error"]
    assert runs["classification-rsna-probe-random-1"]["status"] == "done"
    assert runs["vqa-slake-tune-random-1"] == {
        "run": runs["vqa-slake-tune-random-1"]["run"],
        "status": "skipped",
        "reason": "the data file names no 'slake'",
    }
    error = json.loads(
        (out / "finetune" / "classification-chexpert-probe-random-1" / "error.json").read_text()
    )
    assert "Traceback" in error["traceback"]
    markdown = (out / "report.md").read_text()
    failures = markdown.split("**Runs that failed or were skipped**")[1]
    assert "classification-chexpert-probe-random-1 | failed" in failures
    assert "vqa-slake-tune-random-1 | skipped | the data file names no 'slake'" in failures


def test_dry_run_lists_runs_skips_and_the_estimate(downstream_world, tmp_path, capsys):
    data = tmp_path / "data.yaml"
    data.write_text(f"datasets:\n  rsna: {downstream_world / 'rsna'}\n")
    argv = ["benchmark", "--data", str(data), "--protocol", "quick", "--dry-run"]
    assert main([*argv, "--models", f"gkmvlp={tmp_path}"]) == 0
    printed = capsys.readouterr().out
    assert "classification-rsna-probe-gkmvlp-0.1" in printed
    assert "skipped: the data file names no 'iu-xray'" in printed
    assert "skipped: the data file names no 'pretraining'" in printed
    # 2 models x 2 fractions of the RSNA probe and the RSNA localisation, and zero-shot RSNA;
    # skipped: the four evaluations of pre-training pairs and 8 runs on other data sets
    assert "9 to run, 0 done, 12 skipped" in printed


def test_shipped_protocols_expand_to_their_run_lists():
    full = load_protocol("full", ["gkmvlp", "itc"])
    finetune = [run for run in full.runs if run.kind == "finetune"]
    assert len(finetune) == 108  # 36 runs a starting model
    segmentation = {
        (run.dataset, run.linear_probe) for run in finetune if run.task == "segmentation"
    }
    assert segmentation == {("siim", True), ("rsna", True)}
    assert len([run for run in finetune if run.dataset == "covidx"]) == 9
    localization = [run for run in finetune if run.task == "localization"]
    assert {run.seed for run in localization} == {0, 1} and len(localization) == 18
    assert Run("finetune", "localization", "rsna", "itc", 0.1, 1).name in {
        run.name for run in localization
    }
    quick = load_protocol("quick", ["gkmvlp"])
    tasks = {run.task for run in quick.runs if run.kind == "finetune"}
    assert tasks == {"classification", "localization", "generation", "vqa"}
    assert {run.fraction for run in quick.runs if run.kind == "finetune"} == {0.1, 1.0}
    paper = load_protocol("paper", ["gkmvlp"], ["seeds=[0]"])
    assert {run.fraction for run in paper.runs if run.kind == "finetune"} == {0.01, 0.1, 1.0}
    assert {(run.task, run.dataset) for run in paper.runs if run.kind == "finetune"} >= {
        ("segmentation", "siim"), ("segmentation", "rsna"), ("classification", "covidx"),
    }  # fmt: skip
    asg = load_protocol("asg", ["gkmvlp", "asg"])
    assert len([run for run in asg.runs if run.kind == "finetune"]) == 3 * 18
    assert all(run.model != "random" for run in paper.runs if run.kind == "evaluate")
    pretraining = load_protocol("pretraining", ["report", "today"])
    assert {run.name for run in pretraining.runs if run.model == "today"} == {
        "retrieval-today", "grounding-today", "entities-today", "tags-today",
        "classification-nih-probe-today-0.01", "classification-nih-probe-today-0.01-seed1",
    }  # fmt: skip


def test_run_names_are_stable_and_seed_zero_keeps_the_plain_name():
    assert Run("finetune", "vqa", "slake", "random", 0.01, 0).name == "vqa-slake-tune-random-0.01"
    probe = Run("finetune", "classification", "nih", "gkmvlp", 1.0, 2, linear_probe=True)
    assert probe.name == "classification-nih-probe-gkmvlp-1-seed2"
    assert Run("evaluate", "zero-shot", "rsna", "itc").name == "zero-shot-rsna-itc"
    assert Run("evaluate", "retrieval", "pretraining", "itc").name == "retrieval-itc"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"finetune": [{"task": "segmentaton", "dataset": "rsna"}]}, "'task' must be one of"),
        ({"finetune": [{"task": "vqa", "dataset": "vqa_rad"}]}, "unknown data sets ['vqa_rad']"),
        ({"finetune": [{"task": "vqa", "dataset": "slake", "step": 3}]}, "unknown keys ['step']"),
        ({"fraction": [0.1]}, "unknown keys ['fraction']"),
        ({"finetune": [{"task": "vqa", "dataset": "slake"}] * 2}, "runs listed twice"),
    ],
)
def test_protocol_mistakes_name_the_fix(document, message):
    with pytest.raises(ProtocolError, match=r"p\.yaml") as error:
        expand(document, ["gkmvlp"], "p.yaml")
    assert message in str(error.value)


def test_a_written_data_file_reads_back_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out" / "world" / "rsna").mkdir(parents=True)
    sources = DataSources(
        roots={"rsna": Path("out/world/rsna")},
        boxes={"rsna": Path("out/boxes/rsna.jsonl")},
        pretraining=Path("out/world"),
    )
    written = write_data_file(Path("out/data.yaml"), sources)
    assert "root: world/rsna" in written.read_text()
    monkeypatch.chdir(tmp_path / "out" / "world")
    read = load_data_file(tmp_path / "out" / "data.yaml")
    assert read.roots["rsna"].resolve() == tmp_path / "out" / "world" / "rsna"
    assert read.boxes["rsna"].resolve() == tmp_path / "out" / "boxes" / "rsna.jsonl"
    assert read.pretraining.resolve() == tmp_path / "out" / "world"


def test_data_file_paths_are_relative_to_the_file_and_names_are_checked(tmp_path):
    sources = data_sources(
        {"datasets": {"rsna": "a/b", "vqa-rad": {"root": "q", "boxes": "bx.jsonl"}}}, tmp_path
    )
    assert sources.roots == {"rsna": tmp_path / "a/b", "vqa-rad": tmp_path / "q"}
    assert sources.boxes == {"vqa-rad": tmp_path / "bx.jsonl"}
    with pytest.raises(ProtocolError, match="unknown data set 'rsna-pneumonia'"):
        data_sources({"datasets": {"rsna-pneumonia": "x"}}, tmp_path, "d.yaml")


def _cell(*values: float) -> Cell:
    return Cell(values={"auroc": list(values)})


def test_comparisons_call_a_tie_a_tie_and_respect_the_seed_spread():
    assert compare(_cell(0.0), _cell(0.0), "auroc") == ("level", 0.0)
    assert compare(_cell(0.5002), _cell(0.5), "auroc")[0] == "level"
    assert compare(_cell(0.8), _cell(0.6), "auroc") == ("ahead", pytest.approx(0.2))
    assert compare(_cell(0.6), _cell(0.8), "auroc")[0] == "behind"
    # means 0.2 and 0.15, spreads 0.141 and 0.071: the gap is inside the spread
    assert compare(_cell(0.1, 0.3), _cell(0.1, 0.2), "auroc")[0] == "inside the seed spread"
    assert compare(_cell(0.9, 0.91), _cell(0.1, 0.2), "auroc")[0] == "ahead"
    assert compare(Cell(), _cell(0.1), "auroc") is None


def test_report_averages_seeds_and_says_level_for_a_tie(tmp_path):
    def entry(model, fraction, seed, bleu4):
        run = Run("finetune", "generation", "iu-xray", model, fraction, seed)
        results = {"bleu4": bleu4, "bleu1": 0.1, "task": "generation"}
        return run.name, {"run": run.to_dict(), "status": "done", "results": results}

    runs = dict(
        [
            entry("random", 1.0, 0, 0.0),
            entry("gkmvlp", 1.0, 0, 0.0),
            entry("random", 0.1, 0, 0.02),
            entry("random", 0.1, 1, 0.04),
            entry("gkmvlp", 0.1, 0, 0.10),
            entry("gkmvlp", 0.1, 1, 0.12),
        ]
    )
    document = {
        "protocol": {"name": "t", "source": "t.yaml", "description": ""},
        "models": {"gkmvlp": "m"},
        "counts": {"done": 6, "failed": 0, "skipped": 0},
        "runs": runs,
    }
    report = write_report(tmp_path, document)
    assert "GK-MVLP level with random init" in report.headline
    assert "0.110 ± 0.014" in report.markdown and "0.030 ± 0.014" in report.markdown
    assert "at 10%: GK-MVLP ahead of random init (+0.080)" in report.markdown
    assert "0.000 ahead" not in report.markdown
    assert (tmp_path / "label_fractions.png").is_file()


def test_report_lays_probe_and_segmentation_out_as_the_asg_paper(tmp_path):
    def entry(task, dataset, model, fraction, value, probe=True):
        run = Run("finetune", task, dataset, model, fraction, 0, linear_probe=probe)
        results = {"auroc": value, "accuracy": value / 2, "dice_global": value, "task": task}
        return run.name, {"run": run.to_dict(), "status": "done", "results": results}

    runs = dict(
        [
            entry("classification", "covidx", "random", 0.01, 0.6),
            entry("classification", "covidx", "asg", 0.01, 0.8),
            entry("classification", "nih", "asg", 1.0, 0.7),
            entry("classification", "rsna", "asg", 1.0, 0.9, probe=False),  # not a probe
            entry("segmentation", "siim", "asg", 0.1, 0.42),
        ]
    )
    document = {
        "protocol": {"name": "t", "source": "t.yaml", "description": ""},
        "models": {"asg": "m"},
        "counts": {"done": 5, "failed": 0, "skipped": 0},
        "runs": runs,
    }
    markdown = write_report(tmp_path, document).markdown
    probe_table = markdown.split("**Linear probe classification (ASG paper layout)**")[1]
    header, _, random_row, asg_row = probe_table.strip().splitlines()[:4]
    # NIH before COVIDx as in the paper; COVIDx judged by accuracy, the others by AUROC.
    assert header.startswith("| start | nih AUROC 1% | nih AUROC 10% | nih AUROC 100% | covidx ACC")
    assert "rsna" not in header  # RSNA ran fine-tuned only, not as a probe
    assert asg_row == "| ASG | - | - | 0.700 | 0.400 | - | - |"
    assert random_row == "| random init | - | - | - | 0.300 | - | - |"
    segmentation = markdown.split("**Segmentation, frozen encoder (ASG paper layout)**")[1]
    assert "| ASG | - | 0.420 | - |" in segmentation


def test_report_shows_zero_shot_f1_and_accuracy_with_their_threshold_rule(tmp_path):
    run = Run("evaluate", "zero-shot", "rsna", "gkmvlp", 1.0, 0)
    results = {"auroc": 0.71, "f1": 0.52, "accuracy": 0.64, "threshold_rule": "RULE X"}
    document = {
        "protocol": {"name": "t", "source": "t.yaml", "description": ""},
        "models": {"gkmvlp": "m"},
        "counts": {"done": 1, "failed": 0, "skipped": 0},
        "runs": {run.name: {"run": run.to_dict(), "status": "done", "results": results}},
    }
    markdown = write_report(tmp_path, document).markdown
    table = markdown.split("**Zero-shot classification**")[1]
    assert "| rsna AUROC | rsna F1 | rsna accuracy |" in table
    assert "| GK-MVLP | 0.710 | 0.520 | 0.640 |" in table
    assert "Zero-shot F1 and accuracy on rsna: RULE X." in markdown
