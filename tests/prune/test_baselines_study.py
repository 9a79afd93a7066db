"""The benchmark study's pure parts (benchmarks/study): forget sets, MIA data split, cell keys,
metrics, result rows, SVG output and the performance-row collector. The study itself is run by
``python -m benchmarks.study``, not by the test suite."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from scipy.special import rel_entr, softmax

from benchmarks.study.artifacts import forget_indices, mia_non_member_rows, mia_reference_rows
from benchmarks.study.common import StudyError
from benchmarks.study.evaluate import kl_divergence
from benchmarks.study.perf import KINDS, perf_rows
from benchmarks.study.plan import CONFIGS, Cell, Variant, cells_for
from benchmarks.study.svg import Point, grouped_bars, scatter
from benchmarks.study.tables import flat_row, group_rows

LABELS = np.repeat(np.arange(10, dtype=np.int64), 120)


@pytest.mark.parametrize(
    ("setting", "size"), [("random-100", 100), ("random-1pct", 12), ("class-5", 120)]
)
def test_forget_sets_are_seeded_and_sized(setting: str, size: int) -> None:
    a = forget_indices(setting, LABELS, 0)
    assert len(a) == size and len(np.unique(a)) == size
    assert np.array_equal(a, forget_indices(setting, LABELS, 0))
    if setting.startswith("class"):
        assert (LABELS[a] == 5).all()
    else:
        assert not np.array_equal(a, forget_indices(setting, LABELS, 1))


@pytest.mark.parametrize("setting", ["random-0", "random-5000", "class-11", "stripe-3"])
def test_impossible_settings_are_refused(setting: str) -> None:
    with pytest.raises(StudyError):
        forget_indices(setting, LABELS, 0)


def test_mia_reference_and_non_members_are_disjoint() -> None:
    y_test = np.repeat(np.arange(10, dtype=np.int64), 50)
    ref = mia_reference_rows(len(y_test), 0)
    for setting, forget_size in (("random-100", 100), ("class-5", 400)):
        non = mia_non_member_rows(setting, forget_size, y_test, 0)
        assert not set(ref) & set(non)
        assert len(non) > 0
        if setting == "class-5":
            assert (y_test[non] == 5).all()
        else:
            assert len(non) == 100


def test_cell_keys_are_stable_and_round_trip() -> None:
    cell = Cell(
        dataset="digits",
        arch="mlp",
        setting="random-100",
        variant=Variant(label="x", method="neggrad", params=(("lr", 0.1), ("epochs", 3))),
    )
    again = Cell.from_json(json.loads(json.dumps(cell.to_json())))
    assert again.key() == cell.key()
    other = Cell(dataset="digits", arch="mlp", setting="random-100", variant=cell.variant, seed=1)
    assert other.key() != cell.key()
    for name in CONFIGS:
        keys = [c.key() for c in cells_for(name)]
        assert len(keys) == len(set(keys)), f"config {name} repeats a cell"
    assert {c.key() for c in cells_for("quick")} <= {c.key() for c in cells_for("default")}


def test_kl_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 4)), rng.normal(size=(7, 4))
    expected = rel_entr(softmax(a, axis=1), softmax(b, axis=1)).sum(axis=1).mean()
    assert kl_divergence(a, b) == pytest.approx(expected, rel=1e-10)
    assert kl_divergence(a, a) == pytest.approx(0.0, abs=1e-12)


def _doc(method: str, seed: int, forget_after: float) -> dict[str, object]:
    cell = Cell(
        dataset="digits",
        arch="mlp",
        setting="random-100",
        variant=Variant(label=method, method=method),
        seed=seed,
    )
    acc = {"forget": forget_after, "retain": 0.99, "test": 0.95}
    return {
        "key": cell.key(),
        "cell": cell.to_json(),
        "status": "ok",
        "forget_size": 100,
        "accuracy": {"before": {"forget": 1.0, "retain": 0.99, "test": 0.96}, "after": acc},
        "kl_to_retrained": {"forget": 0.1, "test": 0.01},
        "mia": None,
        "seconds": 2.0,
        "model_bytes": 10,
        "size_ratio": 1.0,
        "facts": {"retrained_shards": 3},
    }


def test_rows_flatten_and_average_over_seeds() -> None:
    row = flat_row(_doc("sisa", 0, 0.5))
    assert row["forget_acc_after"] == 0.5 and row["rmia_auc"] is None
    assert row["facts"] == "retrained_shards=3"
    groups = group_rows(
        [_doc("sisa", 0, 0.5), _doc("sisa", 1, 0.7), _doc("retrain", 0, 0.9)], ["retrain", "sisa"]
    )
    assert [g.method for g in groups] == ["retrain", "sisa"]
    assert groups[1].mean("forget_acc_after") == pytest.approx(0.6)
    failed = {"key": "k", "cell": _doc("sisa", 2, 0)["cell"], "status": "failed", "error": "boom"}
    assert flat_row(failed)["error"] == "boom"


def test_svg_charts_are_well_formed() -> None:
    s = scatter(
        [Point(1, 2, "a"), Point(3, -1, "b")],
        title="t <&>",
        x_label="x",
        y_label="y",
        series_order=["a", "b"],
    )
    b = grouped_bars(
        ["g1", "g2"], {"a": [1.0, None], "b": [0.01, 100.0]}, title="t", y_label="s", log=True
    )
    for text in (s, b):
        root = ET.fromstring(text)
        assert root.tag.endswith("svg")
    assert s.count("<circle") == 2
    assert b.count("<rect") >= 3


def test_perf_rows_read_timing_records_and_flag_missing_kinds(tmp_path: Path) -> None:
    (tmp_path / "verify.json").write_text(
        json.dumps(
            {
                "benchmark": "verify",
                "command": "python x.py",
                "one": {"median_s": 1.5, "points": 10},
            }
        )
    )
    (tmp_path / "broken-but-not-json.txt").write_text("ignored")
    rows = perf_rows(tmp_path, tmp_path)
    verify = [r for r in rows if r.kind == "verify time"]
    assert len(verify) == 1 and verify[0].seconds == 1.5 and verify[0].command == "python x.py"
    assert "points=10" in verify[0].details
    missing = {r.kind for r in rows if r.what == "not yet recorded"}
    assert missing == set(KINDS) - {"verify time"}


@pytest.mark.parametrize(("backend", "jobs"), [("local", 1), ("local", 2)])
def test_runner_records_each_cell_once_on_any_backend(
    backend: str, jobs: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cells go through the execution backend's map: every cell gets exactly one result file,
    a failing cell a ``failed`` record with its one-line reason (the others still run)."""
    from benchmarks.study import runner
    from benchmarks.study.common import StudyPaths, read_json, write_json

    cells = [c for c in cells_for("quick") if c.dataset == "digits"][:3]
    paths = StudyPaths(work=tmp_path / "work", results=tmp_path / "results", docs=tmp_path)
    monkeypatch.setattr(runner, "needed_artifacts", lambda cell: [])

    def fake_python(args: list[str], timeout_s: float) -> tuple[bool, str]:
        spec = json.loads(args[args.index("--spec") + 1])
        if spec == cells[1].to_json():
            return False, "ValueError: boom"
        write_json(Path(args[args.index("--out") + 1]), {"status": "ok", "cell": spec})
        return True, ""

    monkeypatch.setattr(runner, "_python", fake_python)
    options = runner.RunOptions(backend=backend, jobs=jobs)
    counts = runner.run_cells(cells, paths, options, log=lambda line: None)
    assert counts == {"ran": 2, "skipped": 0, "failed": 1}
    docs = [read_json(paths.cells / f"{c.key()}.json") for c in cells]
    assert [d["status"] for d in docs] == ["ok", "failed", "ok"]
    assert docs[1]["error"] == "ValueError: boom"
    again = runner.run_cells(cells, paths, options, log=lambda line: None)
    assert again == {"ran": 0, "skipped": 3, "failed": 0}
