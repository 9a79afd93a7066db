"""Canonical JSON and SHA-256 helpers: the byte encodings that everything hashed or signed uses.

Canonical JSON (docs/FORMATS.md): UTF-8, object keys sorted by code point, separators ``,`` and
``:``, no whitespace, no floats (reals travel as decimal strings, see :func:`decimal_string`),
integers within ±2^53, no NaN/Infinity, string keys only. Invariant: for every value ``v`` that
:func:`canonical_json` accepts, ``parse_canonical_json(canonical_json(v)) == v`` (tuples come
back as lists), and :func:`parse_canonical_json` accepts exactly the byte strings that
:func:`canonical_json` can produce, so two parties that agree on a value agree on its bytes."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prune.formats.errors import FormatError, MalformedError

__all__ = [
    "MAX_SAFE_INTEGER",
    "canonical_json",
    "decimal_string",
    "file_sha256",
    "parse_canonical_json",
    "parse_decimal_string",
    "parse_hex",
    "sha256_hex",
]

MAX_SAFE_INTEGER = 2**53
_CHUNK = 1 << 20
_HEX = re.compile(r"[0-9a-f]*")


def _check_value(value: Any, path: str) -> None:
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise MalformedError(f"canonical JSON: integer at {path} is outside ±2^53")
        return
    if isinstance(value, float):
        raise MalformedError(
            f"canonical JSON: float at {path}; write reals as decimal strings (decimal_string)"
        )
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise MalformedError(f"canonical JSON: non-string key {key!r} at {path}")
            _check_value(item, f"{path}.{key}")
        return
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        for i, item in enumerate(value):
            _check_value(item, f"{path}[{i}]")
        return
    raise MalformedError(f"canonical JSON: unsupported type {type(value).__name__} at {path}")


def canonical_json(value: Any) -> bytes:
    """The canonical UTF-8 encoding of ``value`` (dict/list/tuple/str/int/bool/None)."""
    _check_value(value, "$")
    text = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedError("canonical JSON: a string holds a lone surrogate") from exc


def _reject_float(text: str) -> Any:
    raise MalformedError(f"canonical JSON: float literal {text[:20]} is not allowed")


def _reject_constant(text: str) -> Any:
    raise MalformedError(f"canonical JSON: constant {text} is not allowed")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, item in pairs:
        if key in result:
            raise MalformedError(f"canonical JSON: duplicate key {key[:40]!r}")
        result[key] = item
    return result


MAX_JSON_BYTES = 32 << 20
MAX_JSON_DEPTH = 64
MAX_JSON_VALUES = 2_000_000
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def _check_bounds(data: bytes) -> None:
    """Refuse, before parsing, JSON whose size, nesting or number of values is beyond the
    bounds (a 60 MB file of empty objects would otherwise cost gigabytes of Python objects)."""
    if len(data) > MAX_JSON_BYTES:
        raise MalformedError(f"canonical JSON: {len(data)} bytes, over the {MAX_JSON_BYTES} limit")
    bare = np.frombuffer(_STRING.sub(b'""', data), dtype=np.uint8)
    opens = (bare == ord("[")) | (bare == ord("{"))
    closes = (bare == ord("]")) | (bare == ord("}"))
    depth = np.cumsum(opens.astype(np.int64) - closes.astype(np.int64))
    if depth.size and int(depth.max()) > MAX_JSON_DEPTH:
        raise MalformedError(f"canonical JSON: nested deeper than {MAX_JSON_DEPTH} levels")
    values = int(opens.sum()) + int((bare == ord(",")).sum())
    if values > MAX_JSON_VALUES:
        raise MalformedError(f"canonical JSON: more than {MAX_JSON_VALUES} values")


def parse_canonical_json(data: bytes) -> Any:
    """Parse ``data``, accepting only the exact bytes :func:`canonical_json` would produce
    (no floats, no duplicate keys, sorted keys, no whitespace, valid UTF-8), within
    :data:`MAX_JSON_BYTES`, :data:`MAX_JSON_DEPTH` and :data:`MAX_JSON_VALUES`."""
    _check_bounds(data)
    try:
        text = data.decode("utf-8")
        value = json.loads(
            text,
            object_pairs_hook=_unique_object,
            parse_float=_reject_float,
            parse_constant=_reject_constant,
        )
    except UnicodeDecodeError as exc:
        raise MalformedError("canonical JSON: not valid UTF-8") from exc
    except (json.JSONDecodeError, RecursionError) as exc:
        raise MalformedError(f"canonical JSON: not valid JSON ({exc})") from exc
    if canonical_json(value) != data:
        raise MalformedError("canonical JSON: bytes are not in canonical form")
    return value


def decimal_string(x: float) -> str:
    """A finite float64 as its shortest round-trip decimal (Python ``repr``), e.g. ``"0.125"``."""
    value = float(x)
    if not math.isfinite(value):
        raise MalformedError(f"decimal string: {value!r} is not finite")
    return repr(value)


def parse_decimal_string(text: Any, *, field: str) -> float:
    """Inverse of :func:`decimal_string`; rejects anything that is not its exact output."""
    if not isinstance(text, str):
        raise MalformedError(f"{field}: expected a decimal string, got {type(text).__name__}")
    try:
        value = float(text)
    except ValueError as exc:
        raise MalformedError(f"{field}: {text[:40]!r} is not a decimal number") from exc
    if not math.isfinite(value) or repr(value) != text:
        raise MalformedError(f"{field}: {text[:40]!r} is not a canonical decimal string")
    return value


def parse_hex(text: Any, *, field: str, length: int | None = None) -> bytes:
    """Lowercase hex to bytes; ``length`` (in bytes) is enforced when given."""
    if not isinstance(text, str) or not _HEX.fullmatch(text) or len(text) % 2:
        raise MalformedError(f"{field}: expected lowercase hex")
    raw = bytes.fromhex(text)
    if length is not None and len(raw) != length:
        raise MalformedError(f"{field}: expected {length} bytes, got {len(raw)}")
    return raw


def sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data`` as 64 lowercase hex characters."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes as lowercase hex, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    try:
        with Path(path).open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise FormatError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return digest.hexdigest()
