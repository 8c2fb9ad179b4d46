"""The output-format registries: every command's --format choices are a registry's names, a format is found by
name (an unknown one is refused listing the choices), and the registry (not the CLI, not the renderer) makes names
from files safe the way each format needs."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
from typer.main import get_command

from relu_doctor.cli import app
from relu_doctor.errors import UsageError
from relu_doctor.render import BATCH_FORMATS, FIX_FORMATS, REPORT_FORMATS, TREND_FORMATS
from relu_doctor.render.registry import OutputFormat, Registry

COMMANDS = get_command(app).commands  # type: ignore[attr-defined]


def _echo(record: str, /, *, width: int | None = None, color: bool = False) -> str:
    """A toy renderer: the record itself, and the layout it was given."""
    return f"{record}|{width}|{color}"


def _toy(**flags: bool) -> Registry[str]:
    entry = OutputFormat("echo", _echo, terminal=False, media_type="text/plain", extension=".txt", **flags)
    return Registry("toy", (entry,), verdict=lambda record: f"verdict of {record}")


@pytest.mark.parametrize(
    ("command", "formats"),
    [("scan", REPORT_FORMATS), ("merge", REPORT_FORMATS), ("trend", TREND_FORMATS), ("fix", FIX_FORMATS)],
)
def test_every_command_offers_exactly_its_registrys_formats(command: str, formats: Registry[object]) -> None:
    (option,) = [p for p in COMMANDS[command].params if "--format" in p.opts]
    assert option.metavar == f"[{'|'.join(formats.names())}]"
    assert option.default == formats.default.name == "table"


def test_each_registry_has_one_terminal_table_first_and_unique_extensions_per_media_type() -> None:
    for formats in (REPORT_FORMATS, TREND_FORMATS, FIX_FORMATS):
        assert [f.name for f in formats if f.terminal] == ["table"]
        assert all(f.extension.startswith(".") and "/" in f.media_type for f in formats)
    assert REPORT_FORMATS.names() == ("table", "json", "markdown", "csv", "github", "sarif", "junit")


def test_an_unknown_format_is_refused_naming_the_choices() -> None:
    with pytest.raises(UsageError, match=r"unknown trend format 'xml'; choose one of table, json"):
        TREND_FORMATS.get("xml")
    assert "xml" not in TREND_FORMATS and "json" in TREND_FORMATS


def test_a_registry_refuses_two_formats_of_one_name() -> None:
    entry = OutputFormat("echo", _echo, terminal=False, media_type="text/plain", extension=".txt")
    with pytest.raises(ValueError, match="unique names"):
        Registry("toy", (entry, entry), verdict=str)


def test_the_registry_passes_the_layout_and_escapes_names_only_where_the_format_asks() -> None:
    name = "evil\n::error::x"
    assert _toy().render(name, "echo", width=40, color=True) == "evil\n\u200b::error::x|40|True"
    assert _toy(escape_names=True).render(name, "echo") == "evil\\n::error::x|100|False"
    # a format that is workflow commands keeps its '::' lines (its renderer escapes its own data)
    assert _toy(workflow_commands=True).render(name, "echo") == "evil\n::error::x|100|False"
    assert _toy().verdict("it") == "verdict of it"


def test_importing_the_cli_imports_no_renderer_until_one_renders() -> None:
    # One run uses one format: the registries name every format at import time, a renderer's module (and rich,
    # xml, csv, hashlib behind it) is imported when it renders. A fresh interpreter, so nothing is imported yet.
    code = (
        "import sys\n"
        "from relu_doctor.cli import app\n"
        "from relu_doctor.render import BATCH_FORMATS, FIX_FORMATS, REPORT_FORMATS, TREND_FORMATS\n"
        "names = [f.name for r in (BATCH_FORMATS, FIX_FORMATS, REPORT_FORMATS, TREND_FORMATS) for f in r]\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('relu_doctor.render.') or m in ('rich.console', 'torch'))\n"
        "print(len(names), ' '.join(loaded))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    every = sum(len(formats.formats) for formats in (BATCH_FORMATS, FIX_FORMATS, REPORT_FORMATS, TREND_FORMATS))
    assert done.stdout.split() == [str(every), "relu_doctor.render.common", "relu_doctor.render.registry"]


@pytest.mark.parametrize("formats", [REPORT_FORMATS, TREND_FORMATS, FIX_FORMATS, BATCH_FORMATS])
def test_every_deferred_renderer_and_verdict_names_a_function_that_exists(formats: Registry[object]) -> None:
    # a misspelt module or function would otherwise fail only when someone asks for that format
    deferred = [entry.renderer for entry in formats]
    deferred += [formats.verdict] if hasattr(formats.verdict, "module") else []  # the others are plain functions
    for target in deferred:
        module = importlib.import_module(f"relu_doctor.render.{target.module}")  # type: ignore[attr-defined]
        assert callable(getattr(module, target.function))  # type: ignore[attr-defined]
