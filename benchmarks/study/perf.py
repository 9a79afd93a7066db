"""The performance rows of the other issues, gathered from ``benchmarks/results/*.json``.

Each benchmark script of the repository writes one JSON document there. A *timing record* is any
object in it with a ``median_s`` or ``seconds`` number; each becomes one row with the record's
other scalar fields as details, and the command that reproduces it (the document's ``command``
field when it has one, else ``python benchmarks/bench_<name>.py`` when that script exists). The
issue asks for four kinds of rows; a kind with no document yet is listed as "not yet recorded",
never filled in.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.study.common import read_json

__all__ = ["KINDS", "PerfRow", "perf_rows"]

# kind label -> file-name prefixes (without .json) that hold it
KINDS: Mapping[str, tuple[str, ...]] = {
    "patch time": ("patch",),
    "inference overhead": ("inference", "overhead"),
    "verify time": ("verify",),
    "MIA time": ("mia",),
    "proof artifacts": ("proofs",),
}


@dataclass(frozen=True)
class PerfRow:
    kind: str
    source: str
    what: str
    seconds: float | None
    details: str
    command: str


# the first of these a record holds is its time (bench_verify.py names its total explicitly)
_TIME_KEYS = ("median_s", "seconds", "verify_in_process_s")


def _seconds(record: Mapping[str, Any]) -> Any:
    return next((record[k] for k in _TIME_KEYS if isinstance(record.get(k), (int, float))), None)


def _records(doc: Any, path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    if isinstance(doc, Mapping):
        if _seconds(doc) is not None:
            yield path, doc
            return
        for key, value in doc.items():
            if key != "machine":
                yield from _records(value, f"{path}.{key}" if path else str(key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from _records(value, f"{path}[{i}]")


_MAX_DETAILS = 6


def _details(record: Mapping[str, Any]) -> str:
    """The record's spread and its first few short scalar fields (sizes, counts, targets)."""
    skip = {*_TIME_KEYS, "min_s", "max_s"}
    parts = [
        f"{k}={round(v, 4) if isinstance(v, float) else v}"
        for k, v in record.items()
        if k not in skip
        and not k.startswith("seconds_")
        and isinstance(v, (int, float, str, bool))
        and len(str(v)) < 40
    ][:_MAX_DETAILS]
    spread = ""
    if isinstance(record.get("min_s"), (int, float)) and isinstance(
        record.get("max_s"), (int, float)
    ):
        spread = f"range {record['min_s']:.4g}-{record['max_s']:.4g} s; "
    return spread + ", ".join(parts)


def _command(doc: Mapping[str, Any], stem: str, repo: Path) -> str:
    if isinstance(doc.get("command"), str):
        return str(doc["command"])
    name = str(doc.get("benchmark", stem))
    for candidate in (f"bench_{name}.py", f"bench_{stem}.py", f"bench_{stem.split('-')[0]}.py"):
        if (repo / "benchmarks" / candidate).is_file():
            return f"python benchmarks/{candidate}"
    return "(no command recorded)"


def _kind(stem: str) -> str:
    for kind, prefixes in KINDS.items():
        if any(stem.startswith(p) for p in prefixes):
            return kind
    return "other"


def perf_rows(results_root: Path, repo: Path, *, extra: Sequence[PerfRow] = ()) -> list[PerfRow]:
    """Rows from every ``*.json`` directly under ``results_root`` and the ``extra`` rows (the
    study's own), plus a "not yet recorded" row for every kind in :data:`KINDS` that has none."""
    rows: list[PerfRow] = list(extra)
    for path in sorted(results_root.glob("*.json")):
        doc = read_json(path)
        if not isinstance(doc, Mapping):
            continue
        command = _command(doc, path.stem, repo)
        machine = doc.get("machine")  # a dict, or a sentence in some older documents
        load = doc.get("load_average_1min") or (
            machine.get("loadavg_1m") if isinstance(machine, Mapping) else None
        )
        for what, record in _records(doc, ""):
            seconds = _seconds(record)
            details = _details(record)
            if load is not None:
                details = f"{details}; load {load}" if details else f"load {load}"
            rows.append(
                PerfRow(
                    kind=_kind(path.stem),
                    source=path.name,
                    what=what,
                    seconds=float(seconds) if isinstance(seconds, (int, float)) else None,
                    details=details,
                    command=command,
                )
            )
    have = {r.kind for r in rows}
    for kind in KINDS:
        if kind not in have:
            rows.append(PerfRow(kind, "-", "not yet recorded", None, "", "-"))
    order = [*KINDS, "other"]
    return sorted(rows, key=lambda r: (order.index(r.kind), r.source, r.what))
