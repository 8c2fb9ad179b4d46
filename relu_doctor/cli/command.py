"""The click classes behind every relu-doctor command: help and usage errors as ruff, mypy and pytest print them.

- Help: conventional metavars (``--samples N``, ``--format [table|json|...]``, ``MODEL``), none for a flag; never
  Typer's ``<int>``/``<bool>``/``<list[str]>``.
- Usage errors in our own words, never the validation library's (``Value error, 'x' is not one of``):
  ``--color must be one of auto, always, never, got 'purple'``; every missing required option at once.
- Every usage error carries its command (``ctx``), so the one-line message can end with the ``--help`` hint.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Typer >= 0.29 vendors click: its exceptions and context are not click's own.
from typer._click.exceptions import BadParameter, MissingParameter
from typer._click.exceptions import UsageError as ClickUsageError
from typer.core import TyperArgument, TyperCommand, TyperGroup


class ReluCommand(TyperCommand):
    """A Typer command with conventional metavars and plain, complete usage errors."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for param in params:
            conventional_metavar(param)
        return params

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        given = list(args)
        try:
            return super().parse_args(ctx, args)
        except MissingParameter:
            raise ClickUsageError(missing_message(self, ctx, given), ctx) from None
        except BadParameter as exc:
            raise ClickUsageError(bad_value_message(exc), ctx) from None
        except ClickUsageError as exc:
            exc.ctx = exc.ctx or ctx  # the parser's own errors (an option without its value) know no command
            raise


class ReluGroup(TyperGroup):
    """The root group: the same metavars for ``--version`` and ``--help``."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for param in params:
            conventional_metavar(param)
        return params


def conventional_metavar(param: Any) -> None:
    """Give ``param`` a conventional metavar unless it has one: none for a flag, ``[a|b]`` for choices, ``N``
    for an integer, ``X`` for a float, ``FILE`` for a path, ``TEXT`` otherwise."""
    if isinstance(param, TyperArgument):
        param.metavar = param.metavar or (param.name or "").upper()
        param.__class__ = _ConventionalArgument
        return
    if param.metavar is not None:
        return
    if getattr(param, "is_flag", False):
        param.metavar = ""
        return
    descriptor = param.type_descriptor
    choices = descriptor.choices
    if choices:
        param.metavar = "[" + "|".join(choice_text(choice) for choice in choices) + "]"
        return
    annotation = _inner(descriptor.annotation)
    param.metavar = {int: "N", float: "X", Path: "FILE"}.get(annotation, "TEXT")


class _ConventionalArgument(TyperArgument):
    """An argument shown as ``MODEL`` (``CKPT...`` when repeatable) in the usage line, with no type column."""

    def _usage_display_name(self) -> str:
        name = self.metavar or ""
        return (name if self.required else f"[{name}]") + ("..." if self.nargs != 1 else "")

    def _rich_display_name(self) -> str:
        return (self.metavar or "") + ("..." if self.nargs != 1 else "")

    def display_type_rich(self, ctx: Any) -> str | None:
        return None


def choice_text(choice: Any) -> str:
    """A choice as the user types it."""
    return str(choice.value) if isinstance(choice, enum.Enum) else str(choice)


def _inner(annotation: Any) -> Any:
    """``list[int]`` -> ``int``, ``int | None`` -> ``int``."""
    arguments = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
    return arguments[0] if len(arguments) == 1 else annotation


def option_name(param: Any) -> str:
    """How a message names a parameter: its long option (``--format``), or an argument's metavar (``MODEL``)."""
    longs = [opt for opt in getattr(param, "opts", ()) if opt.startswith("--")]
    if longs:
        return longs[0]
    return param.metavar or (param.name or "").upper()


def bad_value_message(exc: BadParameter) -> str:
    """``--color must be one of auto, always, never, got 'purple'``: the option, what it takes, the bad value."""
    param = exc.param
    if param is None:
        return exc.format_message()
    cause = exc.__cause__
    if cause is None or not hasattr(cause, "errors"):  # raised by one of our parsers: its message is ours
        return f"{option_name(param)} {exc.message}"
    errors = cause.errors()
    value = errors[0].get("input") if errors else None
    got = f", got {value!r}" if value is not None else ""
    choices = param.type_descriptor.choices
    if choices:
        return f"{option_name(param)} must be one of {', '.join(choice_text(c) for c in choices)}{got}"
    wanted = {int: "an integer", float: "a number", Path: "a path"}.get(_inner(param.type_descriptor.annotation))
    if wanted is None:
        return f"{option_name(param)}: invalid value{got}"
    return f"{option_name(param)} must be {wanted}{got}"


def missing_message(command: Any, ctx: Any, args: Sequence[str]) -> str:
    """Every required parameter the command line lacks, in one message (``fix`` has two required options)."""
    parser = command.make_parser(ctx)
    try:
        given, _, _ = parser.parse_args(args=list(args))
    except ClickUsageError:
        given = {}
    missing = [
        param for param in command.get_params(ctx) if param.required and param.value_is_missing(given.get(param.name))
    ]
    shown = [_with_metavar(param) for param in missing] or ["a required option"]
    noun = "argument" if all(p.param_type_name == "argument" for p in missing) else "option"
    return f"missing {noun}{'s' if len(shown) > 1 else ''} {', '.join(shown)}"


def _with_metavar(param: Any) -> str:
    name = option_name(param)
    if param.param_type_name == "argument" or not param.metavar:
        return name
    return f"{name} {param.metavar}"
