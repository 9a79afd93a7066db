"""CLI plumbing shared by the ``prune`` commands: one-line errors, exit codes, quiet progress."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from typing import Any

import click

from prune.errors import PruneError

__all__ = ["EXIT_BAD_INPUT", "ErrorHandlingGroup", "show_progress"]

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


def show_progress(quiet: bool) -> bool:
    """Progress bars only on an interactive terminal and without ``--quiet``."""
    return not quiet and sys.stderr.isatty()
