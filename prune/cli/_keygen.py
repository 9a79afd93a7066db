"""``prune keygen``: the owner's ECDSA P-256 signing key pair."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from prune.errors import ProofError
from prune.proofs import PASSPHRASE_ENV, generate_keys

__all__ = ["keygen"]


def _passphrase(mode: bool | None) -> bytes | None:
    """``--passphrase``: from the environment, else a confirmed hidden prompt; ``--no-passphrase``:
    none; neither: the environment variable when it is set, else none."""
    from_env = os.environ.get(PASSPHRASE_ENV)
    if mode is False:
        return None
    if from_env:
        return from_env.encode("utf-8")
    if mode is None:
        return None
    if not sys.stdin.isatty():
        raise ProofError(f"--passphrase needs a terminal for the prompt, or set {PASSPHRASE_ENV}")
    text: str = click.prompt(
        "passphrase for the new key", hide_input=True, confirmation_prompt=True, err=True
    )
    return text.encode("utf-8")


@click.command()
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Folder KEYS for owner.key (mode 0600) and owner.pub.",
)
@click.option(
    "--passphrase/--no-passphrase",
    "passphrase",
    default=None,
    help=f"Encrypt the private key. The passphrase comes from ${PASSPHRASE_ENV} or a hidden "
    f"prompt, never from a flag. Default: encrypt only when ${PASSPHRASE_ENV} is set.",
)
def keygen(out: Path, passphrase: bool | None) -> None:
    """Create the owner's ECDSA P-256 key pair: KEYS/owner.key and KEYS/owner.pub (PEM)."""
    pair = generate_keys(out, passphrase=_passphrase(passphrase))
    state = "encrypted" if pair.encrypted else "NOT encrypted"
    click.echo(f"wrote {pair.private_key} ({state}, mode 0600) and {pair.public_key}")
