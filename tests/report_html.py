"""report.html read back as a person sees it: headings, figures and tables (html.parser)."""

from __future__ import annotations

from html.parser import HTMLParser


class Report(HTMLParser):
    """`headings` [(level, text)], `figures` [alt], `tables` [(heading above, rows of cell
    texts)], `svgs` (inline bars): report.html parsed."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.headings: list[tuple[str, str]] = []
        self.figures: list[str] = []
        self.tables: list[tuple[str, list[list[str]]]] = []
        self.svgs = 0
        self._heading: str | None = None
        self._text: list[str] = []
        self._cell: list[str] | None = None
        self._row: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("h1", "h2", "h3"):
            self._heading, self._text = tag, []
        elif tag == "img":
            self.figures.append(dict(attrs).get("alt") or "")
        elif tag == "svg":
            self.svgs += 1
        elif tag == "table":
            above = self.headings[-1][1] if self.headings else ""
            self.tables.append((above, []))
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == self._heading:
            self.headings.append((tag, "".join(self._text).strip()))
            self._heading = None
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1][1].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._heading:
            self._text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def table(self, heading_start: str) -> list[list[str]]:
        """The rows of the first table under a heading that starts with `heading_start`."""
        for above, rows in self.tables:
            if above.startswith(heading_start):
                return rows
        raise KeyError(heading_start)
