"""The building blocks of the run table's lines and report.html's sections: what every
component's present.py is made of (tables from rows, key-value tables, figures, verdict lines)."""

from __future__ import annotations

import base64
import html
from collections.abc import Container, Iterable, Mapping, Sequence
from typing import Any

from pipeline_components.core import fsutil


def e(value: Any) -> str:
    """HTML-escaped text."""
    return html.escape(str(value))


def fmt(value: Any, digits: int = 4) -> str:
    """A number to `digits` decimals, '—' for None, anything else escaped."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return e(value)


MAX_INLINE_BYTES = 4 << 20  # a larger figure is named, not inlined: the page stays mailable


def img(path: str | None, caption: str, max_bytes: int = MAX_INLINE_BYTES) -> str:
    """A PNG file inlined as a data: URI figure (the report is one self-contained file); one
    over `max_bytes` is named with its size instead."""
    if not path or not fsutil.exists(path):
        return ""
    raw = fsutil.read_bytes(path)
    if len(raw) > max_bytes:
        return (
            f"<figure><figcaption>{e(caption)}: {len(raw) / 2**20:.1f} MiB, not inlined "
            f"(over {max_bytes / 2**20:.0f} MiB): <code>{e(path)}</code></figcaption></figure>"
        )
    data = base64.b64encode(raw).decode()
    return (
        f'<figure><img alt="{e(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{e(caption)}</figcaption></figure>"
    )


class Html(str):
    """Text that is HTML already: a table cell or a list item takes it as it is."""


def code(text: Any) -> Html:
    return Html(f"<code>{e(text)}</code>")


def number(value: Any, digits: int = 4) -> Html:
    """`fmt` as a cell: a float to `digits` decimals, '—' for None."""
    return Html(fmt(value, digits))


def _cell(value: Any) -> str:
    return value if isinstance(value, Html) else e(value)


def table(
    rows: Iterable[Sequence[Any]],
    head: Sequence[Any] | None = None,
    *,
    num: Container[int] = (),
    row_heads: bool = False,
) -> str:
    """A `<table>`: the header row `head`, then `rows` (values are escaped unless Html);
    columns whose index is in `num` are numbers (right-aligned); `row_heads`: each row's first
    cell is its heading (a key-value table)."""
    out = ["<table>"]
    if head is not None:
        out.append("<tr>" + "".join(f"<th>{_cell(h)}</th>" for h in head) + "</tr>")
    for row in rows:
        cells = []
        for i, value in enumerate(row):
            if row_heads and i == 0:
                cells.append(f"<th>{_cell(value)}</th>")
            else:
                cells.append(f"<td{' class=num' if i in num else ''}>{_cell(value)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</table>"


def key_values(pairs: Iterable[tuple[Any, Any]], *, num: bool = False) -> str:
    """A two-column table of `(key, value)` rows, the keys as headings."""
    return table(pairs, num=(1,) if num else (), row_heads=True)


def bar(
    value: float | None,
    interval: Sequence[float] | None = None,
    *,
    low: float = 0.0,
    high: float = 1.0,
    mark: float | None = None,
    muted: bool = False,
    width: int = 160,
) -> Html:
    """A horizontal bar as inline SVG (a table cell): `value` on [low, high], its interval as a
    black line, `mark` (a bound, the overall value) as a red tick; `muted`: grey (not gated)."""

    def x(v: float) -> float:
        return round(width * min(max((v - low) / ((high - low) or 1.0), 0.0), 1.0), 1)

    parts = [f'<rect x="0" y="2" width="{width}" height="10" fill="#f3f6f9"/>']
    if value is not None:
        fill = "#c4c9d0" if muted else "#4682b4"
        parts.append(f'<rect x="0" y="2" width="{x(value)}" height="10" fill="{fill}"/>')
    if interval:
        parts.append(
            f'<line x1="{x(interval[0])}" x2="{x(interval[1])}" y1="7" y2="7" stroke="#000" '
            'stroke-width="1.5"/>'
        )
    if mark is not None:
        parts.append(f'<line x1="{x(mark)}" x2="{x(mark)}" y1="0" y2="14" stroke="#b22222"/>')
    return Html(f'<svg width="{width}" height="14" role="img">{"".join(parts)}</svg>')


def bullets(items: Iterable[Any]) -> str:
    return "<ul>" + "".join(f"<li>{_cell(item)}</li>" for item in items) + "</ul>"


def section(title: str, body: str) -> str:
    return f"<h2>{e(title)}</h2>{body}"


def figures(*figs: str) -> str:
    return f"<div class=imgs>{''.join(figs)}</div>"


# ------------------------------------------------------------------------ one-line summaries


def result(entry: Mapping[str, Any]) -> dict:
    """A run.json entry's result ({} when it has none)."""
    return dict(entry.get("result") or {})


def pairs(counts: Mapping[str, Any] | None) -> str:
    """`train=8 test=3`: a mapping as the run table shows it."""
    return " ".join(f"{k}={v}" for k, v in (counts or {}).items())


def verdict(
    passed: bool, reasons: Iterable[str], yes: str = "blessed", no: str = "NOT blessed"
) -> str:
    """`blessed: why; why` or `NOT blessed: why`."""
    return f"{yes if passed else no}: " + "; ".join(reasons)
