"""The ``prune`` command line (owner side). Each command lives in its own module and calls one
library function; this module only assembles the group."""

from __future__ import annotations

import click

from prune.cli._common import ErrorHandlingGroup
from prune.cli._keygen import keygen
from prune.cli._train import train
from prune.cli._unlearn import unlearn_command

__all__ = ["cli", "main"]


@click.group(cls=ErrorHandlingGroup)
@click.version_option(package_name="prune-audit")
def cli() -> None:
    """PRUNE: certified machine unlearning by neural-network repair (owner side).

    Typical flow: `prune train` (or bring your own ONNX model), `prune keygen`, then
    `prune unlearn MODEL --train DATA --forget-indices FILE --key KEYS/owner.key --out PROOF`.
    Hand PROOF/ and KEYS/owner.pub to the auditor (`audit verify`).
    """


cli.add_command(train)
cli.add_command(keygen)
cli.add_command(unlearn_command)


def main() -> None:
    cli(prog_name="prune")
