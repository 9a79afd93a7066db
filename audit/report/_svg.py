"""Self-contained SVG charts for the HTML report (no plotting library, no external assets).

Two chart kinds cover the report: ROC curves on log-log axes with confidence bands, and grouped bar
charts (per-class accuracy before/after). Output is a string of SVG markup, deterministic for the
same input so reports can be diffed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["Bars", "Curve", "bar_chart", "roc_chart"]

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
_W, _H = 560, 360
_L, _R, _T, _B = 64, 16, 16, 48


@dataclass(frozen=True)
class Curve:
    """One ROC curve: false/true positive rates, optional lower/upper TPR band (same length)."""

    label: str
    fpr: Sequence[float]
    tpr: Sequence[float]
    tpr_low: Sequence[float] | None = None
    tpr_high: Sequence[float] | None = None
    intervals: Sequence[tuple[float, float, float, float]] = ()
    """Point estimates with confidence intervals, ``(fpr, tpr, tpr_low, tpr_high)``: drawn as
    dots with vertical whiskers."""


@dataclass(frozen=True)
class Bars:
    """One series of a grouped bar chart (one value per category)."""

    label: str
    values: Sequence[float]


def _fmt(v: float) -> str:
    return f"{v:.2f}"


def _frame(title: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" width="{_W}" '
        f'height="{_H}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<rect x="{_L}" y="{_T}" width="{_W - _L - _R}" height="{_H - _T - _B}" '
        'fill="#fff" stroke="#999"/>',
    ]


def _legend(labels: Sequence[str]) -> list[str]:
    width = 24 + 7 * max((len(label) for label in labels), default=0)
    out = [
        f'<rect x="{_L + 4}" y="{_T + 2}" width="{width}" height="{16 * len(labels) + 6}" '
        'fill="#fff" fill-opacity="0.85" stroke="#ccc"/>'
    ]
    for i, label in enumerate(labels):
        y = _T + 14 + 16 * i
        colour = _PALETTE[i % len(_PALETTE)]
        out.append(
            f'<rect x="{_L + 10}" y="{y - 9}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{_L + 26}" y="{y}" font-size="11">{escape(label)}</text>'
        )
    return out


def roc_chart(curves: Sequence[Curve], *, title: str, floor: float = 1e-4) -> str:
    """ROC curves on log-log axes (the regime that matters for membership inference: low FPR).

    Rates below ``floor`` are drawn at ``floor``; the diagonal is the random-guess line."""
    lo = math.log10(floor)
    pw, ph = _W - _L - _R, _H - _T - _B

    def px(v: float) -> float:
        return _L + (math.log10(max(v, floor)) - lo) / -lo * pw

    def py(v: float) -> float:
        return _T + ph - (math.log10(max(v, floor)) - lo) / -lo * ph

    parts = _frame(title)
    for e in range(int(lo), 1):
        x, y = px(10.0**e), py(10.0**e)
        parts.append(
            f'<line x1="{_fmt(x)}" y1="{_T}" x2="{_fmt(x)}" y2="{_T + ph}" stroke="#eee"/>'
            f'<line x1="{_L}" y1="{_fmt(y)}" x2="{_L + pw}" y2="{_fmt(y)}" stroke="#eee"/>'
            f'<text x="{_fmt(x)}" y="{_H - _B + 16}" font-size="10" text-anchor="middle">1e{e}</text>'
            f'<text x="{_L - 6}" y="{_fmt(y + 3)}" font-size="10" text-anchor="end">1e{e}</text>'
        )
    parts.append(
        f'<line x1="{_fmt(px(floor))}" y1="{_fmt(py(floor))}" x2="{_fmt(px(1))}" '
        f'y2="{_fmt(py(1))}" stroke="#888" stroke-dasharray="4 3"/>'
    )
    for i, c in enumerate(curves):
        colour = _PALETTE[i % len(_PALETTE)]
        if c.tpr_low is not None and c.tpr_high is not None:
            upper = [f"{_fmt(px(f))},{_fmt(py(t))}" for f, t in zip(c.fpr, c.tpr_high, strict=True)]
            lower = [f"{_fmt(px(f))},{_fmt(py(t))}" for f, t in zip(c.fpr, c.tpr_low, strict=True)]
            parts.append(
                f'<polygon points="{" ".join(upper + lower[::-1])}" fill="{colour}" '
                'fill-opacity="0.15" stroke="none"/>'
            )
        pts = " ".join(f"{_fmt(px(f))},{_fmt(py(t))}" for f, t in zip(c.fpr, c.tpr, strict=True))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.6"/>')
        for f, t, low, high in c.intervals:
            cx = _fmt(px(f))
            parts.append(
                f'<line x1="{cx}" y1="{_fmt(py(low))}" x2="{cx}" y2="{_fmt(py(high))}" '
                f'stroke="{colour}" stroke-width="2"/>'
                f'<circle cx="{cx}" cy="{_fmt(py(t))}" r="3" fill="{colour}"/>'
            )
    parts += _legend([c.label for c in curves])
    parts.append(
        f'<text x="{_L + pw / 2}" y="{_H - 10}" font-size="12" text-anchor="middle">'
        "false positive rate</text>"
        f'<text x="14" y="{_T + ph / 2}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 14 {_T + ph / 2})">true positive rate</text></svg>'
    )
    return "".join(parts)


def bar_chart(
    categories: Sequence[str], series: Sequence[Bars], *, title: str, y_max: float = 1.0
) -> str:
    """Grouped vertical bars, values in ``[0, y_max]`` (clipped), one group per category."""
    if not categories or not series:
        raise ValueError("a bar chart needs at least one category and one series")
    pw, ph = _W - _L - _R, _H - _T - _B
    group = pw / len(categories)
    bar = group * 0.8 / len(series)
    parts = _frame(title)
    for tick in range(6):
        v = y_max * tick / 5
        y = _T + ph - v / y_max * ph
        parts.append(
            f'<line x1="{_L}" y1="{_fmt(y)}" x2="{_L + pw}" y2="{_fmt(y)}" stroke="#eee"/>'
            f'<text x="{_L - 6}" y="{_fmt(y + 3)}" font-size="10" text-anchor="end">{v:.2g}</text>'
        )
    for gi, cat in enumerate(categories):
        x0 = _L + gi * group + group * 0.1
        for si, s in enumerate(series):
            v = min(max(float(s.values[gi]), 0.0), y_max)
            h = v / y_max * ph
            parts.append(
                f'<rect x="{_fmt(x0 + si * bar)}" y="{_fmt(_T + ph - h)}" width="{_fmt(bar)}" '
                f'height="{_fmt(h)}" fill="{_PALETTE[si % len(_PALETTE)]}">'
                f"<title>{escape(s.label)} {escape(cat)}: {v:.4f}</title></rect>"
            )
        parts.append(
            f'<text x="{_fmt(x0 + group * 0.4)}" y="{_H - _B + 16}" font-size="10" '
            f'text-anchor="middle">{escape(cat)}</text>'
        )
    parts += _legend([s.label for s in series])
    parts.append("</svg>")
    return "".join(parts)
