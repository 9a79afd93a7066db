"""Owner keys: generation, passphrases, and one-line errors for every bad key."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from prune.cli import cli
from prune.errors import ProofError
from prune.proofs import PASSPHRASE_ENV, generate_keys, load_private_key, load_public_key


def test_generate_writes_p256_pem_with_private_mode_0600(tmp_path: Path) -> None:
    pair = generate_keys(tmp_path / "KEYS")
    assert stat.S_IMODE(pair.private_key.stat().st_mode) == 0o600
    assert pair.private_key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    key = load_private_key(pair.private_key, environ={}, interactive=False)
    public = load_public_key(pair.public_key)
    assert key.public_key().public_numbers() == public.public_numbers()
    assert sorted(p.name for p in (tmp_path / "KEYS").iterdir()) == ["owner.key", "owner.pub"]


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    generate_keys(tmp_path)
    before = (tmp_path / "owner.key").read_bytes()
    with pytest.raises(ProofError, match="already exists"):
        generate_keys(tmp_path)
    assert (tmp_path / "owner.key").read_bytes() == before


def test_passphrase_sources(tmp_path: Path) -> None:
    pair = generate_keys(tmp_path, passphrase=b"s3cret")
    assert b"ENCRYPTED" in pair.private_key.read_bytes()
    path = pair.private_key
    load_private_key(path, b"s3cret", environ={}, interactive=False)
    load_private_key(path, environ={PASSPHRASE_ENV: "s3cret"}, interactive=False)
    asked: list[str] = []

    def prompt(text: str) -> str:
        asked.append(text)
        return "s3cret"

    load_private_key(path, environ={}, prompt=prompt, interactive=True)
    assert len(asked) == 1 and str(path) in asked[0]
    with pytest.raises(ProofError, match=f"is encrypted; set {PASSPHRASE_ENV}"):
        load_private_key(path, environ={}, interactive=False)


def test_wrong_passphrase(tmp_path: Path) -> None:
    pair = generate_keys(tmp_path, passphrase=b"right")
    with pytest.raises(ProofError, match="wrong passphrase"):
        load_private_key(pair.private_key, b"wrong", environ={}, interactive=False)


def test_corrupt_truncated_and_foreign_keys(tmp_path: Path) -> None:
    pair = generate_keys(tmp_path, passphrase=b"pw")
    pem = pair.private_key.read_bytes()
    cases = {
        "garbage.key": b"not a key at all",
        "truncated.key": pem[: len(pem) // 2],
        "flipped.key": pem.replace(pem[40:44], b"AAAA"),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ProofError) as info:
            load_private_key(tmp_path / name, b"pw", environ={}, interactive=False)
        assert "\n" not in str(info.value)
    p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "p384.key").write_bytes(p384)
    with pytest.raises(ProofError, match="P-256"):
        load_private_key(tmp_path / "p384.key")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    (tmp_path / "rsa.pub").write_bytes(
        rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(ProofError, match="P-256"):
        load_public_key(tmp_path / "rsa.pub")
    with pytest.raises(ProofError, match="cannot read key"):
        load_private_key(tmp_path / "missing.key")
    with pytest.raises(ProofError, match="not a readable PEM public key"):
        load_public_key(pair.private_key)


def test_cli_keygen(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "KEYS"
    result = runner.invoke(cli, ["keygen", "--out", str(out)], env={PASSPHRASE_ENV: ""})
    assert result.exit_code == 0, result.output
    assert "NOT encrypted" in result.output
    again = runner.invoke(cli, ["keygen", "--out", str(out)])
    assert again.exit_code == 2
    assert again.output.strip().count("\n") == 0
    assert "already exists" in again.output and "Traceback" not in again.output
    enc = runner.invoke(
        cli, ["keygen", "--out", str(tmp_path / "E"), "--passphrase"], env={PASSPHRASE_ENV: "pw"}
    )
    assert enc.exit_code == 0, enc.output
    load_private_key(tmp_path / "E" / "owner.key", b"pw")
    plain = runner.invoke(
        cli, ["keygen", "--out", str(tmp_path / "N"), "--no-passphrase"], env={PASSPHRASE_ENV: "pw"}
    )
    assert plain.exit_code == 0
    load_private_key(tmp_path / "N" / "owner.key", environ={}, interactive=False)
    no_tty = runner.invoke(
        cli, ["keygen", "--out", str(tmp_path / "T"), "--passphrase"], env={PASSPHRASE_ENV: ""}
    )
    assert no_tty.exit_code == 2
    assert PASSPHRASE_ENV in no_tty.output
    assert not (tmp_path / "T" / "owner.key").exists()
