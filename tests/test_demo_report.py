"""The demo report's tables: one cell per starting point and label fraction, seeds averaged."""

from cxrvlp.demo import Demo, demo_config
from cxrvlp.viz.report import finetune_tables, write_report


def _results(finetune: dict[str, dict]) -> dict:
    return {
        "config": {"finetune": {"inits": ["random", "gkmvlp"], "fractions": [0.1, 1.0]}},
        "pretraining": {},
        "evaluations": {},
        "finetune": finetune,
    }


def _localization(map50: float, init: str, fraction: float) -> dict:
    return {"task": "localization", "init": init, "fraction": fraction, "map50": map50, "map": 0.1}


def test_seeds_of_a_cell_are_averaged_and_their_spread_shown(tmp_path):
    runs = {
        "localization-rsna-tune-random-0.1": _localization(0.2, "random", 0.1),
        "localization-rsna-tune-random-0.1-seed1": _localization(0.1, "random", 0.1),
        "localization-rsna-tune-gkmvlp-0.1": _localization(0.15, "gkmvlp", 0.1),
        "localization-rsna-tune-gkmvlp-0.1-seed1": _localization(0.25, "gkmvlp", 0.1),
        "localization-rsna-tune-random-1": _localization(0.3, "random", 1.0),
        "localization-rsna-tune-gkmvlp-1": _localization(0.2, "gkmvlp", 1.0),
    }
    tables, comparisons = finetune_tables(_results(runs))
    headline = tables[0]
    assert headline.header == ["start", "10%", "100%"]
    # mean 0.15, sample standard deviation 0.0707 of (0.2, 0.1); one seed: the plain value
    assert headline.rows[0] == ["random init", "0.150 ± 0.071", "0.300"]
    assert headline.rows[1] == ["GK-MVLP", "0.200 ± 0.071", "0.200"]
    # The comparisons judge by the means: seed 0 alone would have put GK-MVLP behind at 10 %.
    assert comparisons == [
        "localization | rsna | fine-tune at 10%: GK-MVLP 0.200 ahead of random init 0.150",
        "localization | rsna | fine-tune at 100%: GK-MVLP 0.200 NOT ahead of random init 0.300",
    ]
    report = write_report(tmp_path, _results(runs))
    assert "mean and the standard deviation" in report.markdown
    single = {name: run for name, run in runs.items() if "seed" not in name}
    assert "standard deviation" not in write_report(tmp_path, _results(single)).markdown


def test_demo_names_each_seed_run_and_passes_its_seed(tmp_path, monkeypatch):
    overrides = [
        "finetune.fractions=[1.0]",
        "finetune.inits=[random]",
        "finetune.seeds=[0,2]",
        "finetune.runs=[{task: classification, dataset: nih, linear_probe: true, steps: 1},"
        "{task: vqa, dataset: slake, linear_probe: false, steps: 1, seeds: [0]}]",
    ]
    demo = Demo(tmp_path / "demo", demo_config(None, overrides))
    names = [name for name, _ in demo.finetune_runs()]
    assert names == [
        "classification-nih-probe-random-1",
        "classification-nih-probe-random-1-seed2",
        "vqa-slake-tune-random-1",
    ]
    calls = []
    monkeypatch.setattr(demo, "_cli", calls.append)
    demo.finetune_all()
    seeds = [argv[argv.index("--seed") + 1] for argv in calls]
    outs = [argv[argv.index("--out") + 1].name for argv in calls]
    assert seeds == [0, 2, 0] and outs == names


def test_default_demo_runs_localization_with_two_seeds_and_the_rest_with_one(tmp_path):
    names = {name for name, _ in Demo(tmp_path, demo_config(None, None)).finetune_runs()}
    for init in ("random", "itc", "gkmvlp"):
        run = f"localization-rsna-tune-{init}-1"
        assert {run, f"{run}-seed1"} <= names
    assert "vqa-slake-tune-gkmvlp-1" in names
    assert not any("seed" in name for name in names if not name.startswith("localization"))
    assert len(names) == 8 * 3 * 3 + 3 * 3  # eight run specs x inits x fractions, + seed 1
