"""Render a report document (``report.json``, schema ``https://prune-audit.dev/report/v1``) as one
self-contained HTML page: inline CSS, inline SVG charts, no scripts, no external resources, so it
opens offline and can be filed as is. Everything interpolated is HTML-escaped."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from audit.report._svg import Bars, Curve, bar_chart, roc_chart

__all__ = ["render_html"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:64rem;
color:#1a1a1a;line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;border-bottom:1px solid #ddd;
padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;width:100%;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.verdict{display:inline-block;padding:.4rem .9rem;border-radius:.3rem;font-weight:700;
font-size:1.1rem;color:#fff}
.verified{background:#1b7f3b}.failed{background:#b3261e}
.pass{color:#1b7f3b;font-weight:600}.fail{color:#b3261e;font-weight:600}
.not-run{color:#777}code{font-size:.85rem;word-break:break-all}td>code{white-space:nowrap;word-break:normal}
.summary{background:#f7f9fc;border-left:4px solid #1f77b4;padding:.6rem 1rem}
.charts{display:flex;flex-wrap:wrap;gap:1rem}.muted{color:#666;font-size:.85rem}
"""


def _e(value: Any) -> str:
    return escape(str(value))


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * float(value):.2f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, raw: bool = False) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if raw else _e(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _checks(verification: Mapping[str, Any]) -> str:
    rows = []
    for c in verification.get("checks", []):
        status = str(c["status"])
        evidence = ", ".join(
            f"{_e(k)}={_e(v)}"
            for k, v in sorted(c.get("evidence", {}).items())
            if not isinstance(v, (list, dict))
        )
        rows.append(
            [
                f'<span class="{_e(status)}">{_e(status.upper())}</span>',
                f"<code>{_e(c['name'])}</code>",
                _e(c["detail"]),
                f'<span class="muted">{evidence}</span>',
            ]
        )
    return _table(["status", "check", "detail", "evidence"], rows, raw=True)


def _per_class(per_class: Mapping[str, Any] | None) -> str:
    if not per_class:
        return "<p class='muted'>Per-class accuracy not computed (no reference data).</p>"
    classes = [str(c) for c in per_class["classes"]]
    chart = bar_chart(
        classes,
        [Bars("original", per_class["original"]), Bars("patched", per_class["patched"])],
        title="Per-class accuracy on the reference data",
    )
    rows = [
        [c, str(n), _pct(a), _pct(b), f"{100 * (float(b) - float(a)):+.2f}"]
        for c, n, a, b in zip(
            classes, per_class["counts"], per_class["original"], per_class["patched"], strict=True
        )
    ]
    table = _table(["class", "samples", "original", "patched", "change (points)"], rows)
    return f'<div class="charts">{chart}</div>{table}'


def _mia(mia: Mapping[str, Any] | None) -> str:
    if not mia:
        return "<p class='muted'>Membership inference was not run in this audit.</p>"
    rows, curves = [], []
    for a in mia.get("results", []):
        rows.append(
            [
                str(a["label"]),
                f"{float(a['auc']):.3f} [{float(a['auc_ci'][0]):.3f}, {float(a['auc_ci'][1]):.3f}]",
                f"{_pct(a['tpr_at_1pct_fpr'])} [{_pct(a['tpr_at_1pct_fpr_ci'][0])}, "
                f"{_pct(a['tpr_at_1pct_fpr_ci'][1])}]",
                f"{_pct(a['tpr_at_01pct_fpr'])}",
                f"{float(a['advantage']):.3f}",
            ]
        )
        roc = a.get("roc")
        if roc:
            curves.append(
                Curve(
                    str(a["label"]),
                    roc["fpr"],
                    roc["tpr"],
                    roc.get("tpr_low"),
                    roc.get("tpr_high"),
                    tuple(tuple(p) for p in roc.get("points", ())),
                )
            )
    chart = (
        roc_chart(
            curves, title="Membership-inference ROC (log axes; whiskers: 95% bootstrap CI of TPR)"
        )
        if curves
        else ""
    )
    table = _table(
        ["attack / comparison", "AUC [95% CI]", "TPR@1%FPR [95% CI]", "TPR@0.1%FPR", "advantage"],
        rows,
    )
    settings = _e(", ".join(f"{k}={v}" for k, v in sorted(mia.get("settings", {}).items())))
    return f'<div class="charts">{chart}</div>{table}<p class="muted">{settings}</p>'


def _deletion(words: Any) -> str:
    if not words:
        return ""
    return f"<p><b>Is deletion detectable?</b> {_e(str(words))}</p>"


def _kv(mapping: Mapping[str, Any]) -> str:
    rows = [[str(k), v if isinstance(v, str) else repr(v)] for k, v in sorted(mapping.items())]
    return _table(["field", "value"], rows)


def render_html(doc: Mapping[str, Any]) -> str:
    """The whole page for one report document."""
    verification = doc["verification"]
    verdict = str(doc["verdict"])
    cert = doc.get("certificate", {})
    coverage = doc.get("coverage", {})
    compliance = doc.get("compliance", {})
    threats_rows = [
        [
            str(t["number"]),
            str(t["title"]),
            ", ".join(t["checks"]),
            "covered" if t["covered"] else "NOT covered",
            str(t["why"]),
        ]
        for t in doc.get("threats", [])
    ]
    residual = "".join(f"<li>{_e(r)}</li>" for r in compliance.get("residual_risks", []))
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Unlearning audit report: {_e(doc['name'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Unlearning audit report: {_e(doc['name'])}</h1>",
        f"<p class='muted'>created {_e(doc['created'])} by prune-audit "
        f"{_e(doc.get('reproducibility', {}).get('versions', {}).get('prune-audit', '?'))}</p>",
        f"<p><span class='verdict {_e(verdict)}'>{_e(verdict.upper())}</span></p>",
        "<h2>Compliance summary (GDPR Art. 17)</h2>",
        f"<div class='summary'><p><b>Requested.</b> {_e(compliance.get('requested', ''))}</p>",
        f"<p><b>Verified.</b> {_e(compliance.get('verified', ''))}</p>",
        f"<p><b>Removed.</b> {_e(compliance.get('removed', ''))}</p>",
        f"<p><b>Residual risks.</b></p><ul>{residual}</ul></div>",
        "<h2>Checks</h2>",
        _checks(verification),
        "<h2>Forget-set coverage</h2>",
        _table(
            ["committed", "opened to the auditor", "replayed", "region-probed"],
            [
                [
                    str(coverage.get("committed", "n/a")),
                    str(coverage.get("opened", "n/a")),
                    str(coverage.get("replayed", "n/a")),
                    str(coverage.get("probed", "n/a")),
                ]
            ],
        ),
        "<h2>Accuracy per class, before and after</h2>",
        _per_class(doc.get("per_class")),
        "<h2>Membership inference</h2>",
        _mia(doc.get("mia")),
        _deletion(doc.get("deletion_detectable")),
        "<h2>Patch statistics</h2>",
        _kv(doc.get("patch", {})),
        "<h2>Certificate and keys</h2>",
        _kv(cert),
        "<h2>Threats covered by this audit</h2>",
        _table(["#", "threat", "caught by", "this audit", "why"], threats_rows),
        "<h2>Reproducibility</h2>",
        _kv(doc.get("reproducibility", {}).get("versions", {})),
        _kv({k: v for k, v in doc.get("reproducibility", {}).items() if k != "versions"}),
        "</body></html>",
    ]
    return "".join(parts)
