"""``PROOF/model.sig``: an OpenSSF model-signing signature over ``PROOF/model.onnx``, made with the
``model_signing`` library's elliptic-key signer so that the ecosystem's own tool verifies it:
``model_signing verify key PROOF/model.onnx --signature PROOF/model.sig --public_key owner.pub``.

What is signed (model_signing 1.x, single-file model): a Sigstore bundle v0.3 whose DSSE
envelope carries an in-toto Statement with predicateType ``https://model_signing/signature/v1.0``;
its one resource is named ``.`` with the SHA-256 of the file's bytes; the envelope is signed with
ECDSA P-256/SHA-256 over the DSSE PAE; ``verificationMaterial.publicKey.hint`` is the SHA-256 of
the PEM public key. No transparency log is involved (offline)."""

from __future__ import annotations

from pathlib import Path

from prune.errors import ProofError
from prune.proofs._keys import OwnerKey

__all__ = ["sign_model", "verify_model_signature"]


def sign_model(model: Path, signature: Path, *, key: OwnerKey) -> None:
    """Write the model-signing bundle for the file ``model`` to ``signature``."""
    from model_signing import signing

    try:
        # model_signing annotates the password as str, but hands it to cryptography's
        # load_pem_private_key, which only accepts bytes.
        config = signing.Config().use_elliptic_key_signer(  # type: ignore[no-untyped-call]
            private_key=key.path,
            password=key.passphrase,  # type: ignore[arg-type]
        )
        config.sign(model, signature)
    except (OSError, ValueError, TypeError) as exc:
        raise ProofError(f"model signing failed for {model}: {exc}") from exc


def verify_model_signature(model: Path, signature: Path, *, public_key: Path) -> None:
    """Check ``signature`` over ``model`` with model_signing's own verifier (a self-check after
    signing; the auditor runs its own)."""
    from model_signing import verifying

    try:
        config = verifying.Config()  # type: ignore[no-untyped-call]
        config.use_elliptic_key_verifier(public_key=public_key).verify(model, signature)
    except (OSError, ValueError, TypeError) as exc:
        raise ProofError(f"model signature does not verify for {model}: {exc}") from exc
