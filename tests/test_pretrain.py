"""`cxrvlp pretrain` end to end on a tiny synthetic world, on the CPU: the run folder,
2-process gloo == 1 process (one torchrun, two torchrun "nodes", two srun-style tasks),
SIGKILL + --resume latest == uninterrupted, export -> load."""

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from cxrvlp.cli import main
from cxrvlp.engine.checkpoint import CheckpointManager, step_dir_name
from pretrain_runs import (
    cli,
    environment,
    final_weights,
    free_port,
    metrics,
    run_together,
    srun_task_environment,
    torchrun_node,
)

MICRO = [
    "model.embed_dim=16",
    "model.image.image_size=64",
    "model.image.width=32",
    "model.image.depth=1",
    "model.image.heads=2",
    "model.text.vocab_size=300",
    "model.text.width=32",
    "model.text.layers=1",
    "model.text.heads=2",
    "model.text.intermediate=64",
    "model.text.max_length=64",
    "model.image_report_encoder.layers=1",
    "model.decoder.layers=1",
    "model.gk.layers=1",
    "model.gk.heads=2",
    "train.warmup_steps=2",
    "train.log_every=1",
    "train.lr=1e-3",
    "train.threads=1",
]


@pytest.fixture(scope="module")
def world(make_mimic_world) -> Path:
    return make_mimic_world(24)


@pytest.fixture(scope="module")
def tokenizer(world, tmp_path_factory) -> str:
    """One vocabulary for runs that are compared: the tokenizers library's WordPiece trainer
    breaks frequency ties differently in every process."""
    out = tmp_path_factory.mktemp("tokenizer")
    argv = ["text", "tokenizer", "--corpus", str(world), "--out", str(out), "--vocab-size", "300"]
    assert main(argv) == 0
    return f"model.text.tokenizer={out}"


def _pretrain_argv(world: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [
        "pretrain", "--data", str(world), "--out", str(out), "--max-steps", str(steps),
        "--quiet", *MICRO, *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    assert main(_pretrain_argv(world, run, 6, "train.batch_size=4")) == 0
    return run


def test_run_folder_holds_config_metrics_events_checkpoint_and_tokenizer(trained):
    rows = metrics(trained)
    assert [row["step"] for row in rows] == list(range(1, 7))
    for row in rows:
        terms = ("loss_itc", "loss_itm", "loss_lm", "loss_ecls", "loss_grounding")
        for name in (*terms, "lr", "samples_per_s"):
            assert name in row and row[name] == row[name]  # present and not NaN
        weighted = sum(row[name] for name in terms)
        assert row["loss"] == pytest.approx(weighted, rel=1e-5)
    assert "model:" in (trained / "config.yaml").read_text()
    assert list((trained / "tensorboard").glob("events.out.tfevents.*"))
    assert CheckpointManager(trained).latest().name == "step_00000006"
    assert (trained / "tokenizer" / "vocab.txt").is_file()
    assert (trained / "losses.png").stat().st_size > 1000
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["skipped_samples"] == 0


def test_a_finished_run_is_not_overwritten(world, trained):
    with pytest.raises(SystemExit, match="--resume latest"):
        main(_pretrain_argv(world, trained, 6))


def test_unknown_override_is_an_error(world, tmp_path):
    with pytest.raises(KeyError, match=r"gk\.enabeld"):
        main(_pretrain_argv(world, tmp_path / "run", 1, "model.gk.enabeld=false"))


@pytest.fixture(scope="module")
def one_process(world, tokenizer, tmp_path_factory) -> list[dict]:
    """The metrics of 4 steps of batch 4 in one process, which runs in several must repeat."""
    run = tmp_path_factory.mktemp("one_process")
    assert main(_pretrain_argv(world, run, 4, "train.batch_size=4", tokenizer)) == 0
    return metrics(run)


def _two_process_argv(world: Path, run: Path, tokenizer: str) -> list[str]:
    return _pretrain_argv(world, run, 4, "train.batch_size=2", tokenizer)


def _assert_losses_of_one_process(one_process: list[dict], run: Path) -> None:
    two = metrics(run)
    assert len(one_process) == len(two) == 4
    for a, b in zip(one_process, two, strict=True):
        for name in ("loss", "loss_itc", "loss_itm", "loss_lm", "loss_ecls", "loss_grounding"):
            assert b[name] == pytest.approx(a[name], rel=1e-5), (a["step"], name)
    assert json.loads((run / "summary.json").read_text())["world_size"] == 2
    # Weights are not compared: parameters with structurally zero gradients (attention query
    # biases) receive rounding noise that Adam scales to steps of up to lr, differently for
    # 1 and 2 processes (a 1e-4 bound failed on a fresh clone). The losses above are exact.


def test_two_gloo_processes_give_the_loss_sequence_of_one(world, tokenizer, one_process, tmp_path):
    run = tmp_path / "run"
    command = cli(_two_process_argv(world, run, tokenizer), processes=2)
    run_together([command], [environment()], tmp_path, timeout=300)
    _assert_losses_of_one_process(one_process, run)


@pytest.mark.slow
def test_two_torchrun_nodes_give_the_loss_sequence_of_one(world, tokenizer, one_process, tmp_path):
    run, port = tmp_path / "run", free_port()
    argv = _two_process_argv(world, run, tokenizer)
    nodes = [torchrun_node(argv, node_rank, nodes=2, port=port) for node_rank in (0, 1)]
    run_together(nodes, [environment()] * 2, tmp_path, timeout=300)
    _assert_losses_of_one_process(one_process, run)


@pytest.mark.slow
def test_two_srun_tasks_give_the_loss_sequence_of_one(world, tokenizer, one_process, tmp_path):
    run, port = tmp_path / "run", free_port()
    tasks = [cli(_two_process_argv(world, run, tokenizer))] * 2
    environments = [srun_task_environment(task, tasks=2, port=port) for task in (0, 1)]
    run_together(tasks, environments, tmp_path, timeout=300)
    _assert_losses_of_one_process(one_process, run)


def test_sigkill_then_resume_latest_ends_with_the_uninterrupted_weights(world, tokenizer, tmp_path):
    steps = ["train.batch_size=4", "train.checkpoint_every=4", tokenizer]
    uninterrupted, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    assert main(_pretrain_argv(world, uninterrupted, 40, *steps)) == 0

    process = subprocess.Popen(
        cli(_pretrain_argv(world, killed, 40, *steps)),
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marker = killed / "checkpoints" / "step_00000008" / "meta.json"
    deadline = time.monotonic() + 240
    while not marker.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert marker.is_file(), "the run ended before its step-8 checkpoint"
    stopped_at = CheckpointManager(killed).latest().name
    assert stopped_at != "step_00000040", "killed too late to test a resume"

    assert main(["pretrain", "--out", str(killed), "--resume", "latest", "--quiet"]) == 0
    expected, resumed = final_weights(uninterrupted), final_weights(killed)
    assert expected.keys() == resumed.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, resumed[name]), name
    rows = metrics(killed)
    assert [row["step"] for row in rows] == list(range(1, 41))
    assert [row["loss"] for row in rows] == [row["loss"] for row in metrics(uninterrupted)]


def test_export_then_load_pretrained_gives_the_same_outputs(world, trained, tmp_path):
    import cxrvlp
    from cxrvlp.data.pretraining import pretraining_dataset
    from cxrvlp.models.registry import model_from_config
    from cxrvlp.pretrain import read_config
    from cxrvlp.recipes.batch import PretrainCollator, attach_prompts
    from cxrvlp.text.tokenizer import load_tokenizer

    bundle = tmp_path / "model"
    assert main(["export", str(trained), "--out", str(bundle)]) == 0
    loaded = cxrvlp.load_pretrained(bundle)
    assert loaded.info["step"] == 6 and not loaded.model.training

    config = read_config(trained)
    tokenizer = load_tokenizer(trained / "tokenizer")
    reference = model_from_config(config.model, vocab_size=len(tokenizer))
    CheckpointManager(trained).load("latest", reference, restore_rng=False)
    attach_prompts(reference, tokenizer)
    reference.eval()

    dataset = pretraining_dataset(world, split="validate", transform=loaded.transform)
    batch = PretrainCollator(loaded.tokenizer, 64)([dataset[i] for i in range(3)])
    with torch.no_grad():
        outputs = []
        for model in (reference, loaded.model):
            entities, _ = model.prompt_embeddings()
            features = model.encode_image(batch["image"], batch["boxes"])
            hidden = model.encode_text(batch["input_ids"], batch["attention_mask"])
            outputs.append(
                (
                    features.embedding,
                    features.grounding.attention,
                    model.entity_scores(features, entities),
                    model.itm_logits(hidden, batch["attention_mask"], features.tokens),
                    model.decoder(batch["input_ids"], batch["attention_mask"], features.tokens),
                )
            )
    for a, b in zip(*outputs, strict=True):
        assert torch.equal(a, b)
    # The bundle's transform is the model's: the image side of the config, no augmentation.
    assert loaded.transform.size == 64 and not loaded.transform.augment


def test_evaluate_writes_results_and_grounding_pictures(world, trained, tmp_path):
    bundle = tmp_path / "model"
    assert main(["export", str(trained), "--out", str(bundle)]) == 0
    for task in ("retrieval", "entities", "grounding"):
        out = tmp_path / task
        argv = ["evaluate", task, "--pretrained", str(bundle), "--root", str(world)]
        assert main([*argv, "--split", "train", "--out", str(out), "--quiet"]) == 0
        results = json.loads((out / "results.json").read_text())
        assert results["task"] == task
    retrieval = json.loads((tmp_path / "retrieval" / "results.json").read_text())
    assert 0.0 <= retrieval["image_to_report_r@5"] <= 1.0 and retrieval["images"] == 19
    entities = json.loads((tmp_path / "entities" / "results.json").read_text())
    assert set(entities["world_truth"]["per_entity"]) <= set(entities["per_entity"])
    assert entities["world_truth"]["per_entity"]  # the world's finding types, scored on truth
    grounding = json.loads((tmp_path / "grounding" / "results.json").read_text())
    assert grounding["gk_attention"]["pairs"] > 0
    # gkmvlp-tiny maps an image without a report with the "<finding>: present" prompts
    assert grounding["primary_map"] == "gk_finding_prompts"
    assert grounding["pointing_game"] == grounding["gk_finding_prompts"]["pointing_game"]
    assert grounding["gk_finding_prompts"]["pairs"] == grounding["gk_attention"]["pairs"]
    # Held-out pairs with another report's prompts: every loss but grounding is unchanged.
    leakage = grounding["report_prompts"]
    assert leakage["images"] == 19
    for term in ("itc", "itm", "lm", "ecls"):
        assert leakage["other_report"][term] == leakage["paired"][term], term
    assert leakage["other_report"]["grounding"] != leakage["paired"]["grounding"]
    for picture in ("grounding_gk.png", "grounding_gk_findings.png"):
        assert (tmp_path / "grounding" / picture).stat().st_size > 1000
    assert (tmp_path / "grounding" / "grounding_itm.png").stat().st_size > 1000


def test_gradient_accumulation_consumes_micro_batches_per_step(world, tmp_path):
    run = tmp_path / "accumulate"
    assert main(_pretrain_argv(world, run, 2, "train.batch_size=2", "train.accumulate=2")) == 0
    assert [row["step"] for row in metrics(run)] == [1, 2]
    state = torch.load(CheckpointManager(run).latest() / "training_state.pt", weights_only=True)
    # 19 training images: 9 batches of 2 per epoch; 2 steps x 2 micro-batches = 4 consumed.
    assert (state["extra"]["epoch"], state["extra"]["batch_in_epoch"]) == (0, 4)


def test_time_limit_stops_after_the_step_that_crosses_it_and_saves(world, tmp_path):
    run = tmp_path / "limited"
    # A limit of a millionth of a minute is crossed by the first step.
    argv = _pretrain_argv(world, run, 5, "train.batch_size=2", "train.max_minutes=1e-6")
    assert main(argv) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_early"] is True and summary["steps"] == 1
    assert [row["step"] for row in metrics(run)] == [1]
    assert CheckpointManager(run).latest().name == step_dir_name(1)


def test_grounding_truth_is_the_same_whether_boxes_come_from_imagenome_or_the_detector(
    world, trained, tmp_path
):
    import cxrvlp
    from cxrvlp.constants import CHEST_IMAGENOME_REGIONS
    from cxrvlp.data.pretraining import read_imagenome
    from cxrvlp.tasks.encode import encode_split

    bundle = tmp_path / "model"
    assert main(["export", str(trained), "--out", str(bundle)]) == 0
    loaded = cxrvlp.load_pretrained(bundle)
    boxes, links, _ = read_imagenome(world)
    # The ImaGenome boxes written as `cxrvlp detector annotate` rows.
    annotations = tmp_path / "boxes.jsonl"
    rows = (
        {
            "image_id": image_id,
            "regions": {
                name: {"box": box.tolist()}
                for name, box in zip(CHEST_IMAGENOME_REGIONS, image_boxes, strict=True)
            },
        }
        for image_id, image_boxes in boxes.items()
    )
    annotations.write_text("".join(json.dumps(row) + "\n" for row in rows))

    encoded = [
        encode_split(loaded, str(world), split="train", boxes=source, progress=False)
        for source in ("imagenome", str(annotations))
    ]
    expected = [links[image_id] for image_id in encoded[0].image_ids]
    assert any(expected)
    assert encoded[0].finding_regions == encoded[1].finding_regions == expected
    assert torch.allclose(encoded[0].boxes, encoded[1].boxes, equal_nan=True)
