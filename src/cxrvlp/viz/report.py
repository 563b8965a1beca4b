"""The demo report: tables (every task, each starting point, each label fraction), ROC curves,
detections, grounding heat maps and generated-versus-reference reports, as report.md and a
self-contained-folder report.html, plus a plain-text summary table for the terminal."""

from __future__ import annotations

import html
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from cxrvlp.demo import SEED_SUFFIX

# The number each task is judged by, and the further columns of its detail table.
HEADLINE = {
    "classification": ("auroc", "AUROC"),
    "localization": ("map50", "mAP@0.5"),
    "generation": ("bleu4", "BLEU-4"),
    "vqa": ("acc_overall", "accuracy"),
}
DETAIL = {
    "classification": ("auroc", "f1", "accuracy"),
    "localization": ("map50", "map"),
    "generation": ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider", "ce_f1"),
    "vqa": ("acc_closed", "acc_open", "acc_overall"),
}
INIT_NAMES = {"random": "random init", "itc": "ITC-only", "gkmvlp": "GK-MVLP"}
SEEDED_RUN = re.compile(rf"{re.escape(SEED_SUFFIX)}\d+$")  # the name ending of a seed-N run


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.header) + " |"]
        lines.append("|" + "---|" * len(self.header))
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
            for row in self.rows
        )
        return f"<h3>{html.escape(self.title)}</h3><table><tr>{head}</tr>{body}</table>"

    def text(self) -> str:
        widths = [
            max(len(r[i]) for r in [self.header, *self.rows]) for i in range(len(self.header))
        ]
        lines = [self.title]
        for row in [self.header, *self.rows]:
            lines.append(
                "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            )
        return "\n".join(lines)


@dataclass
class Report:
    markdown: str
    summary: str


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _group(finetune: dict[str, dict]) -> dict[str, dict[tuple[str, float], dict]]:
    """{"task dataset mode": {(init, fraction): results}} from the run names of the demo.

    Runs of several seeds become one: the first seed's results with every table metric
    replaced by its mean over the seeds, and the seeds' own values under ``seed_values``.
    """
    seeds: dict[str, dict[tuple[str, float], list[dict]]] = {}
    for name, results in finetune.items():
        task, rest = name.split("-", 1)
        rest = SEEDED_RUN.sub("", rest)
        dataset, mode, init, fraction = rest.rsplit("-", 3)
        key = f"{task} | {dataset} | {'linear probe' if mode == 'probe' else 'fine-tune'}"
        seeds.setdefault(key, {}).setdefault((init, float(fraction)), []).append(results)
    groups: dict[str, dict[tuple[str, float], dict]] = {}
    for key, runs in seeds.items():
        task = key.split(" | ")[0]
        groups[key] = {cell: _seed_mean(results, DETAIL[task]) for cell, results in runs.items()}
    return groups


def _seed_mean(runs: list[dict], metrics: tuple[str, ...]) -> dict:
    if len(runs) == 1:
        return runs[0]
    merged = dict(runs[0])
    merged["seed_values"] = {}
    for metric in metrics:
        # A seed whose metric could not be computed (None, NaN) does not count toward it.
        values = [run.get(metric) for run in runs]
        values = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
        if values:
            merged[metric] = statistics.fmean(values)
            merged["seed_values"][metric] = values
    return merged


def _cell(run: dict, metric: str) -> str:
    """The metric, with the standard deviation over seeds where the run had several."""
    values = run.get("seed_values", {}).get(metric, [])
    if len(values) < 2:
        return _number(run.get(metric))
    return f"{run[metric]:.3f} ± {statistics.stdev(values):.3f}"


def finetune_tables(results: dict[str, Any]) -> tuple[list[Table], list[str]]:
    """One headline table per (task, data set, mode): rows = starting points, columns = label
    fractions; and the comparisons of GK-MVLP with the other rows."""
    inits = list(results["config"]["finetune"]["inits"])
    tables, comparisons = [], []
    for key, runs in _group(results["finetune"]).items():
        task = key.split(" | ")[0]
        fractions = sorted({fraction for _, fraction in runs})
        metric, label = HEADLINE[task]
        rows = []
        for init in inits:
            cells = [_cell(runs.get((init, f), {}), metric) for f in fractions]
            rows.append([INIT_NAMES.get(init, init), *cells])
        tables.append(Table(f"{key}: {label}", ["start", *[f"{f:.0%}" for f in fractions]], rows))
        for fraction in fractions:
            mine = runs.get(("gkmvlp", fraction), {}).get(metric)
            for other in ("random", "itc"):
                theirs = runs.get((other, fraction), {}).get(metric)
                if mine is None or theirs is None:
                    continue
                verdict = "ahead of" if mine > theirs else "NOT ahead of"
                comparisons.append(
                    f"{key} at {fraction:.0%}: GK-MVLP {mine:.3f} {verdict} "
                    f"{INIT_NAMES[other]} {theirs:.3f}"
                )
        detail_rows = []
        for init in inits:
            run = runs.get((init, fractions[-1]), {})
            detail_rows.append([INIT_NAMES.get(init, init), *[_cell(run, m) for m in DETAIL[task]]])
        tables.append(
            Table(
                f"{key}: all metrics at {fractions[-1]:.0%}", ["start", *DETAIL[task]], detail_rows
            )
        )
    return tables, comparisons


def pretraining_table(results: dict[str, Any]) -> Table:
    evaluations = results["evaluations"]
    zero_shot = sorted(
        {name.split("-")[2] for name in evaluations if name.startswith("zero-shot-")}
    )
    header = ["model", "I->R R@1", "I->R R@5", "R->I R@5", "pointing game", "IoU", "entity AUROC"]
    header += [f"zero-shot {d} AUROC" for d in zero_shot]
    rows = []
    for init in ("gkmvlp", "itc"):
        retrieval = evaluations.get(f"retrieval-{init}")
        if retrieval is None:
            continue
        grounding = evaluations.get(f"grounding-{init}", {})
        primary = grounding.get("gk_attention") or grounding.get("itm_cross_attention") or {}
        entities = evaluations.get(f"entities-{init}", {})
        row = [
            INIT_NAMES[init],
            _number(retrieval.get("image_to_report_r@1")),
            _number(retrieval.get("image_to_report_r@5")),
            _number(retrieval.get("report_to_image_r@5")),
            _number(primary.get("pointing_game")),
            _number(primary.get("iou")),
            _number(entities.get("auroc_macro")),
        ]
        row += [
            _number(evaluations.get(f"zero-shot-{d}-{init}", {}).get("auroc")) for d in zero_shot
        ]
        rows.append(row)
    return Table("Pre-trained models on held-out data (no fine-tuning)", header, rows)


def plot_roc_curves(results: dict[str, Any], out: Path) -> Path | None:
    """ROC curves of the classification runs at the largest fraction, one panel per run group
    and starting point (every class a thin line)."""
    groups = {k: v for k, v in _group(results["finetune"]).items() if k.startswith("classif")}
    inits = list(results["config"]["finetune"]["inits"])
    if not groups:
        return None
    figure, axes = plt.subplots(
        len(groups), len(inits), figsize=(3.2 * len(inits), 3.0 * len(groups)), squeeze=False
    )
    for row, (key, runs) in enumerate(groups.items()):
        for column, init in enumerate(inits):
            axis = axes[row][column]
            run = runs.get((init, max(f for _, f in runs)), {})
            for curve in run.get("roc", {}).values():
                axis.plot(curve["fpr"], curve["tpr"], linewidth=0.8)
            axis.plot([0, 1], [0, 1], "k--", linewidth=0.5)
            axis.set_title(f"{key.split(' | ', 1)[1]}\n{INIT_NAMES[init]}: AUROC "
                           f"{_number(run.get('auroc'))}", fontsize=8)  # fmt: skip
            axis.set_xlabel("false positive rate", fontsize=7)
            axis.set_ylabel("true positive rate", fontsize=7)
            axis.tick_params(labelsize=6)
    figure.tight_layout()
    path = out / "roc_curves.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _pictures(out: Path, results: dict[str, Any]) -> list[tuple[str, Path]]:
    fractions = [float(f) for f in results["config"]["finetune"]["fractions"]]
    pictures = []
    roc = plot_roc_curves(results, out)
    if roc is not None:
        pictures.append(("ROC curves (classification, largest label fraction)", roc))
    for name in results["finetune"]:
        if name.startswith("localization-") and name.endswith(f"-gkmvlp-{fractions[-1]:g}"):
            path = out / "finetune" / name / "detections.png"
            if path.is_file():
                pictures.append(("Detections (green truth, red predicted), GK-MVLP", path))
    for candidate, title in (
        ("evaluate/grounding-gkmvlp/grounding_gk.png", "GK attention per present finding"),
        (
            "evaluate/grounding-itc/grounding_itm.png",
            "ITC-only model: no GK module (cross-attention)",
        ),
        ("pretrain-gkmvlp/losses.png", "GK-MVLP pre-training losses"),
        ("world/preview.png", "The synthetic world"),
    ):
        if (out / candidate).is_file():
            pictures.append((title, out / candidate))
    return pictures


def _seed_note(results: dict[str, Any]) -> str | None:
    if not any(SEEDED_RUN.search(name) for name in results["finetune"]):
        return None
    return (
        "Cells written 'a ± b' are the mean and the standard deviation of runs with different "
        "training seeds (the demo's finetune.seeds, or a run's own seeds); the comparisons "
        "below use the means."
    )


def _generated_examples(results: dict[str, Any]) -> list[dict]:
    fractions = [float(f) for f in results["config"]["finetune"]["fractions"]]
    for name, run in results["finetune"].items():
        if name.startswith("generation-") and name.endswith(f"-gkmvlp-{fractions[-1]:g}"):
            return run.get("examples", [])[:6]
    return []


def write_report(out: Path, results: dict[str, Any]) -> Report:
    out = Path(out)
    tables, comparisons = finetune_tables(results)
    pretrained = pretraining_table(results)
    pictures = _pictures(out, results)
    examples = _generated_examples(results)
    minutes = results.get("minutes")

    md = ["# cxrvlp demo report", ""]
    if minutes is not None:
        md.append(f"Whole demo: {minutes} min. Step times (min): {results.get('step_minutes')}\n")
    md.append(pretrained.markdown())
    seed_note = _seed_note(results)
    if seed_note:
        md.append(seed_note + "\n")
    md += [table.markdown() for table in tables]
    md.append("## GK-MVLP against the other starting points\n")
    md += [f"- {line}" for line in comparisons]
    md.append("")
    for title, path in pictures:
        md.append(f"![{title}]({path.relative_to(out)})\n")
    if examples:
        md.append("## Generated versus reference reports (GK-MVLP, IU X-Ray)\n")
        for example in examples:
            md.append(f"- **{example.get('image_id', '')}**")
            md.append(f"  generated: {example.get('generated', '')}  ")
            md.append(f"  reference: {example.get('reference', '')}")
    markdown = "\n".join(md) + "\n"
    (out / "report.md").write_text(markdown)

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>cxrvlp demo</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;"
        "margin-bottom:1em}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
        "td:first-child,td.text{text-align:left}img{max-width:100%}</style></head><body>",
        "<h1>cxrvlp demo report</h1>",
    ]
    if minutes is not None:
        parts.append(f"<p>Whole demo: {minutes} min.</p>")
    parts.append(pretrained.html())
    if seed_note:
        parts.append(f"<p>{html.escape(seed_note)}</p>")
    parts += [table.html() for table in tables]
    parts.append("<h2>GK-MVLP against the other starting points</h2><ul>")
    parts += [f"<li>{html.escape(line)}</li>" for line in comparisons]
    parts.append("</ul>")
    for title, path in pictures:
        parts.append(f"<h3>{html.escape(title)}</h3><img src='{path.relative_to(out)}'>")
    if examples:
        parts.append("<h2>Generated versus reference reports (GK-MVLP, IU X-Ray)</h2><table>")
        parts.append("<tr><th>image</th><th>generated</th><th>reference</th></tr>")
        for example in examples:
            cells = (example.get(k, "") for k in ("image_id", "generated", "reference"))
            row = "".join(f"<td class='text'>{html.escape(str(c))}</td>" for c in cells)
            parts.append(f"<tr>{row}</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    (out / "report.html").write_text("\n".join(parts))

    summary_rows = []
    fractions = [float(f) for f in results["config"]["finetune"]["fractions"]]
    for table in tables[::2]:
        for row in table.rows:
            summary_rows.append([table.title, row[0], row[-1]])
    summary = Table(
        f"Summary (largest label fraction, {fractions[-1]:.0%})", ["task", "start", "score"],
        summary_rows,
    )  # fmt: skip
    return Report(markdown=markdown, summary=pretrained.text() + "\n\n" + summary.text())
