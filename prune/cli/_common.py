"""CLI plumbing shared by the ``prune`` commands: one-line errors, exit codes, quiet progress."""

from __future__ import annotations

import sys
from typing import Any

import click

from prune.errors import PruneError

__all__ = ["EXIT_BAD_INPUT", "ErrorHandlingGroup", "show_progress"]

EXIT_BAD_INPUT = 2


class ErrorHandlingGroup(click.Group):
    """A click group that turns every :class:`PruneError` into ``prune: error: <message>`` on
    stderr and exit status 2, without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PruneError as exc:
            click.echo(f"prune: error: {exc}", err=True)
            ctx.exit(EXIT_BAD_INPUT)


def show_progress(quiet: bool) -> bool:
    """Progress bars only on an interactive terminal and without ``--quiet``."""
    return not quiet and sys.stderr.isatty()
