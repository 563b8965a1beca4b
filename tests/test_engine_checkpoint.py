"""Checkpoints and seeding: exact save/load, exact resume, atomicity, pruning, errors."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from cxrvlp.engine.checkpoint import (
    META_FILE,
    TRAINING_STATE_FILE,
    WEIGHTS_FILE,
    CheckpointManager,
    WeightsMismatchError,
    load_weights,
    save_weights,
)
from cxrvlp.engine.seeding import rng_state, seed_everything, set_rng_state

TOTAL_STEPS = 10


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 2))


def make_training(model: nn.Module):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / TOTAL_STEPS))
    )
    return optimizer, scheduler


def train(model, optimizer, scheduler, steps: int) -> None:
    # Draws from every generator rng_state captures: torch (data and dropout), numpy, python.
    model.train()
    for _ in range(steps):
        inputs = torch.randn(16, 4) + float(np.random.standard_normal()) * random.random()
        loss = model(inputs).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


def assert_same_tensors(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), name


class TiedModel(nn.Module):
    """An embedding and an output head sharing one weight, plus awkward buffers."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(6, 4)
        self.head = nn.Linear(4, 6, bias=False)
        self.head.weight = self.embed.weight
        base = torch.arange(12.0).reshape(3, 4)
        self.register_buffer("transposed", base.t())  # not contiguous
        self.register_buffer("first_row", base[0])  # overlaps `transposed`'s memory


def test_save_then_load_restores_weights_optimizer_and_scheduler(tmp_path):
    seed_everything(0)
    model = make_model()
    optimizer, scheduler = make_training(model)
    train(model, optimizer, scheduler, 3)
    manager = CheckpointManager(tmp_path)
    folder = manager.save(3, model, optimizer, scheduler, extra={"epoch": 1, "best": [0.5]})

    assert folder == tmp_path / "checkpoints" / "step_00000003"
    assert sorted(p.name for p in folder.iterdir()) == [
        META_FILE,
        WEIGHTS_FILE,
        TRAINING_STATE_FILE,
    ]

    seed_everything(1)
    restored = make_model()
    restored_optimizer, restored_scheduler = make_training(restored)
    result = manager.load("latest", restored, restored_optimizer, restored_scheduler)

    assert result == {"step": 3, "extra": {"epoch": 1, "best": [0.5]}, "path": folder}
    assert_same_tensors(restored.state_dict(), model.state_dict())
    saved_optimizer, loaded_optimizer = optimizer.state_dict(), restored_optimizer.state_dict()
    assert loaded_optimizer["param_groups"] == saved_optimizer["param_groups"]
    for index, state in saved_optimizer["state"].items():
        assert_same_tensors(loaded_optimizer["state"][index], state)
    assert restored_scheduler.state_dict() == scheduler.state_dict()
    assert restored_scheduler.get_last_lr() == scheduler.get_last_lr()


def test_resume_continues_bit_identically(tmp_path):
    seed_everything(123)
    model = make_model()
    optimizer, scheduler = make_training(model)
    train(model, optimizer, scheduler, 5)
    manager = CheckpointManager(tmp_path)
    manager.save(5, model, optimizer, scheduler)
    train(model, optimizer, scheduler, 5)

    seed_everything(999)  # a fresh process would start from other generator states
    resumed = make_model()
    resumed_optimizer, resumed_scheduler = make_training(resumed)
    assert manager.load("latest", resumed, resumed_optimizer, resumed_scheduler)["step"] == 5
    train(resumed, resumed_optimizer, resumed_scheduler, 5)

    assert_same_tensors(resumed.state_dict(), model.state_dict())


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    seed_everything(7)
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.standard_normal(3), torch.randn(3))

    seed_everything(8)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (random.random(), np.random.standard_normal(3), torch.randn(3))

    assert again[0] == expected[0]
    np.testing.assert_array_equal(again[1], expected[1])
    assert torch.equal(again[2], expected[2])


def test_seed_everything_rejects_out_of_range_seeds():
    with pytest.raises(ValueError, match="seed"):
        seed_everything(-1)
    with pytest.raises(ValueError, match="seed"):
        seed_everything(2**32)


def test_training_state_loads_with_weights_only(tmp_path):
    model = make_model()
    optimizer, scheduler = make_training(model)
    train(model, optimizer, scheduler, 2)
    folder = CheckpointManager(tmp_path).save(
        2, model, optimizer, scheduler, extra={"metric": torch.tensor(0.25), "name": "run"}
    )

    state = torch.load(folder / TRAINING_STATE_FILE, weights_only=True)

    assert state["step"] == 2
    assert set(state) >= {"optimizer", "scheduler", "rng", "extra"}
    assert state["extra"]["name"] == "run"
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["step"] == 2
    assert set(meta["files"]) == {WEIGHTS_FILE, TRAINING_STATE_FILE}


def test_extra_that_needs_unpickling_is_refused_before_writing(tmp_path):
    manager = CheckpointManager(tmp_path)
    with pytest.raises(TypeError, match="PosixPath"):
        manager.save(1, make_model(), extra={"data_dir": Path("/data")})
    assert manager.latest() is None
    assert list(manager.checkpoints_dir.glob("*")) == []


def test_latest_ignores_half_written_folders(tmp_path):
    manager = CheckpointManager(tmp_path)
    complete = manager.save(1, make_model())
    checkpoints = manager.checkpoints_dir
    # A higher step with no meta.json, one whose weights were truncated, a staging folder that
    # holds every file, and a stray temporary file.
    (checkpoints / "step_00000002").mkdir()
    (checkpoints / "step_00000002" / WEIGHTS_FILE).write_bytes(b"partial")
    truncated = manager.save(3, make_model())
    weights = truncated / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-1])
    staged = manager.save(4, make_model())
    staged.rename(checkpoints / ".staging-step_00000004-0123")
    (checkpoints / "step_00000005.tmp").write_text("")

    assert manager.latest() == complete
    assert manager.checkpoints() == [complete]
    assert manager.load("latest", make_model())["step"] == 1
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        manager.load(truncated, make_model())


def test_keep_last_prunes_oldest_but_never_the_checkpoint_just_written(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    model = make_model()
    for step in (1, 2, 3, 4):
        manager.save(step, model)
    assert [folder.name for folder in manager.checkpoints()] == ["step_00000003", "step_00000004"]

    manager.save(2, model)  # resumed from an earlier step
    assert [folder.name for folder in manager.checkpoints()] == ["step_00000002", "step_00000004"]
    assert sorted(p.name for p in manager.checkpoints_dir.iterdir()) == [
        "step_00000002",
        "step_00000004",
    ]


def test_keep_last_none_keeps_everything_and_zero_is_refused(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=None)
    for step in range(5):
        manager.save(step, make_model())
    assert len(manager.checkpoints()) == 5
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointManager(tmp_path, keep_last=0)


def test_saving_a_step_again_replaces_it(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save(1, make_model(), extra={"attempt": 1})
    manager.save(1, make_model(), extra={"attempt": 2})
    assert manager.load("latest", make_model())["extra"] == {"attempt": 2}
    assert [p.name for p in manager.checkpoints_dir.iterdir()] == ["step_00000001"]


def test_tied_and_non_contiguous_tensors_save_and_load(tmp_path):
    model = TiedModel()
    manager = CheckpointManager(tmp_path)
    folder = manager.save(1, model)
    with safe_open(folder / WEIGHTS_FILE, framework="pt") as weights:
        stored = set(weights.keys())
    assert len(stored & {"embed.weight", "head.weight"}) == 1  # the tied weight is stored once

    restored = TiedModel()
    with torch.no_grad():
        restored.embed.weight.zero_()
    manager.load(folder, restored)

    assert_same_tensors(restored.state_dict(), model.state_dict())
    assert restored.head.weight is restored.embed.weight


def test_resume_latest_without_checkpoint_names_the_run_folder(tmp_path):
    run_dir = tmp_path / "my_run"
    with pytest.raises(FileNotFoundError, match="Nothing to resume") as error:
        CheckpointManager(run_dir).load("latest", make_model())
    assert str(run_dir) in str(error.value)


def test_mismatched_weights_name_the_keys_and_leave_the_model_untouched(tmp_path):
    folder = CheckpointManager(tmp_path).save(1, make_model())
    other = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))  # no dropout: renumbered
    before = {name: tensor.clone() for name, tensor in other.state_dict().items()}

    with pytest.raises(WeightsMismatchError) as error:
        CheckpointManager(tmp_path).load(folder, other)

    message = str(error.value)
    assert "missing keys" in message and "2.weight" in message
    assert "unexpected keys" in message and "3.weight" in message
    assert_same_tensors(other.state_dict(), before)

    wider = nn.Sequential(nn.Linear(4, 9), nn.ReLU(), nn.Dropout(0.3), nn.Linear(9, 2))
    with pytest.raises(WeightsMismatchError, match=r"shape mismatches: 0\.weight"):
        load_weights(wider, folder / WEIGHTS_FILE, strict=False)


def test_optimizer_requested_from_a_checkpoint_without_one(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save(1, make_model())
    model = make_model()
    optimizer, _ = make_training(model)
    with pytest.raises(ValueError, match="holds no optimizer state"):
        manager.load("latest", model, optimizer)


def test_save_weights_and_load_weights_for_exports(tmp_path):
    model = make_model()
    path = tmp_path / "export" / "weights.safetensors"
    save_weights(nn.DataParallel(model), path)  # wrappers are looked through
    assert [p.name for p in path.parent.iterdir()] == ["weights.safetensors"]

    restored = make_model()
    assert load_weights(restored, path) == ([], [])
    assert_same_tensors(restored.state_dict(), model.state_dict())

    bigger = nn.Sequential(*make_model(), nn.Linear(2, 2))
    report = load_weights(bigger, path, strict=False)
    assert report.missing_keys == ["4.weight", "4.bias"] and report.unexpected_keys == []
    with pytest.raises(FileNotFoundError):
        load_weights(restored, tmp_path / "absent.safetensors")


@pytest.mark.parametrize("failing_rename", [1, 2, 3, 4])
def test_a_save_that_fails_midway_keeps_the_previous_checkpoint(
    tmp_path, monkeypatch, failing_rename
):
    manager = CheckpointManager(tmp_path)
    previous = manager.save(1, make_model())
    real_replace = os.replace
    renames = []

    # Renames in a save: weights file, training state, meta.json, then the step folder.
    def replace_that_fails(source, target):
        renames.append(target)
        if len(renames) == failing_rename:
            raise OSError("disk full")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace_that_fails)
    with pytest.raises(OSError, match="disk full"):
        manager.save(2, make_model())
    monkeypatch.setattr(os, "replace", real_replace)

    assert manager.latest() == previous
    assert [p.name for p in manager.checkpoints_dir.iterdir()] == ["step_00000001"]


def test_a_process_killed_mid_save_keeps_the_previous_checkpoint(tmp_path):
    # The child dies without any cleanup just before the finished step folder is renamed
    # into place, the latest moment a crash can happen.
    script = textwrap.dedent(
        f"""
        import os
        from torch import nn
        from cxrvlp.engine.checkpoint import CheckpointManager

        manager = CheckpointManager({str(tmp_path)!r})
        model = nn.Linear(4, 2)
        manager.save(1, model)
        real_replace = os.replace

        def replace_or_die(source, target):
            if os.path.basename(target).startswith("step_"):
                os._exit(3)
            real_replace(source, target)

        os.replace = replace_or_die
        manager.save(2, model)
        """
    )
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert child.returncode == 3, child.stderr.decode()

    manager = CheckpointManager(tmp_path)
    leftovers = [p.name for p in manager.checkpoints_dir.iterdir() if p.name.startswith(".")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".staging-step_00000002")
    assert manager.latest() == manager.checkpoints_dir / "step_00000001"

    manager.save(2, nn.Linear(4, 2))  # the next save clears what the crash left behind
    assert [p.name for p in sorted(manager.checkpoints_dir.iterdir())] == [
        "step_00000001",
        "step_00000002",
    ]
