"""The ``audit`` command line (verifier side). Each command lives in its own module."""

from __future__ import annotations

import signal

import click

from audit.cli._common import ErrorHandlingGroup

__all__ = ["cli", "main"]


@click.group(
    cls=ErrorHandlingGroup,
    lazy={
        "verify": "audit.cli._verify:verify",
        "mia": "audit.cli._mia:mia",
        "receipt": "audit.cli._receipt:receipt",
        "report": "audit.cli._report:report",
        "keygen": "audit.cli._report:keygen",
        "attestation": "audit.cli._report:attestation",
    },
)
@click.version_option(package_name="prune-audit")
def cli() -> None:
    """Independent verification of PRUNE unlearning proofs (auditor side).

    The auditor trusts only cryptography, its own queries and its own attacks:
    `audit verify PROOF --public-key owner.pub` checks a proof fail-closed;
    `audit mia` measures membership inference; `audit report` writes a signed report.
    """


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds: temporary files and the sandbox are cleaned up


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    cli(prog_name="audit")
