"""Checkpoints: model weights in safetensors, the training state beside them, written atomically.

Layout of a run folder::

    run_dir/checkpoints/step_00001000/
        model.safetensors   model.state_dict(); tied tensors stored once (see save_weights)
        training_state.pt   optimizer, scheduler, RNG state, step and extra (torch.save)
        meta.json           format version, step and the size of every file; written last

A step folder is assembled under a hidden temporary name and renamed into place only when
complete, and each file in it is written under a temporary name and renamed, so a crash never
leaves a folder that looks complete. A folder counts as a checkpoint only when its
``meta.json`` exists and the files it lists have the sizes it records. Everything is read back
with ``torch.load(weights_only=True)`` or safetensors: nothing else is ever unpickled.

One process writes to a run folder (rank 0 under DistributedDataParallel).
"""

from __future__ import annotations

import io
import json
import operator
import os
import pickle
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cxrvlp.engine.seeding import rng_state, set_rng_state

CHECKPOINTS_DIR = "checkpoints"
WEIGHTS_FILE = "model.safetensors"
TRAINING_STATE_FILE = "training_state.pt"
META_FILE = "meta.json"
FORMAT_VERSION = 1
LATEST = "latest"

# safetensors metadata key: JSON {name: stored name} of state_dict entries tied to another.
TIED_ALIASES_KEY = "cxrvlp.tied_aliases"
_STEP_DIR = re.compile(r"step_(\d+)")
# Hidden names, so they never match _STEP_DIR: folders being assembled or being deleted.
_STAGING_PREFIX = ".staging-"
_RETIRED_PREFIX = ".retired-"
_MAX_KEYS_IN_MESSAGE = 10


class WeightsMismatchError(RuntimeError):
    """The weights in a file do not fit the model (missing or unexpected keys, other shapes)."""


class LoadReport(NamedTuple):
    """Keys the model has but the file lacks, and keys the file has but the model lacks."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


class CheckpointManager:
    """Saves, finds, loads and prunes the checkpoints of one run folder.

    ``keep_last``: how many checkpoints to keep (None keeps all); the one just written is never
    deleted, together with the ``keep_last - 1`` others of highest step.
    """

    def __init__(self, run_dir: str | Path, keep_last: int | None = 3):
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"keep_last must be at least 1 (or None to keep all), got {keep_last}")
        self.run_dir = Path(run_dir)
        self.checkpoints_dir = self.run_dir / CHECKPOINTS_DIR
        self.keep_last = keep_last

    def save(
        self,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Path:
        """Write the checkpoint of ``step`` and return its folder.

        ``extra`` must hold only what ``torch.load(weights_only=True)`` reads back (tensors,
        numbers, strings, None, lists, tuples, dicts); it is checked before anything is written.
        """
        step = operator.index(step)
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        extra = dict(extra or {})
        _check_weights_only_loadable(extra)
        self.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers()

        staging = self.checkpoints_dir / f"{_STAGING_PREFIX}{step_dir_name(step)}-{_unique()}"
        staging.mkdir()
        try:
            save_weights(model, staging / WEIGHTS_FILE)
            training_state = {
                "format_version": FORMAT_VERSION,
                "step": step,
                "optimizer": None if optimizer is None else optimizer.state_dict(),
                "scheduler": None if scheduler is None else scheduler.state_dict(),
                "rng": rng_state(),
                "extra": extra,
            }
            atomic_write(
                staging / TRAINING_STATE_FILE, lambda path: torch.save(training_state, path)
            )
            meta = {
                "format_version": FORMAT_VERSION,
                "step": step,
                "files": {
                    name: (staging / name).stat().st_size
                    for name in (WEIGHTS_FILE, TRAINING_STATE_FILE)
                },
            }
            meta_text = json.dumps(meta, indent=2) + "\n"
            atomic_write(staging / META_FILE, lambda path: path.write_text(meta_text))
            folder = self._move_into_place(staging, self.checkpoints_dir / step_dir_name(step))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._prune(keep=folder)
        return folder

    def checkpoints(self) -> list[Path]:
        """The complete checkpoint folders, in increasing step order."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = []
        for entry in self.checkpoints_dir.iterdir():
            match = _STEP_DIR.fullmatch(entry.name)
            if match is None:
                continue
            meta = _read_complete_meta(entry)
            if meta is not None and meta["step"] == int(match.group(1)):
                found.append((meta["step"], entry))
        return [folder for _, folder in sorted(found)]

    def latest(self) -> Path | None:
        """The complete checkpoint of highest step, or None when there is none."""
        complete = self.checkpoints()
        return complete[-1] if complete else None

    def load(
        self,
        checkpoint: str | Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        restore_rng: bool = True,
    ) -> dict[str, Any]:
        """Load a checkpoint folder (or ``"latest"``) into the given objects.

        Returns ``{"step", "extra", "path"}``. The weights must match the model exactly.
        """
        folder = self._resolve(checkpoint)
        training_state = torch.load(
            folder / TRAINING_STATE_FILE, map_location="cpu", weights_only=True
        )
        load_weights(model, folder / WEIGHTS_FILE, strict=True)
        if optimizer is not None:
            optimizer.load_state_dict(_required_state(training_state, "optimizer", folder))
        if scheduler is not None:
            scheduler.load_state_dict(_required_state(training_state, "scheduler", folder))
        if restore_rng:
            set_rng_state(training_state["rng"])
        return {"step": training_state["step"], "extra": training_state["extra"], "path": folder}

    def _resolve(self, checkpoint: str | Path) -> Path:
        if isinstance(checkpoint, str) and checkpoint == LATEST:
            latest = self.latest()
            if latest is None:
                raise FileNotFoundError(
                    f"Nothing to resume in run folder {self.run_dir}: {self.checkpoints_dir} "
                    "holds no complete checkpoint. Start the run without --resume, or point "
                    "it at the run folder that holds the checkpoints."
                )
            return latest
        folder = Path(checkpoint)
        if _read_complete_meta(folder) is None:
            raise FileNotFoundError(
                f"{folder} is not a complete checkpoint: its {META_FILE} is missing or "
                "unreadable, or a file it lists is missing or has another size"
            )
        return folder

    def _move_into_place(self, staging: Path, folder: Path) -> Path:
        if folder.exists():
            # Saving a step again (after resuming from an earlier one): a folder cannot be
            # renamed over a non-empty one, so the old one is moved aside first.
            retired = self._retire(folder)
            os.replace(staging, folder)
            shutil.rmtree(retired)
        else:
            os.replace(staging, folder)
        _fsync(self.checkpoints_dir)
        return folder

    def _retire(self, folder: Path) -> Path:
        # Renamed before deletion, so a crash mid-delete never leaves a step folder whose
        # meta.json survives some of its files.
        retired = self.checkpoints_dir / f"{_RETIRED_PREFIX}{folder.name}-{_unique()}"
        os.replace(folder, retired)
        return retired

    def _prune(self, keep: Path) -> None:
        if self.keep_last is None:
            return
        others = [folder for folder in self.checkpoints() if folder != keep]
        for folder in others[: max(0, len(others) - (self.keep_last - 1))]:
            shutil.rmtree(self._retire(folder))

    def _remove_leftovers(self) -> None:
        # Left by a save or a prune that crashed; with one writer per run folder, none of them
        # belongs to a save in progress.
        for entry in self.checkpoints_dir.iterdir():
            if entry.is_dir() and entry.name.startswith((_STAGING_PREFIX, _RETIRED_PREFIX)):
                shutil.rmtree(entry, ignore_errors=True)


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Write the model's state_dict to a safetensors file, atomically.

    The wrappers of DistributedDataParallel, DataParallel and torch.compile are looked through,
    so the keys are those of the bare model. safetensors refuses tensors that share memory:
    an entry that is the very same view as an earlier one (tied weights) is stored once and
    recorded as an alias in the file's metadata; one that only overlaps another's memory, or is
    not contiguous, is stored as a contiguous copy.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors, aliases = _storable_tensors(_unwrap(model).state_dict())
    metadata = {"format": "pt", TIED_ALIASES_KEY: json.dumps(aliases, sort_keys=True)}
    atomic_write(path, lambda temporary: save_file(tensors, temporary, metadata=metadata))


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Load a file written by ``save_weights`` into the model.

    With ``strict`` any missing or unexpected key raises ``WeightsMismatchError``; shape
    mismatches always do. The model is left untouched when it raises.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No weights file at {path}")
    model = _unwrap(model)
    state = _read_weights(path)
    expected = model.state_dict()
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    other_shapes = [
        f"{name} (file {tuple(state[name].shape)}, model {tuple(expected[name].shape)})"
        for name in expected
        if name in state and state[name].shape != expected[name].shape
    ]
    if other_shapes or (strict and (missing or unexpected)):
        problems = []
        if missing:
            problems.append(f"missing keys (in the model, not in the file): {_listing(missing)}")
        if unexpected:
            problems.append(
                f"unexpected keys (in the file, not in the model): {_listing(unexpected)}"
            )
        if other_shapes:
            problems.append(f"shape mismatches: {_listing(other_shapes)}")
        raise WeightsMismatchError(
            f"Weights in {path} do not match the model ({type(model).__name__}): "
            + "; ".join(problems)
        )
    model.load_state_dict(state, strict=strict)
    return LoadReport(missing_keys=missing, unexpected_keys=unexpected)


def _unwrap(model: nn.Module) -> nn.Module:
    while True:
        if isinstance(model, DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            return model


def _storable_tensors(
    state_dict: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    owner_of_view: dict[tuple, str] = {}
    storages_seen: set[tuple] = set()
    for name, value in state_dict.items():
        tensor = value.detach()
        if tensor.numel() == 0:  # holds no memory, so shares none (its pointer may be 0)
            tensors[name] = tensor.contiguous()
            continue
        storage = (tensor.device, tensor.untyped_storage().data_ptr())
        view = (*storage, tensor.storage_offset(), tensor.shape, tensor.stride(), tensor.dtype)
        if view in owner_of_view:
            aliases[name] = owner_of_view[view]
            continue
        owner_of_view[view] = name
        if storage in storages_seen:
            tensors[name] = tensor.clone(memory_format=torch.contiguous_format)
        else:
            storages_seen.add(storage)
            tensors[name] = tensor.contiguous()
    return tensors, aliases


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(path, framework="pt", device="cpu") as weights:
        # safe_open is not iterable, so keys() is needed.
        state = {name: weights.get_tensor(name) for name in weights.keys()}  # noqa: SIM118
        metadata = weights.metadata() or {}
    for alias, stored_name in json.loads(metadata.get(TIED_ALIASES_KEY, "{}")).items():
        state[alias] = state[stored_name]
    return state


def _read_complete_meta(folder: Path) -> dict[str, Any] | None:
    """The folder's meta.json when it and every file it lists (at the listed size) exist."""
    try:
        meta = json.loads((folder / META_FILE).read_text())
        files = meta["files"]
        complete = (
            isinstance(meta["step"], int)
            and WEIGHTS_FILE in files
            and TRAINING_STATE_FILE in files
            and all((folder / name).stat().st_size == size for name, size in files.items())
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta if complete else None


def _required_state(training_state: dict[str, Any], key: str, folder: Path) -> dict[str, Any]:
    state = training_state[key]
    if state is None:
        raise ValueError(f"Checkpoint {folder} holds no {key} state: it was saved without one")
    return state


def _check_weights_only_loadable(extra: dict[str, Any]) -> None:
    # Checked on save, so a bad value fails now rather than when the run is resumed.
    buffer = io.BytesIO()
    torch.save(extra, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True)
    except pickle.UnpicklingError as error:
        culprit = re.search(r"GLOBAL (\S+)", str(error))
        raise TypeError(
            "extra must hold only tensors, numbers, strings, None, lists, tuples and dicts, "
            "since checkpoints are read with torch.load(weights_only=True); it holds "
            + (culprit.group(1) if culprit else "something else")
        ) from error


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Have ``write`` fill a temporary file beside ``path``, then rename it over ``path``."""
    temporary = path.with_name(f".{path.name}.{_unique()}.tmp")
    try:
        write(temporary)
        _fsync(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync(path.parent)


def _fsync(path: Path) -> None:
    # On a folder, this makes the renames inside it durable, not only the files' contents.
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _unique() -> str:
    return uuid.uuid4().hex[:12]


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_KEYS_IN_MESSAGE])
    hidden = len(items) - _MAX_KEYS_IN_MESSAGE
    return shown + (f" and {hidden} more" if hidden > 0 else "")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a local weight file: safetensors, or a torch file read with
    ``weights_only=True`` (a ``{"model": ...}`` / ``{"state_dict": ...}`` wrapper is opened)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file {path} does not exist: pass a local file")
    if path.suffix == ".safetensors":
        return _read_weights(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return state
