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


def img(path: str | None, caption: str) -> str:
    """A PNG file inlined as a data: URI figure (the report is one self-contained file)."""
    if not path or not fsutil.exists(path):
        return ""
    data = base64.b64encode(fsutil.read_bytes(path)).decode()
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
