"""Dependency-free pictures for the HTML reports: inline SVG line charts and HTML tables."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

CSS = (
    "body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}"
    ".pass{color:#2a7d2a}.fail{color:#c62828;font-weight:bold}.skip{color:#888}"
    "figure{display:inline-block;margin:0 1em 1em 0}figcaption{font-size:13px;color:#444}"
)
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values (steps of 1, 2 or 5 × 10^k) covering [lo, hi]."""
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0) * 0.1
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def _label(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.6g}"


def line_chart(
    series: dict[str, Sequence[tuple[object, float]]],
    title: str = "",
    x_label: str = "",
    width: int = 520,
    height: int = 260,
    mark: tuple[object, str] | None = None,
) -> str:
    """One polyline (with dots) per named series of (x, y) points, on round ticks with light gridlines.
    Numeric x values are placed to scale; anything else (dates, labels) evenly, in order. ``mark`` = (x,
    label) draws a dashed vertical line there (e.g. the selected epoch)."""
    points = [(x, y) for s in series.values() for x, y in s if y == y]  # y == y drops NaN
    if not points:
        return "<p>no data</p>"
    numeric = all(isinstance(x, int | float) for x, _ in points)
    xs = sorted({x for x, _ in points}) if numeric else list(dict.fromkeys(x for s in series.values() for x, _ in s))
    yticks = nice_ticks(min(y for _, y in points), max(y for _, y in points))
    lo, hi = yticks[0], yticks[-1]
    if numeric:
        xticks: list[object] = [t for t in nice_ticks(xs[0], xs[-1], 6) if xs[0] <= t <= xs[-1]]
        if all(isinstance(x, int) for x in xs):
            xticks = [int(t) for t in xticks if float(t).is_integer()]  # type: ignore[arg-type]
    else:
        stride = max(1, math.ceil(len(xs) / 6))
        xticks = xs[::stride]

    def pos(x: object) -> float:
        if numeric:
            return (x - xs[0]) / ((xs[-1] - xs[0]) or 1)  # type: ignore[operator]
        return xs.index(x) / max(1, len(xs) - 1)

    left, right, top, bottom = 58, 130, 28, 36
    w, h = width - left - right, height - top - bottom

    def xy(x: object, y: float) -> tuple[float, float]:
        return left + pos(x) * w, top + (1 - (y - lo) / (hi - lo)) * h

    parts = [f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg" font-size="11">',
             f'<rect width="{width}" height="{height}" fill="white" stroke="#ccc"/>',
             f'<text x="{left}" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>']  # fmt: skip
    for t in yticks:
        y = xy(xs[0], t)[1]
        parts.append(f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{left + w}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_label(t)}</text>')
    for t in xticks:
        x = xy(t, lo)[0]
        parts.append(f'<line class="grid" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + h}" stroke="#eee"/>')
        parts.append(f'<text x="{x:.1f}" y="{top + h + 14}" text-anchor="middle">{html.escape(str(t))}</text>')
    parts += [
        f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" stroke="#999"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + h}" stroke="#999"/>',
        f'<text x="{left + w / 2:.1f}" y="{height - 4}" text-anchor="middle">{html.escape(x_label)}</text>',
    ]
    if mark is not None and mark[0] in xs:
        x = xy(mark[0], lo)[0]
        parts.append(f'<line class="mark" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + h}" stroke="#555" '
                     f'stroke-dasharray="4 3"/><text x="{x + 4:.1f}" y="{top + 10}" fill="#555">'
                     f"{html.escape(mark[1])}</text>")  # fmt: skip
    for i, (name, s) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        pts = [xy(x, y) for x, y in s if y == y]
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
            + " ".join(f"{px:.1f},{py:.1f}" for px, py in pts)
            + '"/>'
        )
        parts += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{colour}"/>' for px, py in pts]
        parts.append(f'<text x="{left + w + 8}" y="{top + 12 + 14 * i}" fill="{colour}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An HTML table; cells are escaped unless they are already markup (start with '<')."""

    def cell(c: object) -> str:
        s = f"{c:.4f}" if isinstance(c, float) else str(c)
        return s if s.startswith("<") else html.escape(s)

    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + f"</tr>{body}</table>"
