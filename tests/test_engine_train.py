"""The engine's Trainer on a toy model: an exact resume while the model draws from torch's
global RNG, batches without a readable sample passed over, a batch's nested tensors moved, a
compiled model (train.compile) training as the eager one."""

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import Dataset

from cxrvlp.engine.checkpoint import CheckpointManager
from cxrvlp.engine.train import TrainConfig, Trainer, to_device
from cxrvlp.errors import DataError
from cxrvlp.models.outputs import TaskOutput


class NoisyRegression(nn.Module):
    """A linear regression behind dropout, so every step draws from torch's global RNG."""

    def __init__(self):
        super().__init__()
        self.dropout = nn.Dropout(0.5)
        self.linear = nn.Linear(4, 1)

    def forward(self, batch: dict) -> TaskOutput:
        assert len(batch["index"]) > 0, "the engine handed over a batch without samples"
        error = self.linear(self.dropout(batch["x"])).squeeze(1) - batch["y"]
        loss = error.pow(2).mean()
        return TaskOutput(loss=loss, losses={"mse": loss.detach()})


class Points(Dataset):
    """Fixed random points; those in ``unreadable`` fail to load, as a broken file would."""

    def __init__(self, size: int, unreadable: tuple[int, ...] = ()):
        self.x = torch.randn(size, 4, generator=torch.Generator().manual_seed(0))
        self.unreadable = unreadable

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict:
        return {"index": index, "x": self.x[index], "readable": index not in self.unreadable}


def collate(items: list[dict]) -> dict:
    good = [item for item in items if item["readable"]]
    return {
        "skipped": [(f"point {item['index']}", "unreadable") for item in items if item not in good],
        "index": torch.tensor([item["index"] for item in good], dtype=torch.long),
        "x": torch.stack([item["x"] for item in good]) if good else torch.zeros(0, 4),
        "y": torch.stack([item["x"].sum() for item in good]) if good else torch.zeros(0),
    }


def config(**changes) -> TrainConfig:
    settings = {
        "batch_size": 2,
        "lr": 1e-2,
        "warmup_steps": 1,
        "max_steps": 7,
        "checkpoint_every": 3,
        "keep_last": None,
        "device": "cpu",
    }
    return TrainConfig(**{**settings, **changes})


def trainer(dataset: Dataset, run_dir, **changes) -> Trainer:
    return Trainer(NoisyRegression(), dataset, collate, run_dir, config(**changes), progress=False)


def test_resuming_a_checkpoint_continues_with_the_same_random_numbers(tmp_path):
    # 5 points in batches of 2: the step-3 checkpoint is in the middle of the second epoch.
    torch.manual_seed(0)
    whole = trainer(Points(5), tmp_path / "whole")
    whole.run()
    torch.manual_seed(1)  # a new process: its RNG differs until the checkpoint restores it
    resumed = trainer(Points(5), tmp_path / "resumed")
    assert resumed.resume(CheckpointManager(tmp_path / "whole").checkpoints()[0]) == 3
    resumed.run()
    expected, actual = whole.model.state_dict(), resumed.model.state_dict()
    for name, tensor in expected.items():
        assert torch.equal(tensor, actual[name]), name


def test_a_batch_without_a_readable_sample_is_counted_and_passed_over(tmp_path):
    summary = trainer(Points(4, unreadable=(2,)), tmp_path, batch_size=1, max_steps=6).run()
    # Six steps on three readable points a batch each span the whole first epoch.
    assert summary["steps"] == 6 and summary["skipped_samples"] >= 1


def test_an_epoch_without_a_readable_sample_is_an_error(tmp_path):
    with pytest.raises(DataError, match="could be read"):
        trainer(Points(4, unreadable=(0, 1, 2, 3)), tmp_path).run()


def test_tensors_inside_a_batchs_lists_tuples_and_dicts_move_to_the_device():
    batch = {
        "image": torch.zeros(2, 3),
        "targets": [{"boxes": torch.zeros(1, 4), "labels": torch.ones(1)}],
        "skipped": [("a.jpg", "unreadable")],
        "pair": (torch.zeros(1), "text"),
    }
    moved = to_device(batch, torch.device("meta"))
    assert moved["image"].is_meta and moved["pair"][0].is_meta
    assert moved["targets"][0]["boxes"].is_meta and moved["targets"][0]["labels"].is_meta
    assert moved["skipped"] == [("a.jpg", "unreadable")] and moved["pair"][1] == "text"


class Regression(nn.Module):
    """NoisyRegression without the dropout, whose random numbers a compiled graph draws
    differently."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)

    def forward(self, batch: dict) -> TaskOutput:
        error = self.linear(batch["x"]).squeeze(1) - batch["y"]
        loss = error.pow(2).mean()
        return TaskOutput(loss=loss, losses={"mse": loss.detach()})


@pytest.mark.slow  # inductor compiles C++ kernels: about a minute
def test_a_compiled_model_trains_to_the_eager_weights_and_saves_the_same_keys(tmp_path):
    runs = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        run = Trainer(
            Regression(),
            Points(6),
            collate,
            tmp_path / f"compiled_{compiled}",
            config(max_steps=4, checkpoint_every=4, compile=compiled),
            progress=False,
        )
        assert hasattr(run.module, "_orig_mod") == compiled  # torch.compile's wrapper
        run.run()
        runs[compiled] = load_file(CheckpointManager(run.run_dir).latest() / "model.safetensors")
    assert list(runs[True]) == list(runs[False]) == ["linear.bias", "linear.weight"]
    torch.manual_seed(0)
    assert not torch.equal(runs[False]["linear.weight"], Regression().linear.weight.detach())
    for name, eager in runs[False].items():
        torch.testing.assert_close(runs[True][name], eager, rtol=1e-5, atol=1e-6)
