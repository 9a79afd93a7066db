"""Owner signing keys: ECDSA P-256 in PEM (PKCS#8 private key, SubjectPublicKeyInfo public key).

Threat assumptions: the private key file may be read by other local users unless its mode is
0600, so it is created 0600 from the first byte (never chmod-ed after the fact); a passphrase on
the command line would leak through the process list and shell history, so it only ever comes
from the caller, the ``PRUNE_KEY_PASSPHRASE`` environment variable, or a hidden prompt."""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from prune.errors import ProofError
from prune.formats import PublishError, publish_exclusive

__all__ = [
    "PASSPHRASE_ENV",
    "PRIVATE_KEY_NAME",
    "PUBLIC_KEY_NAME",
    "KeyPair",
    "OwnerKey",
    "generate_keys",
    "load_private_key",
    "load_public_key",
    "open_private_key",
    "resolve_passphrase",
]

PASSPHRASE_ENV = "PRUNE_KEY_PASSPHRASE"
PRIVATE_KEY_NAME = "owner.key"
PUBLIC_KEY_NAME = "owner.pub"
_MAX_KEY_BYTES = 64 * 1024

Prompt = Callable[[str], str]


@dataclass(frozen=True)
class KeyPair:
    """Where :func:`generate_keys` wrote the pair, and whether the private key is encrypted."""

    private_key: Path
    public_key: Path
    encrypted: bool


@dataclass(frozen=True)
class OwnerKey:
    """An opened owner key: the key, its file, and the passphrase that opened it (None when the
    file is not encrypted); the model signer re-opens the same file with it."""

    key: ec.EllipticCurvePrivateKey
    path: Path
    passphrase: bytes | None


def _check_curve(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey, path: Path) -> None:
    if key.curve.name != "secp256r1":
        raise ProofError(f"{path}: owner keys must be ECDSA P-256, found curve {key.curve.name}")


def _wrong_type(key: object, path: Path) -> ProofError:
    return ProofError(f"{path}: owner keys must be ECDSA P-256, found {type(key).__name__}")


def generate_keys(out: Path, *, passphrase: bytes | None = None) -> KeyPair:
    """Create ``out/owner.key`` (mode 0600, PKCS#8 PEM, encrypted when ``passphrase`` is given)
    and ``out/owner.pub``. Refuses to overwrite either file; on failure neither is left behind."""
    if passphrase is not None and not passphrase:
        raise ProofError("the key passphrase is empty; omit it or give a non-empty one")
    out = Path(out)
    private_path, public_path = out / PRIVATE_KEY_NAME, out / PUBLIC_KEY_NAME
    for path in (private_path, public_path):
        if os.path.lexists(path):
            raise ProofError(f"{path} already exists; refusing to overwrite a key")
    key = ec.generate_private_key(ec.SECP256R1())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        publish_exclusive(
            out, [(PRIVATE_KEY_NAME, private_pem, 0o600), (PUBLIC_KEY_NAME, public_pem, 0o644)]
        )
    except PublishError as exc:
        raise ProofError(str(exc)) from None
    except OSError as exc:
        raise ProofError(f"cannot write keys to {out}: {exc.strerror or exc}") from None
    return KeyPair(private_path, public_path, encrypted=passphrase is not None)


def _read_key_file(path: Path) -> bytes:
    try:
        with Path(path).open("rb") as handle:
            data = handle.read(_MAX_KEY_BYTES + 1)
    except OSError as exc:
        raise ProofError(f"cannot read key {path}: {exc.strerror or exc}") from exc
    if len(data) > _MAX_KEY_BYTES:
        raise ProofError(f"{path} is too large to be a PEM key")
    return data


def resolve_passphrase(
    path: Path,
    passphrase: bytes | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    prompt: Prompt | None = None,
    interactive: bool | None = None,
) -> bytes:
    """The passphrase for the encrypted key ``path``: ``passphrase`` if given, else
    ``$PRUNE_KEY_PASSPHRASE``, else a hidden prompt when stdin is a terminal, else an error."""
    if passphrase is not None:
        return passphrase
    env = os.environ if environ is None else environ
    if env.get(PASSPHRASE_ENV):
        return env[PASSPHRASE_ENV].encode("utf-8")
    tty = sys.stdin.isatty() if interactive is None else interactive
    if not tty:
        raise ProofError(f"key {path} is encrypted; set {PASSPHRASE_ENV}")
    ask = getpass.getpass if prompt is None else prompt
    return ask(f"passphrase for {path}: ").encode("utf-8")


def load_private_key(
    path: Path,
    passphrase: bytes | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    prompt: Prompt | None = None,
    interactive: bool | None = None,
) -> ec.EllipticCurvePrivateKey:
    """Load the owner's P-256 private key (see :func:`open_private_key`)."""
    return open_private_key(
        path, passphrase, environ=environ, prompt=prompt, interactive=interactive
    ).key


def open_private_key(
    path: Path,
    passphrase: bytes | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    prompt: Prompt | None = None,
    interactive: bool | None = None,
) -> OwnerKey:
    """Open the owner's P-256 private key. The passphrase is only looked up (see
    :func:`resolve_passphrase`) when the key file is encrypted; a passphrase given for an
    unencrypted key is ignored."""
    path = Path(path)
    data = _read_key_file(path)
    used: bytes | None = None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # encrypted, and no password was given
        used = resolve_passphrase(
            path, passphrase, environ=environ, prompt=prompt, interactive=interactive
        )
        try:
            key = serialization.load_pem_private_key(data, password=used)
        except ValueError as exc:
            raise ProofError(f"wrong passphrase for {path} (or the key file is corrupt)") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ProofError(f"{path} is not a readable PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise _wrong_type(key, path)
    _check_curve(key, path)
    return OwnerKey(key=key, path=path, passphrase=used)


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """Load a P-256 public key (SubjectPublicKeyInfo PEM)."""
    path = Path(path)
    try:
        key = serialization.load_pem_public_key(_read_key_file(path))
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ProofError(f"{path} is not a readable PEM public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise _wrong_type(key, path)
    _check_curve(key, path)
    return key
