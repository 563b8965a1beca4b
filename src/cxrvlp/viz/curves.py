"""Loss curves of a run, from its metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

LOSSES_PICTURE = "losses.png"


def plot_run_losses(run_dir: Path) -> Path | None:
    """``losses.png`` of a training run folder (the engine writes metrics.jsonl there); the
    application draws it, so that the engine does not need matplotlib. Main process only."""
    from cxrvlp.engine import distributed
    from cxrvlp.engine.metrics import METRICS_FILE

    if not distributed.is_main_process():
        return None
    return plot_losses(Path(run_dir) / METRICS_FILE, Path(run_dir) / LOSSES_PICTURE)


def plot_losses(metrics_file: Path, out: Path) -> Path | None:
    """One panel per ``loss_*`` term against the step; None when nothing was logged."""
    if not metrics_file.is_file():
        return None
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line]
    names = sorted({key for row in rows for key in row if key.startswith("loss_")})
    if not rows or not names:
        return None
    figure, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.8), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        points = [(row["step"], row[name]) for row in rows if name in row]
        axis.plot([p[0] for p in points], [p[1] for p in points], lw=1.2)
        axis.set_title(name.removeprefix("loss_").upper(), fontsize=10)
        axis.set_xlabel("step", fontsize=8)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out
