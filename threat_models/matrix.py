"""The threat matrix: every adversary (and the honest owner) against the auditor, over seeds.

For each seed one :class:`~threat_models.scenario.Scenario` is built; every adversary builds its
proof from it; the :class:`~threat_models.auditor.Auditor` runs every check. A row is *caught*
when at least one of its threat's ``caught_by`` checks failed; the honest row must fail nothing
(no false alarms). :attr:`Matrix.ok` is the conjunction over all rows: it is the exit status of
``python -m threat_models matrix``.

Adversaries apply to the deletion modes they name (:attr:`Adversary.modes`): the honest proof of
a sample deletion and of a class suppression are different objects, so a cheat on one has a
counterpart on the other for the same root cause. Those that do not apply to the scenario's mode
are never silently skipped: the document lists each under ``not_applicable`` with its threat
and its counterpart in this mode.

JSON document (``type`` :data:`MATRIX_TYPE`, ``version`` 1): the scenario configuration (its
``setting`` names data set, architecture and mode), the membership policy, the check names, one
entry per (seed, adversary) with every check's status, the failed checks' one-line details,
whether it was caught, timings, the machine's load average, and the adversaries not applicable
to the mode.

An adversary whose cheat cannot be built on a seed's scenario (its
:class:`~threat_models.errors.ScenarioError`, e.g. no requester's region is wide enough for a
decoy, after trying several) is recorded as a row with ``built: false`` and the reason in
``notes``: no dishonest artifact exists on that seed, so there is nothing to catch and the row
counts neither as caught nor as missed; the rest of the matrix still runs. The summary counts
such rows per adversary (``not_built``), so an adversary that never builds stays visible."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from audit.receipt import RECEIPT_CHECKS
from audit.verify import CHECKS, CheckOutcome
from threat_models.adversaries import ADVERSARIES, HONEST, make_adversary
from threat_models.auditor import MEMBERSHIP_CHECK, Auditor, MembershipPolicy
from threat_models.errors import ScenarioError, ThreatModelError
from threat_models.scenario import ScenarioConfig, build_scenario

__all__ = [
    "ALL_CHECKS",
    "MATRIX_TYPE",
    "MATRIX_VERSION",
    "Matrix",
    "Row",
    "merge_documents",
    "run_matrix",
]

MATRIX_TYPE = "https://prune-audit.dev/threat-matrix/v1"
MATRIX_VERSION = 1
ALL_CHECKS: tuple[str, ...] = tuple(dict.fromkeys((*CHECKS, *RECEIPT_CHECKS, MEMBERSHIP_CHECK)))
_MEMBERSHIP_CHECKS = frozenset({MEMBERSHIP_CHECK, "membership.inference"})


@dataclass(frozen=True)
class Row:
    """One adversary on one seed."""

    seed: int
    adversary: str
    threat: int | None
    caught_by: tuple[str, ...]
    outcomes: tuple[CheckOutcome, ...]
    notes: str
    seconds: float
    built: bool = True

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outcomes if o.status == "fail")

    @property
    def caught(self) -> bool:
        return bool(set(self.failed) & set(self.caught_by))

    @property
    def ok(self) -> bool:
        """Honest: nothing failed and something passed. Adversary: caught, or not built (no
        dishonest artifact to catch on this seed; reported as such)."""
        if not self.built:
            return True
        if self.threat is None:
            return not self.failed and any(o.status == "pass" for o in self.outcomes)
        return self.caught

    def status(self, check: str) -> str:
        for o in self.outcomes:
            if o.name == check:
                return o.status
        return "absent"

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "adversary": self.adversary,
            "threat": self.threat,
            "caught_by": list(self.caught_by),
            "built": self.built,
            "caught": self.caught,
            "ok": self.ok,
            "failed": list(self.failed),
            "statuses": {o.name: o.status for o in self.outcomes},
            "details": {o.name: o.detail for o in self.outcomes if o.status == "fail"},
            "evidence": {
                o.name: dict(o.evidence) for o in self.outcomes if o.name in _MEMBERSHIP_CHECKS
            },
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class Matrix:
    seeds: tuple[int, ...]
    rows: tuple[Row, ...]
    config: ScenarioConfig
    membership: MembershipPolicy
    created: str
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    loadavg: tuple[float, ...] = ()

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.ok for r in self.rows)

    @property
    def adversaries(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.adversary for r in self.rows))

    def rows_of(self, adversary: str) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if r.adversary == adversary)

    @property
    def not_applicable(self) -> dict[str, dict[str, Any]]:
        """Registered adversaries that do not apply to this mode, with their counterpart."""
        out: dict[str, dict[str, Any]] = {}
        for name, cls in ADVERSARIES.items():
            if not _applies(cls, self.config):
                out[name] = {
                    "threat": None if cls.threat is None else cls.threat.number,
                    "modes": sorted(cls.modes),
                    "architectures": sorted(cls.architectures),
                    "counterpart": cls.counterpart,
                }
        return out

    def to_json(self) -> dict[str, Any]:
        policy = dataclasses.asdict(self.membership)
        return {
            "type": MATRIX_TYPE,
            "version": MATRIX_VERSION,
            "created": self.created,
            "ok": self.ok,
            "seeds": list(self.seeds),
            "setting": self.config.name,
            "scenario": self.config.to_json(),
            "not_applicable": self.not_applicable,
            "machine": {
                "cpu_seconds": round(self.cpu_seconds, 1),
                "wall_seconds": round(self.wall_seconds, 1),
                "loadavg_end": [round(v, 2) for v in self.loadavg],
                "cpus": os.cpu_count(),
            },
            "membership_policy": policy,
            "checks": list(ALL_CHECKS),
            "summary": {
                name: {
                    "threat": self.rows_of(name)[0].threat,
                    "caught_by": list(self.rows_of(name)[0].caught_by),
                    "seeds": len(self.rows_of(name)),
                    "ok": sum(r.ok for r in self.rows_of(name)),
                    "not_built": sum(not r.built for r in self.rows_of(name)),
                }
                for name in self.adversaries
            },
            "rows": [r.to_json() for r in self.rows],
        }


def _applies(cls: Any, config: ScenarioConfig) -> bool:
    """Whether an adversary class builds on the scenario's mode and architecture."""
    return config.mode in cls.modes and config.arch in cls.architectures


def run_matrix(
    *,
    seeds: Sequence[int],
    root: Path,
    now: datetime,
    adversaries: Sequence[str] | None = None,
    config: ScenarioConfig | None = None,
    membership: MembershipPolicy | None = None,
    on_row: Callable[[Row], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Matrix:
    """Build a scenario per seed under ``root`` and audit every adversary's proof that applies
    to the scenario's mode. The honest owner always runs (first), whatever ``adversaries``
    names; naming one that does not apply to the mode is an error."""
    if not seeds:
        raise ThreatModelError("give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ThreatModelError("seeds must be distinct")
    config = config or ScenarioConfig()
    applicable = [n for n, cls in ADVERSARIES.items() if _applies(cls, config)]
    names = applicable if adversaries is None else [HONEST, *adversaries]
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in ADVERSARIES]
    if unknown:
        raise ThreatModelError(f"unknown adversary {unknown[0]!r}; known: {', '.join(ADVERSARIES)}")
    other = [n for n in names if n not in applicable]
    if other:
        cls = ADVERSARIES[other[0]]
        if config.arch not in cls.architectures:
            raise ThreatModelError(
                f"adversary {other[0]!r} does not apply to a {config.arch} (it builds on: "
                f"{', '.join(sorted(cls.architectures))})"
            )
        raise ThreatModelError(
            f"adversary {other[0]!r} does not apply to {config.mode} mode (its counterpart: "
            f"{cls.counterpart})"
        )
    membership = membership or MembershipPolicy()
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    rows: list[Row] = []
    for seed in seeds:
        scenario = build_scenario(
            root / f"seed-{seed}" / "scenario", seed=seed, now=now, config=config
        )
        auditor = Auditor(scenario, membership=membership, seed=seed)
        for name in names:
            adversary = make_adversary(name)
            start = clock()
            outcomes: tuple[CheckOutcome, ...] = ()
            try:
                proof = adversary.build(scenario, root / f"seed-{seed}" / name)
            except ScenarioError as error:
                if adversary.threat is None:
                    raise  # the honest owner always builds
                notes, built = f"not built: {error}", False
            else:
                outcomes, notes, built = auditor.audit(proof), proof.notes, True
            row = Row(
                seed=seed,
                adversary=name,
                threat=None if adversary.threat is None else adversary.threat.number,
                caught_by=adversary.caught_by,
                outcomes=outcomes,
                notes=notes,
                seconds=clock() - start,
                built=built,
            )
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return Matrix(
        seeds=tuple(seeds),
        rows=tuple(rows),
        config=config,
        membership=membership,
        created=now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        cpu_seconds=time.process_time() - cpu_start,
        wall_seconds=time.perf_counter() - wall_start,
        loadavg=tuple(os.getloadavg()),
    )


def merge_documents(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One matrix document from runs of the same setting on disjoint seeds (e.g. one process
    per seed): rows concatenated in the given order, summary and ``ok`` recomputed from the
    rows, machine figures kept per run. Refuses documents of another type, version, setting,
    scenario, membership policy or check list, and overlapping seeds."""
    if not docs:
        raise ThreatModelError("give at least one matrix document to merge")
    first = docs[0]
    same = ("type", "version", "setting", "scenario", "membership_policy", "checks")
    for doc in docs:
        if doc.get("type") != MATRIX_TYPE or doc.get("version") != MATRIX_VERSION:
            raise ThreatModelError("not a threat-matrix document of this version")
        for key in same:
            if doc.get(key) != first.get(key):
                raise ThreatModelError(f"documents differ in {key!r}: only one setting merges")
    seeds = [s for doc in docs for s in doc["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise ThreatModelError("documents share a seed")
    rows = [r for doc in docs for r in doc["rows"]]
    names = list(dict.fromkeys(r["adversary"] for r in rows))
    summary = {}
    for name in names:
        mine = [r for r in rows if r["adversary"] == name]
        summary[name] = {
            "threat": mine[0]["threat"],
            "caught_by": mine[0]["caught_by"],
            "seeds": len(mine),
            "ok": sum(bool(r["ok"]) for r in mine),
            "not_built": sum(not r.get("built", True) for r in mine),
        }
    return {
        **{key: first[key] for key in same},
        "created": max(doc["created"] for doc in docs),
        "seeds": seeds,
        "ok": bool(rows) and all(r["ok"] for r in rows),
        "not_applicable": first.get("not_applicable", {}),
        "machine": {
            "cpu_seconds": round(sum(doc["machine"]["cpu_seconds"] for doc in docs), 1),
            "runs": [doc["machine"] for doc in docs],
        },
        "summary": summary,
        "rows": rows,
    }
