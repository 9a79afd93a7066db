"""The readable threat matrix: one row per adversary, one column per check, over all seeds.

Cell marks: ``X`` the check failed on every seed, ``x`` on some seeds, ``.`` it passed on every
seed, ``-`` it did not run (not applicable). A check in the adversary's ``caught_by`` list is
shown in brackets, ``[X]``: at least one bracketed check must be ``X`` or ``x`` on every seed for
the row to be caught. The honest row must show no ``X``/``x`` at all."""

from __future__ import annotations

from collections.abc import Sequence

from threat_models.matrix import ALL_CHECKS, Matrix, Row

__all__ = ["COLUMN_CODES", "render_matrix"]

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


def _mark(rows: Sequence[Row], check: str) -> str:
    statuses = [r.status(check) for r in rows]
    failed = sum(s == "fail" for s in statuses)
    if failed == len(statuses):
        return "X"
    if failed:
        return "x"
    if all(s == "pass" for s in statuses):
        return "."
    return "-"


def _verdict(rows: Sequence[Row]) -> str:
    good = sum(r.ok for r in rows)
    if rows[0].threat is None:
        return f"passes {good}/{len(rows)}" + ("" if good == len(rows) else "  FALSE ALARM")
    return f"caught {good}/{len(rows)}" + ("" if good == len(rows) else "  MISSED")


def render_matrix(matrix: Matrix) -> str:
    """The table, a legend of the column codes, and the overall result."""
    codes = [COLUMN_CODES.get(c, c[:3]) for c in ALL_CHECKS]
    name_w = max(len("adversary"), *(len(a) for a in matrix.adversaries))
    header = f"{'#':>2}  {'adversary':<{name_w}}  " + " ".join(f"{c:^5}" for c in codes)
    lines = [header + "  result", "-" * (len(header) + 20)]
    for name in matrix.adversaries:
        rows = matrix.rows_of(name)
        number = "" if rows[0].threat is None else str(rows[0].threat)
        cells = []
        for check in ALL_CHECKS:
            mark = _mark(rows, check)
            cells.append(f"[{mark}]" if check in rows[0].caught_by else f" {mark} ")
        lines.append(
            f"{number:>2}  {name:<{name_w}}  "
            + " ".join(f"{c:^5}" for c in cells)
            + f"  {_verdict(rows)}"
        )
    lines.append("-" * (len(header) + 20))
    skipped = matrix.not_applicable
    if skipped:
        lines.append(
            f"not applicable to {matrix.config.mode} mode (counterpart in this mode): "
            + ", ".join(f"{n} ({v['counterpart'] or 'none'})" for n, v in skipped.items())
        )
    legend = ", ".join(f"{code} {check}" for check, code in zip(ALL_CHECKS, codes, strict=True))
    lines.append(f"columns: {legend}")
    lines.append(
        "marks: X failed on every seed, x on some, . passed, - not run; [ ] = the threat's "
        "caught_by checks"
    )
    seeds = ", ".join(str(s) for s in matrix.seeds)
    total = sum(1 for r in matrix.rows if r.threat is not None)
    caught = sum(r.ok for r in matrix.rows if r.threat is not None)
    honest = [r for r in matrix.rows if r.threat is None]
    lines.append(
        f"{matrix.config.name}, seeds {seeds}: {caught}/{total} adversary runs caught, honest owner passed "
        f"{sum(r.ok for r in honest)}/{len(honest)} -> {'OK' if matrix.ok else 'NOT OK'}"
    )
    return "\n".join(lines)
