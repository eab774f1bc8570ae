"""Training curves (training vs validation per epoch, like the notebook's graphs) as PNG files."""

from __future__ import annotations

from pipeline_components.core import fsutil
from pipeline_components.core.plotting import pyplot, save_figure


def plot_curve(history: dict, metric: str, path: str, title: str | None = None) -> str:
    """Training (dots) vs validation (line) of one metric per epoch, like the notebook's graphs."""
    train = history.get(metric) or []
    val = history.get(f"val_{metric}") or []
    epochs = history.get("epoch") or list(range(1, len(train) + 1))
    fig, ax = pyplot().subplots(figsize=(6.4, 4.2))
    if train:
        ax.plot(epochs[: len(train)], train, "bo", markersize=3, label=f"Training {metric}")
    if val:
        ax.plot(epochs[: len(val)], val, "b", label=f"Validation {metric}")
    phases = history.get("phase") or []
    if "fine_tune" in phases:
        ax.axvline(
            epochs[phases.index("fine_tune")] - 0.5, color="gray", ls=":", label="fine-tuning"
        )
    ax.set_title(title or f"Training and validation {metric}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_training_curves(history: dict, out_dir: str) -> dict[str, str]:
    """`<out_dir>/accuracy.png` and `<out_dir>/loss.png`; returns {name: path}."""
    fsutil.makedirs(out_dir)
    return {
        metric: plot_curve(history, metric, fsutil.join(out_dir, f"{metric}.png"))
        for metric in ("accuracy", "loss")
    }
