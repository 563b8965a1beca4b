"""The preprocessing cache: every image of a data set decoded and resized once.

Layout of a cache folder: ``index.json`` (the size, and for each image key its shard, slot,
stored height and width and the scale from the original pixel grid) and ``shard_NNNN.npy``
files, each an array (n, size, size) of uint8 opened memory-mapped. A reader given
``cache=FOLDER`` reads pixels from it and falls back to the original file for images the
cache does not hold, so the cache is transparent: samples, boxes and masks come out the same
up to 8-bit quantisation and the resize.
"""

from __future__ import annotations

import json
import multiprocessing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from cxrvlp.data.sample import relative_or_absolute
from cxrvlp.errors import DataError, MissingFileError

INDEX_FILE = "index.json"
CACHE_VERSION = 1


class ImageCache:
    """Read access to a prepared cache folder (see the module docstring)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index_path = self.folder / INDEX_FILE
        if not index_path.is_file():
            raise MissingFileError(
                index_path, "image cache index", "Build the cache with `cxrvlp data prepare`."
            )
        index = json.loads(index_path.read_text())
        if index.get("version") != CACHE_VERSION:
            raise DataError(
                f"{index_path} is a cache of another version: rebuild it with `cxrvlp data prepare`"
            )
        self.size: int = index["size"]
        self.entries: dict[str, list] = index["entries"]
        self._shards: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def get(self, key: str) -> tuple[np.ndarray, float] | None:
        """(pixels float32 (h, w) in [0, 1], scale from the original grid), or None."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        shard, slot, height, width, scale = entry
        if shard not in self._shards:
            self._shards[shard] = np.load(self.folder / f"shard_{shard:04d}.npy", mmap_mode="r")
        pixels = np.asarray(self._shards[shard][slot, :height, :width], dtype=np.float32) / 255.0
        return pixels, scale

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers reopen the memory maps themselves.
        state = self.__dict__.copy()
        state["_shards"] = {}
        return state


def resize_longer_side(pixels: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Shrink so the longer side is ``size`` (never enlarge); uint8 and the scale used."""
    height, width = pixels.shape
    scale = min(1.0, size / max(height, width))
    image = Image.fromarray(np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if scale < 1.0:
        new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(new_size, Image.BILINEAR, reducing_gap=2.0)
        scale = new_size[0] / width
    return np.asarray(image), scale


@dataclass(frozen=True)
class _Job:
    path: Path
    key: str
    size: int


def _load_and_resize(job: _Job) -> tuple[str, np.ndarray | None, float, str]:
    from cxrvlp.data.image_io import load_image

    try:
        pixels, scale = resize_longer_side(load_image(job.path), job.size)
    except (DataError, OSError, ValueError) as error:
        return job.key, None, 1.0, str(error)
    return job.key, pixels, scale, ""


def prepare_cache(
    dataset: Any,
    out: str | Path,
    size: int = 256,
    shard_size: int = 1024,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Decode and resize every image of ``dataset`` (a CXRDataset) into a cache at ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for record in dataset.records:
        for path in (record.image_path, *record.extra_paths):
            if path is not None:
                paths.append(path)
    jobs = [_Job(p, relative_or_absolute(p, dataset.root), size) for p in dict.fromkeys(paths)]
    entries: dict[str, list] = {}
    problems: list[dict[str, str]] = []
    shard = np.zeros((min(shard_size, max(1, len(jobs))), size, size), np.uint8)
    shard_index = slot = 0

    def flush() -> None:
        if slot:
            np.save(out / f"shard_{shard_index:04d}.npy", shard[:slot])

    if workers > 1:
        pool = multiprocessing.get_context("fork").Pool(workers)
        results = pool.imap(_load_and_resize, jobs, chunksize=8)
    else:
        pool = None
        results = map(_load_and_resize, jobs)
    try:
        for key, pixels, scale, error in tqdm(
            results, total=len(jobs), desc="prepare", unit="img", disable=not progress
        ):
            if pixels is None:
                problems.append({"source": key, "reason": error})
                continue
            height, width = pixels.shape
            shard[slot] = 0
            shard[slot, :height, :width] = pixels
            entries[key] = [shard_index, slot, height, width, scale]
            slot += 1
            if slot == len(shard):
                flush()
                shard_index, slot = shard_index + 1, 0
        flush()
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    index = {"version": CACHE_VERSION, "size": size, "dataset": dataset.name, "entries": entries}
    (out / INDEX_FILE).write_text(json.dumps(index))
    return {"cached": len(entries), "problems": problems, "size": size, "out": str(out)}
