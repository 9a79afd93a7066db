"""Small strict field readers shared by the schema modules: each raises :class:`MalformedError`
naming the field, so a bad document is rejected with a message that says where."""

from __future__ import annotations

import re
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Any

from prune.formats._canonical import MAX_SAFE_INTEGER
from prune.formats.errors import MalformedError

__all__ = ["expect_hex_digest", "expect_int", "expect_keys", "expect_object", "expect_str"]

_DIGEST = re.compile(r"[0-9a-f]{64}")


def expect_object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedError(f"{field}: expected an object")
    return value


def expect_keys(
    doc: Mapping[str, Any],
    field: str,
    *,
    required: AbstractSet[str],
    optional: AbstractSet[str] = frozenset(),
) -> None:
    """Exactly ``required`` keys plus any of ``optional``; unknown keys are an error (a reader
    that ignored them would let a writer smuggle unsigned meaning past an older verifier)."""
    keys = set(doc)
    missing = required - keys
    if missing:
        raise MalformedError(f"{field}: missing {', '.join(sorted(missing))}")
    unknown = keys - required - optional
    if unknown:
        raise MalformedError(f"{field}: unknown field {', '.join(sorted(unknown))[:80]}")


def expect_int(value: Any, field: str, *, minimum: int = -MAX_SAFE_INTEGER) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedError(f"{field}: expected an integer")
    if value < minimum:
        raise MalformedError(f"{field}: {value} is below {minimum}")
    return value


def expect_str(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise MalformedError(f"{field}: expected a string")
    return value


def expect_hex_digest(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _DIGEST.fullmatch(value):
        raise MalformedError(f"{field}: expected a SHA-256 digest (64 lowercase hex)")
    return value
