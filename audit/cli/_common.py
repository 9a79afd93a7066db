"""CLI plumbing shared by the ``audit`` commands: one-line errors and the exit-code contract
(0 verified, 1 a check failed, 2 bad input or usage)."""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click

from audit.errors import AuditError, VerificationError

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "ErrorHandlingGroup",
    "sandbox_options",
    "show_progress",
]

F = TypeVar("F", bound=Callable[..., Any])

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
        except OSError as exc:  # last resort: a file problem no loader anticipated
            where = f" {exc.filename}" if exc.filename else ""
            click.echo(f"audit: error: cannot use{where}: {exc.strerror or exc}", err=True)
            ctx.exit(EXIT_BAD_INPUT)
        except MemoryError:
            click.echo("audit: error: out of memory", err=True)
            ctx.exit(EXIT_BAD_INPUT)


def show_progress(quiet: bool) -> bool:
    """Progress bars only on an interactive terminal and without ``--quiet``."""
    return not quiet and sys.stderr.isatty()


def sandbox_options(command: F) -> F:
    """``--max-memory`` and ``--timeout`` for a command that runs the owner's models: the command
    body runs inside one sandbox (one worker process) with those limits, stopped on exit."""
    from audit.sandbox import SandboxLimits

    defaults = SandboxLimits()

    @functools.wraps(command)
    def wrapper(*args: Any, max_memory: int, timeout: float, **kwargs: Any) -> Any:
        from audit.sandbox import sandboxed

        limits = SandboxLimits(max_memory=max_memory * (1 << 20), timeout=timeout)
        with sandboxed(limits):
            return command(*args, **kwargs)

    wrapper = click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True, max=86_400),
        default=defaults.timeout,
        show_default=True,
        help="Wall-clock seconds one model call may take before the model fails.",
    )(wrapper)
    wrapper = click.option(
        "--max-memory",
        type=click.IntRange(min=512, max=1 << 30),
        default=defaults.max_memory >> 20,
        show_default=True,
        help="Address space (MiB) of the process that runs the owner's models.",
    )(wrapper)
    return wrapper  # type: ignore[return-value]  # same signature minus the two options
