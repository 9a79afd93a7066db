"""CLI plumbing shared by the ``audit`` commands: one-line errors and the exit-code contract
(0 verified, 1 a check failed, 2 bad input or usage)."""

from __future__ import annotations

import sys
from typing import Any

import click

from audit.errors import AuditError, VerificationError

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "ErrorHandlingGroup", "show_progress"]

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class ErrorHandlingGroup(click.Group):
    """Turns :class:`AuditError` into ``audit: error: <message>`` and the contract's exit code."""

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
