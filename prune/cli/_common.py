"""CLI plumbing shared by the ``prune`` commands: one-line errors, exit codes, quiet progress."""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from prune.errors import PruneError
from prune.formats import output_problem

__all__ = [
    "EXIT_BAD_INPUT",
    "SEED",
    "ErrorHandlingGroup",
    "check_output_folder",
    "finite_range",
    "show_progress",
]

SEED = click.IntRange(0, 2**32 - 1)
"""Seeds: what numpy and scikit-learn accept (a negative seed is a usage error, not a crash)."""

EXIT_BAD_INPUT = 2


class ErrorHandlingGroup(click.Group):
    """A click group that turns every :class:`PruneError` into ``prune: error: <message>`` on
    stderr and exit status 2, without a traceback."""

    def __init__(self, *args: Any, lazy: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        """``lazy`` maps a command name to ``"module:attribute"``; the module is imported only
        when that command runs (or ``--help`` lists it), so ``prune verify`` does not pay for
        torch."""
        super().__init__(*args, **kwargs)
        self._lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self._lazy:
            module, _, attr = self._lazy[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attr)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PruneError as exc:
            click.echo(f"prune: error: {exc}", err=True)
            ctx.exit(EXIT_BAD_INPUT)
        except OSError as exc:  # last resort: a file problem no loader anticipated
            where = f" {exc.filename}" if exc.filename else ""
            click.echo(f"prune: error: cannot use{where}: {exc.strerror or exc}", err=True)
            ctx.exit(EXIT_BAD_INPUT)
        except MemoryError:
            click.echo("prune: error: out of memory", err=True)
            ctx.exit(EXIT_BAD_INPUT)


def show_progress(quiet: bool) -> bool:
    """Progress bars only on an interactive terminal and without ``--quiet``."""
    return not quiet and sys.stderr.isatty()


def check_output_folder(path: Path, *, inputs: Sequence[Path | None]) -> None:
    """Refuse an output folder that is an input, a file, a link or not creatable (exit 2),
    before any work starts."""
    problem = output_problem(path, inputs=inputs, folder=True)
    if problem is not None:
        raise PruneError(f"--out: {problem}")


def finite_range(low: float, high: float) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback: the value is a finite float in ``(low, high]`` (click's FloatRange lets
    NaN through, since every comparison with NaN is false)."""

    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return value
        if not math.isfinite(value) or not low < value <= high:
            raise click.BadParameter(f"{value} is not a finite number in ({low:g}, {high:g}]")
        return value

    return check
