"""The benchmark report: a headline table (one row per task family, each starting model, the
verdict), the pre-trained models' evaluations, one table per task family with the seed spread,
label-efficiency and ROC plots, detections, grounding heat maps and generated reports; written
as report.md and report.html beside results.json, plus a plain-text headline for the terminal.

Every metric a table shows comes from the task registry: a fine-tuning task class declares its
``headline_metric`` and ``detail_metrics``, an evaluation its ``EvaluationInfo``.
"""

from __future__ import annotations

import html
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrvlp.benchmark.protocol import RANDOM_INIT
from cxrvlp.tasks.evaluation import EVALUATIONS, ZERO_SHOT

# How tables name the starting models the demo and the protocols use; other names as given.
MODEL_NAMES = {RANDOM_INIT: "random init", "gkmvlp": "GK-MVLP", "itc": "ITC-only", "asg": "ASG"}
# Two means closer than this are reported as level: the tables print three decimals.
LEVEL = 5e-4


def model_name(name: str) -> str:
    return MODEL_NAMES.get(name, name)


@dataclass(frozen=True)
class TaskMetrics:
    display_name: str
    headline: tuple[str, str]  # (results key, label)
    detail: tuple[str, ...]


def task_metrics(task: str, dataset: str | None = None) -> TaskMetrics:
    """The metrics a task declares in its registry entry (for ``dataset``, where the task
    judges that data set by another headline metric)."""
    from cxrvlp.tasks.task import task_class

    cls = task_class(task)
    headline = getattr(cls, "dataset_headlines", {}).get(dataset, cls.headline_metric)
    return TaskMetrics(cls.display_name, headline, cls.detail_metrics)


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

    def html(self, heading: str = "h3") -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
            for row in self.rows
        )
        title = html.escape(self.title)
        return f"<{heading}>{title}</{heading}><table><tr>{head}</tr>{body}</table>"

    def text(self) -> str:
        widths = [
            max(len(r[i]) for r in [self.header, *self.rows]) for i in range(len(self.header))
        ]
        lines = [self.title]
        for row in [self.header, *self.rows]:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        return "\n".join(lines)


@dataclass
class Cell:
    """One (model, fraction) of a task family: the mean over its seeds and their values."""

    values: dict[str, list[float]] = field(default_factory=dict)  # metric -> one value a seed
    runs: list[dict[str, Any]] = field(default_factory=list)  # each seed's results

    def mean(self, metric: str) -> float | None:
        values = self.values.get(metric, [])
        return statistics.fmean(values) if values else None

    def spread(self, metric: str) -> float | None:
        values = self.values.get(metric, [])
        return statistics.stdev(values) if len(values) > 1 else None

    def show(self, metric: str) -> str:
        mean, spread = self.mean(metric), self.spread(metric)
        if mean is None:
            return "-"
        return f"{mean:.3f}" if spread is None else f"{mean:.3f} ± {spread:.3f}"


@dataclass
class Family:
    """The runs of one task family (task, data set, mode) by model and label fraction."""

    key: str
    task: str
    metrics: TaskMetrics
    dataset: str = ""
    mode: str = ""  # "linear probe" or "fine-tune"
    cells: dict[tuple[str, float], Cell] = field(default_factory=dict)

    @property
    def fractions(self) -> list[float]:
        return sorted({fraction for _, fraction in self.cells})

    def cell(self, model: str, fraction: float) -> Cell:
        return self.cells.get((model, fraction), Cell())


def families(document: dict[str, Any]) -> list[Family]:
    """The finished fine-tuning runs grouped into task families, in protocol order; a seed
    whose metric could not be computed (None, NaN) does not count toward that metric."""
    found: dict[str, Family] = {}
    for entry in document["runs"].values():
        run = entry["run"]
        if run["kind"] != "finetune" or entry["status"] != "done":
            continue
        mode = "linear probe" if run["linear_probe"] else "fine-tune"
        key = f"{run['task']} / {run['dataset']} / {mode}"
        if key not in found:
            found[key] = Family(
                key, run["task"], task_metrics(run["task"], run["dataset"]), run["dataset"], mode
            )
        family = found[key]
        cell = family.cells.setdefault((run["model"], float(run["fraction"])), Cell())
        cell.runs.append(entry["results"])
        for metric in {family.metrics.headline[0], *family.metrics.detail}:
            value = entry["results"].get(metric)
            if isinstance(value, int | float) and not math.isnan(value):
                cell.values.setdefault(metric, []).append(float(value))
    return list(found.values())


def model_order(document: dict[str, Any]) -> list[str]:
    """random init first, then the pre-trained models in the order they were given."""
    used = {entry["run"]["model"] for entry in document["runs"].values()}
    order = [RANDOM_INIT, *document.get("models", {})]
    return [m for m in order if m in used] + sorted(used - set(order))


def compare(mine: Cell, theirs: Cell, metric: str) -> tuple[str, float] | None:
    """("ahead" | "behind" | "level" | "inside the seed spread", difference), or None when a
    side has no value. A gap no larger than either side's seed standard deviation is not
    called a win or a loss."""
    a, b = mine.mean(metric), theirs.mean(metric)
    if a is None or b is None:
        return None
    gap = a - b
    spread = max(mine.spread(metric) or 0.0, theirs.spread(metric) or 0.0)
    if abs(gap) < LEVEL:
        return "level", gap
    if abs(gap) <= spread:
        return "inside the seed spread", gap
    return ("ahead" if gap > 0 else "behind"), gap


def verdict(family: Family, model: str, fraction: float, reference: str = RANDOM_INIT) -> str:
    metric = family.metrics.headline[0]
    outcome = compare(family.cell(model, fraction), family.cell(reference, fraction), metric)
    if outcome is None:
        return "-"
    word, gap = outcome
    if word == "level":
        return f"{model_name(model)} level with {model_name(reference)}"
    if word == "inside the seed spread":
        return (
            f"{model_name(model)} {gap:+.3f} against {model_name(reference)}, inside the seed "
            "spread"
        )
    relation = "ahead of" if word == "ahead" else "behind"
    return f"{model_name(model)} {relation} {model_name(reference)} ({gap:+.3f})"


def headline_table(document: dict[str, Any], found: list[Family]) -> Table:
    """One row per task family at its largest label fraction: each model's headline metric
    and the verdict of each pre-trained model against random init."""
    models = model_order(document)
    pretrained = [m for m in models if m != RANDOM_INIT]
    rows = []
    for family in found:
        fraction = family.fractions[-1]
        label = family.metrics.headline[1]
        cells = [family.cell(m, fraction).show(family.metrics.headline[0]) for m in models]
        verdicts = [verdict(family, m, fraction) for m in pretrained if RANDOM_INIT in models]
        rows.append([family.key, f"{label} at {fraction:.0%}", *cells, "; ".join(verdicts) or "-"])
    header = ["task / data set / mode", "metric", *map(model_name, models), "verdict"]
    return Table("Headline: each task family at its largest label fraction", header, rows)


# The ASG paper's downstream tables (Li et al., "Anatomical structure-guided medical
# vision-language pre-training"): (title, task, mode, data sets in its column order).
PAPER_LAYOUT = (
    ("Linear probe classification (ASG paper layout)", "classification", "linear probe",
     ("nih", "chexpert", "rsna", "covidx")),
    ("Segmentation, frozen encoder (ASG paper layout)", "segmentation", "linear probe",
     ("siim", "rsna")),
)  # fmt: skip
PAPER_FRACTIONS = (0.01, 0.1, 1.0)


def paper_tables(document: dict[str, Any], found: list[Family]) -> list[Table]:
    """The runs in the ASG paper's layout: a row per starting model, for each data set its
    headline metric at 1 %, 10 % and 100 % of the labels, so the figures sit beside the
    paper's at a glance. A layout with none of its runs done is left out."""
    models = model_order(document)
    tables = []
    for title, task, mode, datasets in PAPER_LAYOUT:
        chosen = {f.dataset: f for f in found if f.task == task and f.mode == mode and f.dataset}
        present = [d for d in datasets if d in chosen]
        if not present:
            continue
        header = ["start"] + [
            f"{d} {chosen[d].metrics.headline[1]} {f:.0%}" for d in present for f in PAPER_FRACTIONS
        ]
        rows = [
            [model_name(m)]
            + [
                chosen[d].cell(m, f).show(chosen[d].metrics.headline[0])
                for d in present
                for f in PAPER_FRACTIONS
            ]
            for m in models
        ]
        tables.append(Table(title, header, rows))
    return tables


def family_tables(document: dict[str, Any], family: Family) -> list[Table]:
    models = model_order(document)
    metric, label = family.metrics.headline
    fractions = family.fractions
    rows = [[model_name(m), *[family.cell(m, f).show(metric) for f in fractions]] for m in models]
    tables = [Table(f"{family.key}: {label}", ["start", *[f"{f:.0%}" for f in fractions]], rows)]
    detail = [
        [model_name(m), *[family.cell(m, fractions[-1]).show(d) for d in family.metrics.detail]]
        for m in models
    ]
    tables.append(
        Table(
            f"{family.key}: all metrics at {fractions[-1]:.0%}",
            ["start", *family.metrics.detail],
            detail,
        )
    )
    return tables


def comparisons(document: dict[str, Any], found: list[Family]) -> list[str]:
    """Every pre-trained model against every other starting model, cell by cell."""
    models = model_order(document)
    lines = []
    for family in found:
        for fraction in family.fractions:
            for mine in (m for m in models if m != RANDOM_INIT):
                for other in (m for m in models if m != mine):
                    text = verdict(family, mine, fraction, other)
                    if text != "-":
                        lines.append(f"{family.key} at {fraction:.0%}: {text}")
    return lines


def pretrained_table(document: dict[str, Any]) -> Table | None:
    """The evaluations of the pre-trained models: one row a model, one column a metric."""
    columns: dict[str, tuple[str, str]] = {}  # column label -> (evaluation run suffix, key)
    by_model: dict[str, dict[str, dict]] = {}
    for entry in document["runs"].values():
        run = entry["run"]
        if run["kind"] != "evaluate" or entry["status"] != "done":
            continue
        info = EVALUATIONS[run["task"]]
        where = f" {run['dataset']}" if info.reads == "dataset" else ""
        column_key = f"{run['task']}{where}"
        by_model.setdefault(run["model"], {})[column_key] = entry["results"]
        for key, label in info.metrics[:3] if info.reads == "pretraining" else info.metrics[:1]:
            prefix = f"{run['task']}{where} " if info.reads == "dataset" else ""
            columns.setdefault(f"{prefix}{label}", (column_key, key))
    if not by_model:
        return None
    rows = []
    for model in model_order(document):
        if model not in by_model:
            continue
        row = [model_name(model)]
        for column_key, key in columns.values():
            value = by_model[model].get(column_key, {}).get(key)
            row.append("-" if value is None else f"{value:.3f}")
        rows.append(row)
    return Table("Pre-trained models, no fine-tuning", ["model", *columns], rows)


def zero_shot_table(document: dict[str, Any]) -> tuple[Table | None, list[str]]:
    """Zero-shot AUROC, F1 and accuracy per data set (one row a model), and the threshold
    rule each data set's F1 and accuracy were scored with."""
    metrics = EVALUATIONS[ZERO_SHOT].metrics
    by_model: dict[str, dict[str, dict]] = {}
    rules: dict[str, str] = {}
    for entry in document["runs"].values():
        run = entry["run"]
        if run["kind"] != "evaluate" or run["task"] != ZERO_SHOT or entry["status"] != "done":
            continue
        by_model.setdefault(run["model"], {})[run["dataset"]] = entry["results"]
        if "threshold_rule" in entry["results"]:
            rules.setdefault(run["dataset"], entry["results"]["threshold_rule"])
    if not by_model:
        return None, []
    datasets = list(dict.fromkeys(d for results in by_model.values() for d in results))
    header = ["model"] + [f"{d} {label}" for d in datasets for _, label in metrics]
    rows = []
    for model in (m for m in model_order(document) if m in by_model):
        row = [model_name(model)]
        for dataset in datasets:
            results = by_model[model].get(dataset, {})
            row += ["-" if results.get(k) is None else f"{results[k]:.3f}" for k, _ in metrics]
        rows.append(row)
    notes = [f"Zero-shot F1 and accuracy on {d}: {rule}." for d, rule in rules.items()]
    return Table("Zero-shot classification", header, rows), notes


GROUNDING_MAPS = (
    ("gk_finding_prompts", 'GK, "<finding>: present"'),
    ("gk_attention", "GK, knowledge-base prompts"),
    ("asg_region_sentence", "region-sentence similarity"),
    ("asg_patch_sentence", "patch-sentence similarity"),
    ("itm_cross_attention", "image-report cross-attention"),
)


def grounding_table(document: dict[str, Any]) -> Table | None:
    """Pointing-game hits per finding type of each model's grounding maps (hits / pairs)."""
    columns: list[tuple[str, str, dict]] = []  # (model, map label, per-finding counts)
    totals: list[str] = []
    for entry in document["runs"].values():
        run = entry["run"]
        if run["kind"] != "evaluate" or run["task"] != "grounding" or entry["status"] != "done":
            continue
        for key, label in GROUNDING_MAPS:
            found = entry["results"].get(key)
            if found and found.get("pairs"):
                columns.append((run["model"], label, found["per_entity"]))
                totals.append(f"{found['pointing_game']:.3f} (chance {found['chance']:.3f})")
    if not columns:
        return None
    findings = sorted({name for _, _, counts in columns for name in counts})
    rows = [["all findings", *totals]]
    for name in findings:
        cells = []
        for _, _, counts in columns:
            hit = counts.get(name)
            cells.append(f"{hit['hits']}/{hit['pairs']}" if hit else "-")
        rows.append([name, *cells])
    header = ["finding", *(f"{model_name(model)}: {label}" for model, label, _ in columns)]
    return Table("Grounding: pointing-game hits per finding type (test images)", header, rows)


def problems_table(document: dict[str, Any]) -> Table | None:
    rows = []
    for name, entry in document["runs"].items():
        if entry["status"] == "failed":
            rows.append([name, "failed", entry.get("error", "")])
        elif entry["status"] == "skipped":
            rows.append([name, "skipped", entry.get("reason", "")])
    if not rows:
        return None
    return Table("Runs that failed or were skipped", ["run", "status", "why"], rows)


# ---- pictures -----------------------------------------------------------------------------
def plot_fractions(document: dict[str, Any], found: list[Family], out: Path) -> Path | None:
    """Headline metric against label fraction, one panel per task family, one line per
    model, seed standard deviations as error bars."""
    found = [f for f in found if len(f.fractions) > 1]
    if not found:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(4, len(found))
    rows = -(-len(found) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.3 * columns, 2.9 * rows), squeeze=False)
    for axis, family in zip(axes.flat, found, strict=False):
        metric, label = family.metrics.headline
        for model in model_order(document):
            points = [(f, family.cell(model, f)) for f in family.fractions]
            points = [(f, c) for f, c in points if c.mean(metric) is not None]
            if not points:
                continue
            axis.errorbar(
                [f * 100 for f, _ in points],
                [c.mean(metric) for _, c in points],
                yerr=[c.spread(metric) or 0.0 for _, c in points],
                marker="o",
                capsize=3,
                label=model_name(model),
            )
        axis.set_xscale("log")
        axis.set_xticks([f * 100 for f in family.fractions], [f"{f:.0%}" for f in family.fractions])
        axis.minorticks_off()
        axis.set_xlabel("labels used (%)", fontsize=7)
        axis.set_ylabel(label, fontsize=7)
        axis.set_title(family.key, fontsize=8)
        axis.tick_params(labelsize=6)
        axis.legend(fontsize=6)
    for axis in list(axes.flat)[len(found) :]:
        axis.axis("off")
    figure.tight_layout()
    path = out / "label_fractions.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_roc_curves(document: dict[str, Any], found: list[Family], out: Path) -> Path | None:
    """ROC curves of the classification families at their largest fraction, one panel per
    family and model (each class a thin line)."""
    found = [f for f in found if f.task == "classification"]
    models = model_order(document)
    if not found:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(
        len(found), len(models), figsize=(3.2 * len(models), 3.0 * len(found)), squeeze=False
    )
    for row, family in enumerate(found):
        for column, model in enumerate(models):
            axis = axes[row][column]
            cell = family.cell(model, family.fractions[-1])
            for curve in (cell.runs[0].get("roc", {}) if cell.runs else {}).values():
                axis.plot(curve["fpr"], curve["tpr"], linewidth=0.8)
            axis.plot([0, 1], [0, 1], "k--", linewidth=0.5)
            title = f"{family.key.split(' / ', 1)[1]}\n{model_name(model)}: AUROC "
            axis.set_title(title + cell.show("auroc"), fontsize=8)
            axis.set_xlabel("false positive rate", fontsize=7)
            axis.set_ylabel("true positive rate", fontsize=7)
            axis.tick_params(labelsize=6)
    figure.tight_layout()
    path = out / "roc_curves.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def pictures(document: dict[str, Any], found: list[Family], out: Path) -> list[tuple[str, Path]]:
    models = [m for m in model_order(document) if m != RANDOM_INIT]
    shown: list[tuple[str, Path]] = []
    plots = (
        ("Headline metric against the share of labels", plot_fractions(document, found, out)),
        ("ROC curves (classification, largest fraction)", plot_roc_curves(document, found, out)),
    )
    for title, path in plots:
        if path is not None:
            shown.append((title, path))
    for entry in document["runs"].values():
        run = entry["run"]
        if entry["status"] != "done" or not models:
            continue
        folder = out / run["folder"] / run["name"]
        first = run["model"] == models[0]
        if run["task"] == "localization" and run["seed"] == 0 and first:
            candidates = [("detections.png", "Detections (green truth, red predicted)")]
        elif run["task"] == "grounding" and first:
            candidates = [
                ("grounding_gk_findings.png",
                 'GK attention of "<finding>: present", one finding type a panel (true regions '
                 "boxed)"),
                ("grounding_gk.png", "GK attention of the knowledge-base prompts"),
                ("grounding_itm.png", "Image-report cross-attention from the finding's name"),
                ("grounding_asg_regions.png",
                 'Region-sentence similarity of "<finding>: present" (true regions boxed)'),
            ]  # fmt: skip
        elif run["task"] == "grounding" and (folder / "grounding_asg_regions.png").is_file():
            candidates = [
                ("grounding_asg_regions.png",
                 'Region-sentence similarity of "<finding>: present" (true regions boxed)'),
            ]  # fmt: skip
        else:
            continue
        for file, title in candidates:
            if (folder / file).is_file():
                shown.append((f"{title}: {model_name(run['model'])}, {run['name']}", folder / file))
    return shown


def generated_examples(document: dict[str, Any], limit: int = 6) -> tuple[str, list[dict]]:
    models = [m for m in model_order(document) if m != RANDOM_INIT]
    best: tuple[float, str, list[dict]] | None = None
    for entry in document["runs"].values():
        run = entry["run"]
        if run["task"] != "generation" or entry["status"] != "done" or run["model"] not in models:
            continue
        if models.index(run["model"]) == 0 and (best is None or run["fraction"] > best[0]):
            best = (run["fraction"], run["name"], entry["results"].get("examples", [])[:limit])
    return ("", []) if best is None else (best[1], best[2])


def summary_line(document: dict[str, Any]) -> str:
    """One line: how many runs were done, failed and skipped, and which failed."""
    counts = document["counts"]
    failed = [name for name, e in document["runs"].items() if e["status"] == "failed"]
    line = (
        f"benchmark {document['protocol']['name']}: {counts['done']} runs done, "
        f"{counts['failed']} failed, {counts['skipped']} skipped"
    )
    if "minutes" in document:
        line += f", {document['minutes']} min"
    if failed:
        line += f"; failed: {', '.join(failed)} (see the report or RUN/error.json)"
    return line


# ---- the documents ------------------------------------------------------------------------
@dataclass
class Report:
    markdown: str
    headline: str  # the headline table as plain text, for the terminal


def write_report(
    out: Path,
    document: dict[str, Any],
    title: str = "cxrvlp benchmark report",
    notes: list[str] | None = None,
    extra_pictures: list[tuple[str, Path]] | None = None,
) -> Report:
    """Write report.md and report.html into ``out`` from a results document; ``notes`` are
    paragraphs shown under the headline, ``extra_pictures`` pictures shown after the runs'."""
    out = Path(out)
    found = families(document)
    headline = headline_table(document, found)
    tables = [t for family in found for t in family_tables(document, family)]
    paper = paper_tables(document, found)
    pretrained = pretrained_table(document)
    zero_shot, zero_shot_notes = zero_shot_table(document)
    grounding = grounding_table(document)
    problems = problems_table(document)
    lines = comparisons(document, found)
    shown = pictures(document, found, out) + [
        (t, p) for t, p in (extra_pictures or []) if Path(p).is_file()
    ]
    generated_run, examples = generated_examples(document)
    protocol = document["protocol"]
    counts = document["counts"]
    about = (
        f"Protocol '{protocol['name']}' ({protocol['source']}): {counts['done']} runs done, "
        f"{counts['failed']} failed, {counts['skipped']} skipped"
        + (f"; {document['minutes']} min." if "minutes" in document else ".")
    )
    seed_note = (
        "Cells written 'a ± b' are the mean and standard deviation over training seeds; a gap "
        "no larger than the spread is reported as inside the seed spread, a gap under 0.0005 "
        "as level."
    )
    paragraphs = [about, *(notes or []), seed_note]

    md = [f"# {title}", "", headline.markdown()]
    md += [p + "\n" for p in paragraphs]
    md += [table.markdown() for table in paper]
    if problems:
        md.append(problems.markdown())
    if pretrained:
        md.append(pretrained.markdown())
    if zero_shot:
        md.append(zero_shot.markdown())
        md += [note + "\n" for note in zero_shot_notes]
    if grounding:
        md.append(grounding.markdown())
    md += [table.markdown() for table in tables]
    if lines:
        md.append("## Each pre-trained model against the other starting points\n")
        md += [f"- {line}" for line in lines] + [""]
    for picture_title, path in shown:
        md.append(f"**{picture_title}**\n\n![{picture_title}]({_relative(path, out)})\n")
    if examples:
        md.append(f"## Generated versus reference reports ({generated_run})\n")
        for example in examples:
            md.append(f"- **{example.get('image_id', '')}**")
            md.append(f"  generated: {example.get('generated', '')}  ")
            md.append(f"  reference: {example.get('reference', '')}")
    markdown = "\n".join(md) + "\n"
    (out / "report.md").write_text(markdown)

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;max-width:1150px;margin:auto;padding:0 1em}"
        "table{border-collapse:collapse;margin-bottom:1em}"
        "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
        "td:first-child,td:last-child{text-align:left}img{max-width:100%}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        headline.html("h2"),
    ]
    parts += [f"<p>{html.escape(p)}</p>" for p in paragraphs]
    parts += [table.html("h2") for table in paper]
    if problems:
        parts.append(problems.html("h2"))
    if pretrained:
        parts.append(pretrained.html("h2"))
    if zero_shot:
        parts.append(zero_shot.html("h2"))
        parts += [f"<p>{html.escape(note)}</p>" for note in zero_shot_notes]
    if grounding:
        parts.append(grounding.html("h2"))
    parts.append("<h2>Every task family</h2>")
    parts += [table.html() for table in tables]
    if lines:
        parts.append("<h2>Each pre-trained model against the other starting points</h2><ul>")
        parts += [f"<li>{html.escape(line)}</li>" for line in lines]
        parts.append("</ul>")
    for picture_title, path in shown:
        parts.append(
            f"<h3>{html.escape(picture_title)}</h3><img src='{html.escape(_relative(path, out))}'>"
        )
    if examples:
        parts.append(f"<h2>Generated versus reference reports ({html.escape(generated_run)})</h2>")
        parts.append("<table><tr><th>image</th><th>generated</th><th>reference</th></tr>")
        for example in examples:
            cells = (example.get(k, "") for k in ("image_id", "generated", "reference"))
            parts.append(
                "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    (out / "report.html").write_text("\n".join(parts))
    return Report(markdown=markdown, headline=headline.text())


def _relative(path: Path, out: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(out.resolve()))
    except ValueError:
        return str(Path(path).resolve())
