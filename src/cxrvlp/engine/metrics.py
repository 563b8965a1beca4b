"""Run logging: one JSON object per logged step in ``metrics.jsonl`` and TensorBoard events
(main process only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricsLogger:
    def __init__(self, run_dir: Path, enabled: bool = True):
        self.enabled = enabled
        self.path = run_dir / METRICS_FILE
        self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR)) if enabled else None

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **values}
        with self.path.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(row) + "\n")
        for name, value in values.items():
            if isinstance(value, int | float):
                self.writer.add_scalar(name, value, step)

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (a resumed run logs those steps again)."""
        if not self.enabled or not self.path.is_file():
            return
        rows = [line for line in self.path.read_text(encoding="utf-8").splitlines() if line]
        kept = [line for line in rows if json.loads(line)["step"] <= step]
        self.path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
