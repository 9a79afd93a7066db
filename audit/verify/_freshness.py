"""Freshness: a certificate is recent, not from the future, and not a replay of one the auditor
has already accepted.

Policy (docs/VERIFY.md): ``created`` must lie within ``max_age`` before the verification time
and at most ``max_clock_skew`` after it; with a nonce store (``--nonce-store FILE``), a nonce that
is already recorded fails the check, and the nonce of a certificate that is *verified* is added
(atomically) after the run, so that the same certificate cannot be accepted twice. Time is a
parameter (``now``), never read here."""

from __future__ import annotations

import os
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from audit.errors import InputError
from audit.verify._context import VerifyContext
from audit.verify._framework import Check, CheckOutcome

__all__ = ["Freshness", "read_nonce_store", "record_nonce"]

_NONCE = re.compile(r"[0-9a-f]{32}")
_MAX_STORE_BYTES = 64 << 20


def read_nonce_store(path: Path) -> frozenset[str]:
    """Nonces recorded in ``path`` (one per line); a missing file is an empty store."""
    if not path.exists():
        return frozenset()
    try:
        if path.stat().st_size > _MAX_STORE_BYTES:
            raise InputError(f"nonce store {path} is over {_MAX_STORE_BYTES} bytes")
        lines = path.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"nonce store {path} cannot be read: {exc}") from exc
    bad = [line for line in lines if not _NONCE.fullmatch(line)]
    if bad:
        raise InputError(f"nonce store {path}: {bad[0][:40]!r} is not a 32-hex-character nonce")
    return frozenset(lines)


def record_nonce(path: Path, nonce: str) -> None:
    """Add ``nonce`` to the store: write a complete new file next to it and rename it over."""
    if not _NONCE.fullmatch(nonce):
        raise InputError(f"refusing to record malformed nonce {nonce[:40]!r}")
    known = read_nonce_store(path)
    if nonce in known:
        return
    text = "".join(f"{n}\n" for n in sorted(known | {nonce}))
    fd, tmp = tempfile.mkstemp(prefix=".nonces-", dir=path.parent or Path("."))
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _created(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


class Freshness(Check[VerifyContext]):
    name = "freshness"
    summary = "created is within --max-age and not in the future; the nonce is not in --nonce-store"

    def run(self, ctx: VerifyContext) -> CheckOutcome:
        predicate = ctx.predicate
        created = _created(predicate.created)
        age = ctx.now - created
        evidence = {
            "created": predicate.created,
            "now": ctx.now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "age_days": round(age.total_seconds() / 86400, 3),
            "max_age_days": ctx.policy.max_age.total_seconds() / 86400,
            "nonce": predicate.nonce,
            "nonce_store": str(ctx.inputs.nonce_store) if ctx.inputs.nonce_store else None,
        }
        if created - ctx.now > ctx.policy.max_clock_skew:
            return self.failed(
                f"certificate created {predicate.created}, in the future of {evidence['now']}",
                **evidence,
            )
        if age > ctx.policy.max_age:
            return self.failed(
                f"stale certificate: created {predicate.created}, "
                f"{age.days} days old (max {ctx.policy.max_age.days})",
                **evidence,
            )
        if ctx.inputs.nonce_store is not None:
            if predicate.nonce in read_nonce_store(ctx.inputs.nonce_store):
                return self.failed(
                    f"replayed certificate: nonce {predicate.nonce} was already accepted",
                    **evidence,
                )
            detail = f"created {predicate.created}, nonce not seen before"
        else:
            detail = f"created {predicate.created} (no --nonce-store: replay not checked)"
        return self.passed(detail, **evidence)
