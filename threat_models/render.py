"""The readable threat matrix: one row per adversary, one column per check, over all seeds.

Cell marks: ``X`` the check failed on every seed, ``x`` on some seeds, ``.`` it passed on every
seed, ``-`` it did not run (not applicable). A check in the adversary's ``caught_by`` list is
shown in brackets, ``[X]``: at least one bracketed check must be ``X`` or ``x`` on every seed for
the row to be caught. The honest row must show no ``X``/``x`` at all."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from threat_models.matrix import Matrix

__all__ = ["COLUMN_CODES", "render_document", "render_matrix"]

COLUMN_CODES: dict[str, str] = {
    "signature.certificate": "sgC",
    "signature.model": "sgM",
    "digest.model": "dgM",
    "digest.original": "dgO",
    "digest.patch": "dgP",
    "freshness": "frs",
    "commitment.openings": "cmO",
    "commitment.consistency": "cmC",
    "structure.original": "stO",
    "structure.rows": "stR",
    "structure.tail": "stT",
    "structure.patch": "stP",
    "claims.policy": "clP",
    "replay.claims": "rpl",
    "replay.batch": "rpB",
    "region.certificate": "crt",
    "replay.calibrated": "rpC",
    "region.probes": "prb",
    "class.suppression": "clS",
    "class.reference": "clR",
    "locality": "loc",
    "utility": "utl",
    "receipt.certificate": "rcC",
    "receipt.binding": "rcB",
    "receipt.claim": "rcL",
    "receipt.inclusion": "rcI",
    "receipt.replay": "rcR",
    "membership.inference": "mia",
    "membership.canaries": "can",
}


def _mark(rows: Sequence[Mapping[str, Any]], check: str) -> str:
    statuses = [r["statuses"].get(check, "absent") for r in rows]
    failed = sum(s == "fail" for s in statuses)
    if failed == len(statuses):
        return "X"
    if failed:
        return "x"
    if all(s == "pass" for s in statuses):
        return "."
    return "-"


def _verdict(rows: Sequence[Mapping[str, Any]]) -> str:
    good = sum(bool(r["ok"]) for r in rows)
    if rows[0]["threat"] is None:
        return f"passes {good}/{len(rows)}" + ("" if good == len(rows) else "  FALSE ALARM")
    built = [r for r in rows if r.get("built", True)]
    caught = sum(bool(r["ok"]) for r in built)
    missed = "" if caught == len(built) else "  MISSED"
    unbuilt = len(rows) - len(built)
    return f"caught {caught}/{len(built)}" + (f", not built {unbuilt}" if unbuilt else "") + missed


def render_matrix(matrix: Matrix) -> str:
    """The table, a legend of the column codes, and the overall result."""
    return render_document(matrix.to_json())


def render_document(doc: Mapping[str, Any]) -> str:
    """:func:`render_matrix` of a matrix JSON document (e.g. one merged from per-seed runs)."""
    checks = list(doc["checks"])
    rows = list(doc["rows"])
    names = list(dict.fromkeys(r["adversary"] for r in rows))
    codes = [COLUMN_CODES.get(c, c[:3]) for c in checks]
    name_w = max(len("adversary"), *(len(a) for a in names))
    header = f"{'#':>2}  {'adversary':<{name_w}}  " + " ".join(f"{c:^5}" for c in codes)
    lines = [header + "  result", "-" * (len(header) + 20)]
    for name in names:
        mine = [r for r in rows if r["adversary"] == name]
        number = "" if mine[0]["threat"] is None else str(mine[0]["threat"])
        cells = []
        for check in checks:
            mark = _mark(mine, check)
            cells.append(f"[{mark}]" if check in mine[0]["caught_by"] else f" {mark} ")
        lines.append(
            f"{number:>2}  {name:<{name_w}}  "
            + " ".join(f"{c:^5}" for c in cells)
            + f"  {_verdict(mine)}"
        )
    lines.append("-" * (len(header) + 20))
    skipped = doc.get("not_applicable") or {}
    mode = doc.get("scenario", {}).get("mode", "sample")
    arch = doc.get("scenario", {}).get("arch", "mlp")
    by_mode = {n: v for n, v in skipped.items() if mode not in v.get("modes", [mode])}
    by_arch = {n: v for n, v in skipped.items() if n not in by_mode}
    if by_mode:
        lines.append(
            f"not applicable to {mode} mode (counterpart in this mode): "
            + ", ".join(f"{n} ({v['counterpart'] or 'none'})" for n, v in by_mode.items())
        )
    if by_arch:
        lines.append(f"not applicable to a {arch} (built in input space): " + ", ".join(by_arch))
    legend = ", ".join(f"{code} {check}" for check, code in zip(checks, codes, strict=True))
    lines.append(f"columns: {legend}")
    lines.append(
        "marks: X failed on every seed, x on some, . passed, - not run; [ ] = the threat's "
        "caught_by checks"
    )
    seeds = ", ".join(str(s) for s in doc["seeds"])
    built = [r for r in rows if r["threat"] is not None and r.get("built", True)]
    total = len(built)
    caught = sum(bool(r["ok"]) for r in built)
    unbuilt = sum(1 for r in rows if not r.get("built", True))
    honest = [r for r in rows if r["threat"] is None]
    ok = bool(rows) and all(r["ok"] for r in rows)
    lines.append(
        f"{doc.get('setting', '?')}, seeds {seeds}: {caught}/{total} adversary runs caught"
        + (f" ({unbuilt} not built on their seed: see the rows' notes)" if unbuilt else "")
        + ", "
        f"honest owner passed {sum(bool(r['ok']) for r in honest)}/{len(honest)} -> "
        f"{'OK' if ok else 'NOT OK'}"
    )
    return "\n".join(lines)
