"""Recorded cells -> flat rows (the CSV) and aggregated rows (the document's tables).

A row is one cell's numbers under stable column names; cells of the same
``(dataset, arch, setting, variant)`` with several seeds are aggregated by the mean (and the
seed count is shown). Failed cells keep their one-line error so the tables show every gap.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.study.common import read_json
from benchmarks.study.evaluate import INFERENCE_METHOD
from benchmarks.study.plan import CONFIGS, HARNESS_VERSION, cells_for

__all__ = ["COLUMNS", "Group", "flat_row", "group_rows", "load_cells"]

COLUMNS = (
    "dataset",
    "arch",
    "setting",
    "method",
    "seed",
    "status",
    "error",
    "forget_size",
    "forget_acc_before",
    "forget_acc_after",
    "retain_acc_before",
    "retain_acc_after",
    "test_acc_before",
    "test_acc_after",
    "kl_forget",
    "kl_test",
    "rmia_auc",
    "rmia_auc_low",
    "rmia_auc_high",
    "rmia_tpr_1pct",
    "rmia_tpr_01pct",
    "rmia_reverse_tpr_1pct",
    "lira_auc",
    "lira_tpr_1pct",
    "lira_tpr_01pct",
    "mia_members",
    "mia_non_members",
    "seconds",
    "prepare_seconds",
    "reference_retrain_seconds",
    "peak_rss_before_mb",
    "peak_rss_after_mb",
    "model_bytes",
    "size_ratio",
    "inference_ratio",
    "threads",
    "loadavg_1m",
    "facts",
)


def load_cells(results: Path) -> list[dict[str, Any]]:
    """Every recorded cell of the current harness version that belongs to a config (results of
    cells since dropped from every config, or of an older harness, are ignored)."""
    planned = {c.key() for name in CONFIGS for c in cells_for(name)}
    docs = [read_json(p) for p in sorted((results / "cells").glob("*.json"))]
    return [d for d in docs if d.get("harness") == HARNESS_VERSION and d.get("key") in planned]


def _get(doc: Mapping[str, Any], *path: str) -> Any:
    cur: Any = doc
    for key in path:
        if not isinstance(cur, Mapping) or key not in cur:
            return None
        cur = cur[key]
    return cur


def flat_row(doc: Mapping[str, Any]) -> dict[str, Any]:
    cell = doc["cell"]
    row: dict[str, Any] = {
        "dataset": cell["dataset"],
        "arch": cell["arch"],
        "setting": cell["setting"],
        "method": cell["variant"]["label"],
        "seed": cell["seed"],
        "status": doc["status"],
        "error": doc.get("error", ""),
    }
    if doc["status"] != "ok":
        return row
    mia = doc.get("mia") or {}
    row.update(
        {
            "forget_size": doc["forget_size"],
            "forget_acc_before": _get(doc, "accuracy", "before", "forget"),
            "forget_acc_after": _get(doc, "accuracy", "after", "forget"),
            "retain_acc_before": _get(doc, "accuracy", "before", "retain"),
            "retain_acc_after": _get(doc, "accuracy", "after", "retain"),
            "test_acc_before": _get(doc, "accuracy", "before", "test"),
            "test_acc_after": _get(doc, "accuracy", "after", "test"),
            "kl_forget": _get(doc, "kl_to_retrained", "forget"),
            "kl_test": _get(doc, "kl_to_retrained", "test"),
            "rmia_auc": _get(mia, "rmia", "auc", "value"),
            "rmia_auc_low": _get(mia, "rmia", "auc", "low"),
            "rmia_auc_high": _get(mia, "rmia", "auc", "high"),
            "rmia_tpr_1pct": _get(mia, "rmia", "tpr_at_1pct", "value"),
            "rmia_tpr_01pct": _get(mia, "rmia", "tpr_at_0.1pct", "value"),
            "rmia_reverse_tpr_1pct": _get(mia, "rmia", "reverse_tpr_at_1pct", "value"),
            "lira_auc": _get(mia, "lira", "auc", "value"),
            "lira_tpr_1pct": _get(mia, "lira", "tpr_at_1pct", "value"),
            "lira_tpr_01pct": _get(mia, "lira", "tpr_at_0.1pct", "value"),
            "mia_members": mia.get("members"),
            "mia_non_members": mia.get("non_members"),
            "seconds": doc["seconds"],
            "prepare_seconds": doc.get("prepare_seconds"),
            "reference_retrain_seconds": doc.get("reference_retrain_seconds"),
            "peak_rss_before_mb": _get(doc, "memory", "peak_rss_before_unlearn_mb"),
            "peak_rss_after_mb": _get(doc, "memory", "peak_rss_after_unlearn_mb"),
            "model_bytes": doc["model_bytes"],
            "size_ratio": doc["size_ratio"],
            "inference_ratio": _get(doc, "inference", "ratio")
            if _get(doc, "inference", "method") == INFERENCE_METHOD
            else None,
            "threads": doc.get("threads"),
            "loadavg_1m": _get(doc, "machine", "loadavg_1m"),
            "facts": ";".join(f"{k}={v}" for k, v in sorted((doc.get("facts") or {}).items())),
        }
    )
    return row


@dataclass(frozen=True)
class Group:
    """The cells of one ``(dataset, arch, setting, method)`` (one per seed)."""

    dataset: str
    arch: str
    setting: str
    method: str
    rows: tuple[dict[str, Any], ...]
    docs: tuple[Mapping[str, Any], ...]

    @property
    def ok(self) -> tuple[dict[str, Any], ...]:
        return tuple(r for r in self.rows if r["status"] == "ok")

    @property
    def error(self) -> str:
        failed = [r["error"] for r in self.rows if r["status"] != "ok"]
        return failed[0] if failed else ""

    def mean(self, column: str) -> float | None:
        values = [float(r[column]) for r in self.ok if r.get(column) is not None]
        return statistics.fmean(values) if values else None

    def fact(self, name: str) -> Any:
        for doc in self.docs:
            facts = doc.get("facts") or {}
            if name in facts:
                return facts[name]
        return None


def group_rows(docs: Iterable[Mapping[str, Any]], order: Sequence[str]) -> list[Group]:
    """Groups sorted by dataset, arch, setting and the method order of the plan."""
    by: dict[tuple[str, str, str, str], list[Mapping[str, Any]]] = {}
    for doc in docs:
        c = doc["cell"]
        by.setdefault((c["dataset"], c["arch"], c["setting"], c["variant"]["label"]), []).append(
            doc
        )
    rank = {m: i for i, m in enumerate(order)}
    keys = sorted(
        by, key=lambda k: (k[0], k[1], _setting_rank(k[2]), rank.get(k[3], len(rank)), k[3])
    )
    return [Group(*k, rows=tuple(flat_row(d) for d in by[k]), docs=tuple(by[k])) for k in keys]


def _setting_rank(setting: str) -> tuple[int, float]:
    kind, _, arg = setting.partition("-")
    if kind == "random":
        return (0, float(arg[:-3]) * 1e6 if arg.endswith("pct") else float(arg))
    return (1, 0.0)
