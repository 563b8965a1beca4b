"""The whole pipeline at micro scale: synth -> detector -> pre-training -> every task -> report."""

import json

from cxrvlp.cli import main
from cxrvlp.demo import Demo, demo_config

MICRO = """
world: {studies: 40, image_size: 96, downstream_fraction: 0.5, cohort_studies: {rsna: 24}}
threads: 1
workers: 1
tokenizer: {vocab_size: 400}
detector: {image_size: 96, batch_size: 2, max_steps: 2}
pretrain: {batch_size: 4, warmup_steps: 1, max_steps: 2, itc_max_steps: 2}
evaluate: {zero_shot: [nih]}
finetune:
  fractions: [0.5, 1.0]
  batch_size: 2
  runs:
    - {task: classification, dataset: chexpert, linear_probe: true, steps: 1, seeds: [0, 1]}
    - {task: localization, dataset: rsna, linear_probe: false, steps: 1}
    - {task: generation, dataset: iu-xray, linear_probe: false, steps: 1}
    - {task: vqa, dataset: slake, linear_probe: false, steps: 1}
"""


def test_demo_runs_every_step_and_reports_every_task(tmp_path, capsys):
    config = tmp_path / "micro.yaml"
    config.write_text(MICRO)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--config", str(config)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["pretraining"]) == {"gkmvlp", "itc"}
    for name in ("retrieval-gkmvlp", "grounding-gkmvlp", "entities-gkmvlp", "zero-shot-nih-itc"):
        assert name in results["evaluations"], name
    assert (
        json.loads((out / "world" / "world.json").read_text())["cohorts"]["rsna"]["studies"] == 24
    )
    runs = results["finetune"]
    # four task runs x three starting points x two fractions, the first with two seeds
    assert len(runs) == 5 * 3 * 2
    for name, run in runs.items():
        headline = {"classification": "auroc", "localization": "map50",
                    "generation": "bleu4", "vqa": "acc_overall"}[run["task"]]  # fmt: skip
        assert headline in run, name
    assert runs["vqa-slake-tune-random-0.5"]["init"] == "random"
    report = (out / "report.md").read_text()
    assert "GK-MVLP" in report and "ITC-only" in report and "random init" in report
    seeded = "classification-chexpert-probe-gkmvlp-1-seed1"
    assert json.loads((out / "finetune" / seeded / "finetune.json").read_text())["seed"] == 1
    assert "±" in report.split("classification | chexpert")[1].split("**")[1]
    assert (out / "report.html").is_file() and (out / "roc_curves.png").is_file()
    assert "Summary" in capsys.readouterr().out
    # A second call finds every step done and only rewrites the report.
    assert main(["demo", "--out", str(out), "--config", str(config)]) == 0
    assert "done already" in capsys.readouterr().out


def test_demo_without_finetuning_runs_marks_the_step_done(tmp_path):
    demo = Demo(tmp_path / "demo", demo_config(None, ["finetune.runs=[]"]))
    demo.finetune_all()
    assert json.loads((tmp_path / "demo" / "finetune" / "done.json").read_text()) == {"runs": 0}


def test_demo_pretraining_is_bounded_by_steps_unless_minutes_are_given(tmp_path, monkeypatch):
    def pretrain_argv(overrides):
        calls = []
        demo = Demo(tmp_path, demo_config(None, overrides))
        monkeypatch.setattr(demo, "_cli", calls.append)
        demo.pretrain("gkmvlp", [])
        return calls[0]  # the pretrain command; the export follows it

    default = pretrain_argv(None)
    assert "train.max_minutes=null" in default
    assert default[default.index("--max-steps") + 1] == 300
    assert "train.max_minutes=5.0" in pretrain_argv(["pretrain.max_minutes=5.0"])
