"""The ``audit`` command line (verifier side). Each command lives in its own module."""

from __future__ import annotations

import click

from audit.cli._common import ErrorHandlingGroup
from audit.cli._mia import mia
from audit.cli._receipt import receipt
from audit.cli._report import attestation, keygen, report
from audit.cli._verify import verify

__all__ = ["cli", "main"]


@click.group(cls=ErrorHandlingGroup)
@click.version_option(package_name="prune-audit")
def cli() -> None:
    """Independent verification of PRUNE unlearning proofs (auditor side).

    The auditor trusts only cryptography, its own queries and its own attacks:
    `audit verify PROOF --public-key owner.pub` checks a proof fail-closed;
    `audit mia` measures membership inference; `audit report` writes a signed report.
    """


cli.add_command(verify)
cli.add_command(mia)
cli.add_command(receipt)
cli.add_command(report)
cli.add_command(keygen)
cli.add_command(attestation)


def main() -> None:
    cli(prog_name="audit")
