"""CLI plumbing shared by the ``audit`` commands: one-line errors and the exit-code contract
(0 verified, 1 a check failed, 2 bad input or usage)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from typing import Any

import click

from audit.errors import AuditError, VerificationError

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "ErrorHandlingGroup", "show_progress"]

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class ErrorHandlingGroup(click.Group):
    """Turns :class:`AuditError` into ``audit: error: <message>`` and the contract's exit code."""

    def __init__(self, *args: Any, lazy: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        """``lazy`` maps a command name to ``"module:attribute"``; the module is imported only
        when that command runs (or ``--help`` lists it), so ``audit verify`` does not pay for
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
        except VerificationError as exc:
            click.echo(f"audit: verification failed: {exc}", err=True)
            ctx.exit(EXIT_FAILED)
        except AuditError as exc:
            click.echo(f"audit: error: {exc}", err=True)
            ctx.exit(EXIT_BAD_INPUT)


def show_progress(quiet: bool) -> bool:
    """Progress bars only on an interactive terminal and without ``--quiet``."""
    return not quiet and sys.stderr.isatty()
