"""The command line: only the chosen command is imported; no library module imports it."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cxrvlp.cli import COMMANDS, build_parser, command_module

SOURCE = Path(__file__).resolve().parents[1] / "src" / "cxrvlp"
WATCHED = ["torch", "transformers", *sorted({module for module, _ in COMMANDS.values()})]


def run_fresh(code: str) -> tuple[str, set[str]]:
    """Run ``code`` in a new interpreter: what it printed, and which WATCHED modules it loaded."""
    report = f"\nimport json, sys\nprint(json.dumps([m for m in {WATCHED!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", code + report], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    output, _, loaded = done.stdout.rstrip("\n").rpartition("\n")
    return output, set(json.loads(loaded))


def test_help_lists_every_command_without_importing_any():
    output, loaded = run_fresh(
        "from cxrvlp.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0\n"
    )
    assert loaded == set()
    assert all(f"\n    {name}" in output for name in COMMANDS)


def test_command_help_imports_only_that_command():
    _, loaded = run_fresh(
        "from cxrvlp.cli import main\n"
        "try:\n"
        "    main(['text', '--help'])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0\n"
    )
    assert loaded == {"cxrvlp.text.command"}


def test_text_parse_runs_without_torch():
    output, loaded = run_fresh(
        "from cxrvlp.cli import main\nassert main(['text', 'parse', 'No pneumothorax.']) == 0"
    )
    assert loaded == {"cxrvlp.text.command"}
    result = json.loads(output)
    assert {(t["finding"], t["existence"]) for t in result["triplets"]} == {
        ("pneumothorax", "absent")
    }
    assert result["chexpert"]["Pneumothorax"] == 0.0


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_module_has_the_command_contract(name):
    module = command_module(name)
    assert module.DESCRIPTION.strip()
    assert callable(module.add_arguments) and callable(module.run)
    build_parser(name)  # the command's add_arguments accepts its parser


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function, as absolute names."""
    package = ["cxrvlp", *path.relative_to(SOURCE).parent.parts]
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            imported.add(module)
            imported.update(f"{module}.{alias.name}" for alias in node.names)
    return imported


def test_no_library_module_imports_the_command_line_or_the_demo():
    offenders = []
    for path in sorted(SOURCE.rglob("*.py")):
        relative = path.relative_to(SOURCE).as_posix()
        imported = imported_modules(path)
        for application, home in (("cxrvlp.cli", "cli.py"), ("cxrvlp.demo", "demo.py")):
            if relative != home and any(
                name == application or name.startswith(f"{application}.") for name in imported
            ):
                offenders.append(f"{relative} imports {application}")
    assert not offenders, offenders
