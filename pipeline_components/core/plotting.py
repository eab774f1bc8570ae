"""Matplotlib set up once for every component's figures: the Agg backend (no display needed) and
PNG bytes or files written atomically through fsutil (so paths may be local, gs:// or ram://)."""

from __future__ import annotations

import io
from typing import Any

from pipeline_components.core import fsutil


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (imported lazily: it takes a second)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig: Any) -> bytes:
    """Render a figure to PNG bytes and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def save_figure(fig: Any, path: str) -> str:
    """Write a figure as PNG to `path` atomically; returns the path."""
    fsutil.write_atomic(path, figure_png(fig))
    return path
