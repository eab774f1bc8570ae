"""HTML building blocks for report.html sections (components' `report_html` use these)."""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable
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


def key_value_rows(rows: Iterable[tuple[str, Any]], digits: int = 4) -> str:
    """`<tr><th>key</th><td>value</td></tr>` rows, skipping None values."""
    return "".join(
        f"<tr><th>{e(k)}</th><td class=num>{fmt(v, digits)}</td></tr>"
        for k, v in rows
        if v is not None
    )


def section(title: str, body: str) -> str:
    return f"<h2>{e(title)}</h2>{body}"


def figures(*figs: str) -> str:
    return f"<div class=imgs>{''.join(figs)}</div>"
