"""The typed threat model is consistent with itself, with the executable adversaries, with the
auditor's real check names, and with the readable document docs/THREAT_MODEL.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from threat_models.adversaries import ADVERSARIES, HONEST, make_adversary
from threat_models.matrix import ALL_CHECKS
from threat_models.model import ACTORS, PRIVACY_RISKS, THREATS, ActorRole, threat

DOC = Path(__file__).resolve().parents[2] / "docs" / "THREAT_MODEL.md"
ROW = re.compile(r"^\|\s*(\d+)\s*\|(.*)\|\s*$")


def _doc_rows() -> dict[int, tuple[str, set[str], set[str]]]:
    """``number -> (key, adversaries, checks)`` from the threats table of the document."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Threats and the checks that catch them", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = ROW.match(line)
        if not match:
            continue
        cells = [c.strip() for c in match.group(2).split("|")]
        key, adversaries, checks = cells[0], cells[-2], cells[-1]
        rows[int(match.group(1))] = (
            key,
            set(re.findall(r"`([^`]+)`", adversaries)),
            set(re.findall(r"`([^`]+)`", checks)),
        )
    return rows


def test_threats_are_numbered_and_keyed_uniquely() -> None:
    numbers = [t.number for t in THREATS]
    assert numbers == sorted(set(numbers)) and numbers[0] == 1  # increasing (11 is a risk)
    assert len({t.key for t in THREATS}) == len(THREATS)
    assert {r.number for r in PRIVACY_RISKS}.isdisjoint(t.number for t in THREATS)
    assert {a.role for a in ACTORS} == set(ActorRole)


def test_every_adversary_is_registered_and_every_registered_one_has_a_threat() -> None:
    named = [name for t in THREATS for name in t.adversaries]
    assert len(named) == len(set(named))
    assert set(named) == set(ADVERSARIES) - {HONEST}
    for t in THREATS:
        for name in t.adversaries:
            assert make_adversary(name).threat == t
    assert make_adversary(HONEST).threat is None


def test_caught_by_names_real_checks() -> None:
    for t in THREATS:
        assert t.caught_by, t.key
        unknown = set(t.caught_by) - set(ALL_CHECKS)
        assert not unknown, f"threat {t.key} names unknown checks {unknown}"


def test_document_lists_the_same_threats_adversaries_and_checks() -> None:
    rows = _doc_rows()
    assert sorted(rows) == [t.number for t in THREATS]
    for t in THREATS:
        key, adversaries, checks = rows[t.number]
        assert key == t.title.lower() or key == t.key, (key, t.key)
        assert adversaries == set(t.adversaries), t.key
        assert checks == set(t.caught_by), t.key


def test_document_names_the_privacy_risks() -> None:
    text = DOC.read_text(encoding="utf-8")
    for risk in PRIVACY_RISKS:
        assert f"threat {risk.number}" in text.lower()
        assert risk.title.lower() in text.lower()


def test_lookup() -> None:
    assert threat("rollback").number == 10
    with pytest.raises(KeyError, match="known"):
        threat("nope")
    with pytest.raises(KeyError, match="known"):
        make_adversary("nope")
