"""An adversary whose cheat cannot be built on a seed is a row of its own (``built: false``, the
reason in its notes), not the end of the matrix run; adversaries that need a suitable requester
try the next one before giving up. The scenario and the auditor are stand-ins here: these tests
pin down the matrix's bookkeeping, the real runs are in ``test_matrix.py``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from audit.verify import CheckOutcome
from threat_models.adversaries import HONEST, make_adversary
from threat_models.adversaries._base import REQUESTERS_TRIED, first_requester
from threat_models.errors import ScenarioError
from threat_models.matrix import run_matrix
from threat_models.render import render_document

NARROW = "shared_region"
OTHER = "noop"


class _Proof:
    notes = "built"


class _Auditor:
    """Fails ``structure.patch`` for every dishonest proof, passes the honest one."""

    def __init__(self, scenario: Any, **_: Any) -> None:
        pass

    def audit(self, proof: Any) -> tuple[CheckOutcome, ...]:
        status = "pass" if proof.honest else "fail"
        return (
            CheckOutcome("structure.patch", status, "stand-in"),
            CheckOutcome("replay.forget", status, "stand-in"),
        )


def _stand_ins(monkeypatch: pytest.MonkeyPatch, *, honest_fails: bool = False) -> None:
    monkeypatch.setattr("threat_models.matrix.build_scenario", lambda *a, **k: object())
    monkeypatch.setattr("threat_models.matrix.Auditor", _Auditor)

    def make(name: str) -> Any:
        adversary = make_adversary(name)

        def build(scenario: Any, out: Path) -> Any:
            if name == NARROW or (honest_fails and name == HONEST):
                raise ScenarioError("shared region: none of 3 requesters fits (too narrow)")
            proof = _Proof()
            proof.honest = name == HONEST  # type: ignore[attr-defined]
            return proof

        object.__setattr__(adversary, "build", build)
        return adversary

    monkeypatch.setattr("threat_models.matrix.make_adversary", make)


def _run(tmp_path: Path) -> Any:
    return run_matrix(
        seeds=[0, 1],
        root=tmp_path,
        now=datetime(2026, 12, 3, tzinfo=UTC),
        adversaries=[NARROW, OTHER],
    )


def test_an_unbuildable_adversary_is_recorded_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stand_ins(monkeypatch)
    matrix = _run(tmp_path)
    doc = matrix.to_json()
    assert [r["adversary"] for r in doc["rows"]] == [HONEST, NARROW, OTHER] * 2
    narrow = [r for r in doc["rows"] if r["adversary"] == NARROW]
    assert all(r["built"] is False and r["caught"] is False for r in narrow)
    assert all(r["notes"].startswith("not built: shared region: none of") for r in narrow)
    assert all(r["statuses"] == {} and r["failed"] == [] for r in narrow)
    assert doc["summary"][NARROW]["not_built"] == 2
    assert doc["summary"][OTHER] == {
        **doc["summary"][OTHER],
        "not_built": 0,
        "ok": 2,
    }
    other = [r for r in doc["rows"] if r["adversary"] == OTHER]
    assert all(r["built"] and r["caught"] for r in other)
    assert matrix.ok
    text = render_document(doc)
    assert "caught 0/0, not built 2" in text
    assert "caught 2/2" in text
    assert "(2 not built on their seed: see the rows' notes)" in text


def test_an_unbuildable_honest_owner_stops_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stand_ins(monkeypatch, honest_fails=True)
    with pytest.raises(ScenarioError, match="none of 3 requesters"):
        _run(tmp_path)


def test_first_requester_moves_on_to_the_next_requester() -> None:
    tried: list[int] = []

    def attempt(pick: int) -> Any:
        tried.append(pick)
        if pick < 3:
            raise ScenarioError(f"decoy: region {pick} is too narrow")
        return f"proof on {pick}"

    assert first_requester([1, 2, 3, 4], attempt, "decoy") == "proof on 3"
    assert tried == [1, 2, 3]


def test_first_requester_gives_up_with_the_last_reason() -> None:
    def attempt(pick: int) -> Any:
        raise ScenarioError(f"decoy: region {pick} is too narrow")

    many = list(range(REQUESTERS_TRIED + 5))
    with pytest.raises(ScenarioError) as error:
        first_requester(many, attempt, "decoy")
    last = REQUESTERS_TRIED - 1
    assert str(error.value) == (
        f"decoy: none of {REQUESTERS_TRIED} requesters fits "
        f"(last: decoy: region {last} is too narrow)"
    )
    with pytest.raises(ScenarioError, match="decoy: no requester to build on"):
        first_requester([], attempt, "decoy")
