"""Saving and loading the region detector: safetensors weights + config.json."""

from __future__ import annotations

import json
from pathlib import Path

from cxrvlp.engine.checkpoint import atomic_write, load_weights, read_state_dict, save_weights
from cxrvlp.errors import MissingFileError
from cxrvlp.models.detector import DetectorConfig, RegionDetector

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save_detector(model: RegionDetector, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(model, folder / WEIGHTS)
    config = json.dumps({"kind": "cxrvlp-region-detector", **model.config.to_dict()}, indent=2)
    atomic_write(folder / CONFIG, lambda path: path.write_text(config))
    return folder


def load_detector(folder: str | Path) -> RegionDetector:
    """The exported detector in one call (``cxrvlp detector train`` writes the folder)."""
    folder = Path(folder)
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).is_file():
            raise MissingFileError(
                folder / name, "region detector file", "Train one with `cxrvlp detector train`."
            )
    config = json.loads((folder / CONFIG).read_text())
    config.pop("kind", None)
    model = RegionDetector(DetectorConfig(**config))
    load_weights(model, folder / WEIGHTS)
    model.eval()
    return model


def load_initial_backbone(model: RegionDetector, path: str | Path) -> None:
    """Start the ResNet from local weights (torchvision ImageNet files or a safetensors file).

    A 3-channel first convolution is summed over its input channels for grayscale input.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "initial backbone weights", "Pass a local ResNet weight file.")
    state = read_state_dict(path)
    body = model.model.backbone.body
    if state.get("conv1.weight") is not None and state["conv1.weight"].shape[1] == 3:
        state["conv1.weight"] = state["conv1.weight"].sum(dim=1, keepdim=True)
    kept = {k: v for k, v in state.items() if k in body.state_dict()}
    if not kept:
        raise ValueError(f"{path} holds no weights of a ResNet body")
    body.load_state_dict(kept, strict=False)
