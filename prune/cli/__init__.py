"""The ``prune`` command line (owner side). Each command lives in its own module and calls one
library function; this module only assembles the group."""

from __future__ import annotations

import signal

import click

from prune.cli._common import ErrorHandlingGroup

__all__ = ["cli", "main"]


@click.group(
    cls=ErrorHandlingGroup,
    lazy={
        "train": "prune.cli._train:train",
        "keygen": "prune.cli._keygen:keygen",
        "unlearn": "prune.cli._unlearn:unlearn_command",
        "inspect": "prune.cli._inspect:inspect_command",
        "prepare": "prune.cli._prepare:prepare_command",
    },
)
@click.version_option(package_name="prune-audit")
def cli() -> None:
    """PRUNE: certified machine unlearning by neural-network repair (owner side).

    Typical flow: `prune train` (or bring your own ONNX model), `prune keygen`, then
    `prune unlearn MODEL --train DATA --forget-indices FILE --key KEYS/owner.key --out PROOF`.
    Hand PROOF/ and KEYS/owner.pub to the auditor (`audit verify`).
    """


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds: temporary files and the sandbox are cleaned up


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    cli(prog_name="prune")
