"""The package's layers, checked on every module's imports (those inside functions too):

- the library (`data`, `text`, `models`, `losses`, `engine`, `metrics`) never imports the
  applications: the command line and the command modules, the demo, the service, the
  benchmark, pre-training and fine-tuning orchestration, bundle export, or the plots (`viz`,
  matplotlib): a run's pictures are the application's business;
- `text` never imports `data` (readers use the parser, not the other way round).

A package's ``command`` module is an application even inside a library package.
"""

import ast
from pathlib import Path

import cxrvlp

LIBRARY = ("data", "text", "models", "losses", "engine", "metrics")
APPLICATIONS = (
    "cxrvlp.cli",
    "cxrvlp.demo",
    "cxrvlp.serve",
    "cxrvlp.benchmark",
    "cxrvlp.pretrain",
    "cxrvlp.export",
    "cxrvlp.tasks",
    "cxrvlp.viz",
)
RULES = (
    # (importing package, forbidden module prefixes, why)
    *((f"cxrvlp.{package}", APPLICATIONS, "the library never imports an application")
      for package in LIBRARY),
    ("cxrvlp.text", ("cxrvlp.data",), "text never imports data: readers use the parser"),
)  # fmt: skip


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, name: str) -> set[str]:
    """Every module ``path`` imports, by absolute name (relative imports resolved)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def is_command(name: str) -> bool:
    return name.rsplit(".", 1)[-1] == "command"


def violations(root: Path) -> list[str]:
    """Each import that breaks a rule, as 'module imports target (why)'."""
    broken = []
    for path in sorted(root.rglob("*.py")):
        name = module_name(path, root)
        if is_command(name):
            continue
        for target in sorted(imported_modules(path, name)):
            for importer, forbidden, why in RULES:
                inside = name == importer or name.startswith(importer + ".")
                hit = is_command(target) or any(
                    target == f or target.startswith(f + ".") for f in forbidden
                )
                if inside and hit and target.startswith("cxrvlp."):
                    broken.append(f"{name} imports {target} ({why})")
    return broken


def test_the_package_keeps_its_layers():
    assert violations(Path(cxrvlp.__file__).parent) == []


def test_a_forbidden_import_is_caught(tmp_path):
    root = tmp_path / "cxrvlp"
    for package in ("engine", "text", "data", "viz"):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "engine" / "train.py").write_text(
        "def plot():\n    from cxrvlp.viz.curves import plot_losses\n"
    )
    (root / "text" / "parse.py").write_text("from ..data.sample import Record\n")
    (root / "text" / "command.py").write_text("from cxrvlp.data.readers import reader_class\n")
    (root / "data" / "sample.py").write_text("from cxrvlp.text.parse import parse_report\n")
    assert violations(root) == [
        "cxrvlp.engine.train imports cxrvlp.viz.curves (the library never imports an application)",
        "cxrvlp.engine.train imports cxrvlp.viz.curves.plot_losses (the library never imports "
        "an application)",
        "cxrvlp.text.parse imports cxrvlp.data.sample (text never imports data: readers use "
        "the parser)",
        "cxrvlp.text.parse imports cxrvlp.data.sample.Record (text never imports data: "
        "readers use the parser)",
    ]
