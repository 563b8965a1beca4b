"""Seeding and exact capture/restore of the random number generators.

``rng_state()`` returns only dicts, lists, numbers, strings and uint8 tensors, so it can be
saved with ``torch.save`` and read back with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

MAX_SEED = 2**32 - 1  # numpy's legacy global generator takes seeds in [0, 2**32)


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global generator and torch (CPU and every CUDA device).

    Deterministic-algorithm flags are left as they are: choosing them is the caller's business.
    """
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be in [0, {MAX_SEED}], got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds all CUDA devices (lazily if CUDA is not initialised)


def rng_state() -> dict[str, Any]:
    """The state of python ``random``, numpy's global generator, torch CPU and the current CUDA
    device (only if CUDA is available), in a form ``torch.load(weights_only=True)`` accepts."""
    version, internal_state, gauss_next = random.getstate()
    bit_generator, key, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {
            "version": version,
            "internal_state": list(internal_state),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "bit_generator": bit_generator,
            "key": key.tolist(),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    # One process drives one device, so only the current device's generator is captured;
    # asking for every device would create a CUDA context on each of them.
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators captured by ``rng_state()``.

    A CUDA state is restored onto the current device when CUDA is available and ignored
    otherwise (a run saved on a GPU can still be inspected on a CPU-only machine).
    """
    python_state = state["python"]
    random.setstate(
        (
            python_state["version"],
            tuple(python_state["internal_state"]),
            python_state["gauss_next"],
        )
    )
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["bit_generator"],
            np.asarray(numpy_state["key"], dtype=np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())
