"""``python -m threat_models merge``: per-seed matrix documents of one setting become one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from threat_models.cli import cli
from threat_models.errors import ThreatModelError
from threat_models.matrix import MATRIX_TYPE, merge_documents


def _doc(seed: int, *, caught: bool = True, setting: str = "digits-mlp-class") -> dict[str, Any]:
    rows = [
        {
            "seed": seed,
            "adversary": "honest",
            "threat": None,
            "caught_by": [],
            "ok": True,
            "statuses": {"x": "pass"},
        },
        {
            "seed": seed,
            "adversary": "noop",
            "threat": 1,
            "caught_by": ["x"],
            "ok": caught,
            "statuses": {"x": "fail" if caught else "pass"},
        },
    ]
    return {
        "type": MATRIX_TYPE,
        "version": 1,
        "setting": setting,
        "scenario": {"setting": setting},
        "membership_policy": {},
        "checks": ["x"],
        "created": f"2026-01-0{seed + 1}T00:00:00Z",
        "seeds": [seed],
        "ok": caught,
        "not_applicable": {},
        "machine": {"cpu_seconds": 1.5},
        "rows": rows,
    }


def test_merge_recomputes_summary_and_ok() -> None:
    merged = merge_documents([_doc(0), _doc(1, caught=False)])
    assert merged["seeds"] == [0, 1] and len(merged["rows"]) == 4
    assert merged["summary"]["noop"] == {
        "threat": 1,
        "caught_by": ["x"],
        "seeds": 2,
        "ok": 1,
        "not_built": 0,
    }
    assert merged["ok"] is False and merged["machine"]["cpu_seconds"] == 3.0
    assert merged["created"] == "2026-01-02T00:00:00Z"


@pytest.mark.parametrize(
    ("docs", "message"),
    [
        ([_doc(0), _doc(0)], "share a seed"),
        ([_doc(0), _doc(1, setting="digits-mlp-sample")], "differ in 'setting'"),
        ([], "at least one"),
    ],
)
def test_merge_refuses(docs: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ThreatModelError, match=message):
        merge_documents(docs)


def test_merge_cli(tmp_path: Path) -> None:
    paths = []
    for seed in (0, 1):
        path = tmp_path / f"s{seed}.json"
        path.write_text(json.dumps(_doc(seed)))
        paths.append(str(path))
    out = tmp_path / "merged.json"
    result = CliRunner().invoke(cli, ["merge", *paths, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "2/2 adversary runs caught" in result.output and "[X]" in result.output
    assert json.loads(out.read_text())["seeds"] == [0, 1]
    bad = CliRunner().invoke(cli, ["merge", paths[0], paths[0], "--out", str(out)])
    assert bad.exit_code == 2 and "share a seed" in bad.output
