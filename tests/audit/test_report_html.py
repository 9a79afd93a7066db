from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from audit.report._html import render_html
from audit.report._svg import Bars, Curve, bar_chart, roc_chart


def _doc(**overrides: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "name": "demo <script>",
        "created": "2026-01-01T00:00:00Z",
        "verdict": "failed",
        "verification": {
            "checks": [
                {
                    "name": "replay.claims",
                    "status": "fail",
                    "detail": "3 of 10 <b>",
                    "evidence": {"failed": 3},
                },
                {"name": "locality", "status": "pass", "detail": "ok", "evidence": {}},
            ]
        },
        "coverage": {"committed": 10, "opened": 10, "replayed": 10, "probed": 4},
        "per_class": {
            "classes": [0, 1],
            "counts": [5, 6],
            "original": [0.9, 0.8],
            "patched": [0.85, 0.8],
        },
        "mia": {
            "results": [
                {
                    "label": "rmia: forget vs non-members",
                    "auc": 0.5,
                    "auc_ci": [0.4, 0.6],
                    "tpr_at_1pct_fpr": 0.01,
                    "tpr_at_1pct_fpr_ci": [0.0, 0.05],
                    "tpr_at_01pct_fpr": 0.0,
                    "advantage": 0.1,
                    "roc": {"fpr": [0.0, 0.5, 1.0], "tpr": [0.0, 0.5, 1.0]},
                }
            ],
            "settings": {"attack": "rmia"},
        },
        "threats": [
            {
                "number": 1,
                "title": "No-op",
                "checks": ["replay.claims"],
                "covered": True,
                "why": "ran",
            }
        ],
        "compliance": {"requested": "r", "verified": "v", "residual_risks": ["x"]},
        "reproducibility": {"versions": {"prune-audit": "0.1.0"}, "seed": 0},
    }
    doc.update(overrides)
    return doc


def test_page_is_self_contained_and_escaped() -> None:
    page = render_html(_doc())
    assert "<script" not in page.replace("&lt;script", "")
    assert "demo &lt;script&gt;" in page
    assert "3 of 10 &lt;b&gt;" in page
    # no external resources: no src= or href= pointing anywhere, no @import
    assert not re.search(r"\b(src|href)\s*=", page)
    assert "@import" not in page
    assert page.count("<svg") == 2  # per-class bars + ROC


def test_missing_sections_are_stated_not_hidden() -> None:
    page = render_html(_doc(mia=None, per_class=None))
    assert "Membership inference was not run" in page
    assert "Per-class accuracy not computed" in page


def test_svg_charts_are_well_formed_xml() -> None:
    roc = roc_chart(
        [Curve("a", [0.0, 1e-3, 1.0], [0.0, 0.1, 1.0], [0.0, 0.05, 1.0], [0.0, 0.2, 1.0])],
        title="t",
    )
    bars = bar_chart(["0", "1"], [Bars("x", [0.2, 1.5])], title="b & c")
    for svg in (roc, bars):
        ET.fromstring(svg)
    with pytest.raises(ValueError):
        bar_chart([], [], title="empty")
