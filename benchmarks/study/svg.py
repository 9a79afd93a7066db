"""Two plain SVG charts (no plotting library): a scatter plot and grouped bars, linear or log.

The output is deterministic text (fixed number formatting, no timestamps), so regenerating a plot
from the same results gives the same file and diffs stay readable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["PALETTE", "Point", "grouped_bars", "scatter"]

PALETTE = (
    "#4c72b0",
    "#dd8452",
    "#55a868",
    "#c44e52",
    "#8172b3",
    "#937860",
    "#da8bc3",
    "#8c8c8c",
    "#ccb974",
    "#64b5cd",
    "#1b9e77",
    "#d95f02",
    "#7570b3",
)

_W, _H = 760, 420
_L, _R, _T, _B = 70, 215, 40, 60


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    series: str


def _f(v: float) -> str:
    return f"{v:.1f}"


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def _fmt_tick(v: float) -> str:
    return f"{v:g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.0e}"


def _frame(title: str, x_label: str, y_label: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
        f'viewBox="0 0 {_W} {_H}" font-family="sans-serif" font-size="12">',
        f'<rect width="{_W}" height="{_H}" fill="white"/>',
        f'<text x="{_W / 2}" y="22" text-anchor="middle" font-size="14">{escape(title)}</text>',
        f'<text x="{_L + (_W - _L - _R) / 2}" y="{_H - 15}" text-anchor="middle">{escape(x_label)}</text>',
        f'<text transform="translate(18,{_T + (_H - _T - _B) / 2}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text>',
    ]


def _legend(names: Sequence[str], colours: Mapping[str, str]) -> list[str]:
    out = []
    for i, name in enumerate(names):
        y = _T + 10 + i * 18
        out.append(
            f'<rect x="{_W - _R + 15}" y="{y - 9}" width="10" height="10" fill="{colours[name]}"/>'
        )
        out.append(f'<text x="{_W - _R + 30}" y="{y}">{escape(name)}</text>')
    return out


def _colours(names: Sequence[str]) -> dict[str, str]:
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def scatter(
    points: Sequence[Point],
    *,
    title: str,
    x_label: str,
    y_label: str,
    series_order: Sequence[str],
) -> str:
    """One dot per point, coloured by series; axes span the data with a 5 % margin."""
    xs = [p.x for p in points] or [0.0]
    ys = [p.y for p in points] or [0.0]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    dx, dy = (x1 - x0) * 0.05 or 1.0, (y1 - y0) * 0.05 or 1.0
    x0, x1, y0, y1 = x0 - dx, x1 + dx, y0 - dy, y1 + dy
    pw, ph = _W - _L - _R, _H - _T - _B

    def px(v: float) -> float:
        return _L + (v - x0) / (x1 - x0) * pw

    def py(v: float) -> float:
        return _T + ph - (v - y0) / (y1 - y0) * ph

    names = [s for s in series_order if any(p.series == s for p in points)]
    colours = _colours(names)
    out = _frame(title, x_label, y_label)
    out.append(f'<rect x="{_L}" y="{_T}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
    for t in _ticks(x0, x1):
        out.append(
            f'<line x1="{_f(px(t))}" y1="{_T + ph}" x2="{_f(px(t))}" y2="{_T}" stroke="#eee"/>'
        )
        out.append(
            f'<text x="{_f(px(t))}" y="{_T + ph + 15}" text-anchor="middle">{_fmt_tick(t)}</text>'
        )
    for t in _ticks(y0, y1):
        out.append(
            f'<line x1="{_L}" y1="{_f(py(t))}" x2="{_L + pw}" y2="{_f(py(t))}" stroke="#eee"/>'
        )
        out.append(
            f'<text x="{_L - 5}" y="{_f(py(t) + 4)}" text-anchor="end">{_fmt_tick(t)}</text>'
        )
    for p in points:
        out.append(
            f'<circle cx="{_f(px(p.x))}" cy="{_f(py(p.y))}" r="4.5" fill="{colours[p.series]}" '
            f'fill-opacity="0.8"><title>{escape(p.series)}: ({p.x:.3g}, {p.y:.3g})</title></circle>'
        )
    out += _legend(names, colours)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def grouped_bars(
    groups: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    *,
    title: str,
    y_label: str,
    log: bool = False,
    reference_line: float | None = None,
) -> str:
    """Bars ``series[name][i]`` for group ``groups[i]``; ``None`` leaves a gap. With ``log``
    the axis is log10 (values <= 0 are drawn as gaps)."""
    values = [v for vs in series.values() for v in vs if v is not None and (v > 0 or not log)]
    if reference_line is not None:
        values.append(reference_line)
    if not values:
        values = [1.0]
    if log:
        lo = 10.0 ** math.floor(math.log10(min(values)))
        hi = 10.0 ** math.ceil(math.log10(max(values)))
        if hi <= lo:
            hi = lo * 10
    else:
        lo, hi = min(0.0, min(values)), max(values) * 1.05 or 1.0
    pw, ph = _W - _L - _R, _H - _T - _B

    def py(v: float) -> float:
        if log:
            return (
                _T + ph - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * ph
            )
        return _T + ph - (v - lo) / (hi - lo) * ph

    names = list(series)
    colours = _colours(names)
    out = _frame(title, "", y_label)
    out.append(f'<rect x="{_L}" y="{_T}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
    ticks = (
        [10.0**e for e in range(round(math.log10(lo)), round(math.log10(hi)) + 1)]
        if log
        else _ticks(lo, hi)
    )
    for t in ticks:
        out.append(
            f'<line x1="{_L}" y1="{_f(py(t))}" x2="{_L + pw}" y2="{_f(py(t))}" stroke="#eee"/>'
        )
        out.append(
            f'<text x="{_L - 5}" y="{_f(py(t) + 4)}" text-anchor="end">{_fmt_tick(t)}</text>'
        )
    gw = pw / max(len(groups), 1)
    bw = gw * 0.8 / max(len(names), 1)
    base = py(lo) if log else py(max(lo, 0.0))
    for gi, group in enumerate(groups):
        gx = _L + gi * gw + gw * 0.1
        out.append(
            f'<text x="{_f(_L + (gi + 0.5) * gw)}" y="{_T + ph + 15}" text-anchor="middle">{escape(group)}</text>'
        )
        for si, name in enumerate(names):
            v = series[name][gi]
            if v is None or (log and v <= 0):
                continue
            top = py(v)
            y, h = (top, base - top) if top <= base else (base, top - base)
            out.append(
                f'<rect x="{_f(gx + si * bw)}" y="{_f(y)}" width="{_f(bw * 0.95)}" height="{_f(max(h, 0.5))}" '
                f'fill="{colours[name]}"><title>{escape(name)} / {escape(group)}: {v:.4g}</title></rect>'
            )
    if reference_line is not None:
        y = py(reference_line)
        out.append(
            f'<line x1="{_L}" y1="{_f(y)}" x2="{_L + pw}" y2="{_f(y)}" stroke="#333" stroke-dasharray="4 3"/>'
        )
    out += _legend(names, colours)
    out.append("</svg>")
    return "\n".join(out) + "\n"
