"""Charts drawn on the server as SVG (no JavaScript): calls and failures over time, and
the registrations split between primary nodes.

The SVG is built from numbers and from labels escaped here, so it can be
put into a page as it is.
"""

import datetime
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT, MARGIN = 720, 180, 28
"""The chart's size in pixels and the room left for the labels."""


def _label(ts: float, span: float) -> str:
    fmt = "%H:%M" if span <= 2 * 86400 else "%m-%d %H:%M"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime(fmt)


def calls_chart(slots: list[dict]) -> Markup:
    """Bars of calls (blue) and failures (red) per slot of :func:`store.cdrs.timeline`,
    each with a tooltip, the largest count on the axis and the first and last times."""
    if not slots:
        return Markup("")
    top = max(1, max(s["calls"] for s in slots))
    inner_w, inner_h = WIDTH - 2 * MARGIN, HEIGHT - 2 * MARGIN
    step = inner_w / len(slots)
    bar = max(1.0, step / 2 - 1)
    span = slots[-1]["end"] - slots[0]["start"]
    parts = [
        f'<svg id="calls-chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
        f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="calls and failures over time">',
        f'<line x1="{MARGIN}" y1="{HEIGHT - MARGIN}" x2="{WIDTH - MARGIN}" '
        f'y2="{HEIGHT - MARGIN}" stroke="#888"/>',
        f'<text x="2" y="{MARGIN}" font-size="10">{top}</text>',
        f'<text x="2" y="{HEIGHT - MARGIN}" font-size="10">0</text>',
    ]
    for k, s in enumerate(slots):
        x = MARGIN + k * step
        tip = escape(
            f"{_label(s['start'], span)} to {_label(s['end'], span)} UTC: "
            f"{s['calls']} calls, {s['failures']} failures"
        )
        for offset, value, colour, kind in (
            (0.0, s["calls"], "#4a7bd0", "calls"),
            (bar + 1, s["failures"], "#d04a4a", "failures"),
        ):
            h = inner_h * value / top
            parts.append(
                f'<rect class="{kind}" x="{x + offset:.1f}" '
                f'y="{HEIGHT - MARGIN - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{colour}"><title>{tip}</title></rect>'
            )
    parts.append(
        f'<text x="{MARGIN}" y="{HEIGHT - 8}" font-size="10">'
        f"{escape(_label(slots[0]['start'], span))} UTC</text>"
    )
    parts.append(
        f'<text x="{WIDTH - MARGIN}" y="{HEIGHT - 8}" font-size="10" '
        f'text-anchor="end">{escape(_label(slots[-1]["end"], span))} UTC</text>'
    )
    parts.append(
        f'<text x="{WIDTH - MARGIN}" y="12" font-size="10" text-anchor="end">'
        '<tspan fill="#4a7bd0">■ calls</tspan> <tspan fill="#d04a4a">■ failures'
        "</tspan></text></svg>"
    )
    return Markup("".join(parts))


def split_chart(by_primary: dict[str, int]) -> Markup:
    """One horizontal bar per primary node: its share of the cluster's registrations,
    with its count and percentage (the load split between registrars)."""
    total = sum(by_primary.values())
    if not total:
        return Markup("")
    row, label_w = 22, 120
    height = row * len(by_primary) + 8
    inner_w = WIDTH - label_w - 140
    parts = [
        f'<svg id="split-chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
        f'height="{height}" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-label="registrations by primary node">'
    ]
    for k, (node, n) in enumerate(by_primary.items()):
        y = 4 + k * row
        w = inner_w * n / total
        text = escape(f"{node}: {n} ({100 * n / total:.1f}%)")
        parts.append(
            f'<text x="2" y="{y + 14}" font-size="12">{escape(node[:18])}</text>'
            f'<rect class="share" x="{label_w}" y="{y}" width="{w:.1f}" '
            f'height="{row - 6}" fill="#4a7bd0"><title>{text}</title></rect>'
            f'<text x="{label_w + w + 4:.1f}" y="{y + 14}" font-size="12">'
            f"{n} ({100 * n / total:.1f}%)</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))
