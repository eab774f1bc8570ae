"""Figures a person looks at first after an evaluation: the confusion matrix, the reliability
diagram, the metric per slice, and the most confident mistakes with their Grad-CAM heat maps.

Each function returns PNG bytes (matplotlib Agg, no display needed).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline_components.core.plotting import figure_png, pyplot


def confusion_matrix_png(cm: np.ndarray, labels: list[str], accuracy: float | None = None) -> bytes:
    plt = pyplot()
    n = len(labels)
    size = max(4.0, 0.6 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(
        range(n), labels=labels, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center"
    )
    ax.set_yticks(range(n), labels=labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    title = "Confusion matrix (test)"
    if accuracy is not None:
        title += f" — accuracy {accuracy:.1%}"
    ax.set_title(title)
    peak = cm.max() if cm.size else 0
    for i in range(n):
        for j in range(n):
            color = "white" if peak and cm[i, j] > peak / 2 else "black"
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", color=color)
    return figure_png(fig)


def reliability_png(calibration: dict, ece: float | None) -> bytes:
    """Accuracy against mean confidence per confidence bin (the diagonal is perfect
    calibration), with the number of test images per bin below."""
    plt = pyplot()
    edges = np.array(calibration["edges"])
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    acc = np.array([np.nan if v is None else v for v in calibration["accuracy"]], dtype=float)
    conf = np.array([np.nan if v is None else v for v in calibration["confidence"]], dtype=float)
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(5, 5.6), height_ratios=(3, 1), sharex=True, layout="constrained"
    )
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    top.bar(centers, np.nan_to_num(acc), width=width * 0.9, color="steelblue", label="accuracy")
    top.scatter(conf, acc, color="firebrick", s=12, zorder=3, label="mean confidence")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy in bin")
    title = "Reliability (test, top-label confidence)"
    if ece is not None:
        title += f" — ECE {ece:.3f}"
    top.set_title(title, fontsize=10)
    top.legend(fontsize=8, loc="upper left")
    bottom.bar(centers, calibration["count"], width=width * 0.9, color="grey")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("images")
    return figure_png(fig)


MAX_SLICE_BARS = 60


def slices_png(
    slices: list[dict], overall: dict, min_slice_size: int, metric: str = "accuracy"
) -> bytes:
    """One horizontal bar per slice: the metric with its interval and the slice's count;
    slices under min_slice_size (reported, never gated) hatched and grey."""
    plt = pyplot()
    rows = [s for s in slices if s["metrics"][metric]["value"] is not None]
    more = len(rows) - MAX_SLICE_BARS
    rows = rows[:MAX_SLICE_BARS]
    if not rows:
        fig, ax = plt.subplots(figsize=(4, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no slices", ha="center", va="center")
        return figure_png(fig)
    fig, ax = plt.subplots(figsize=(6.5, 0.32 * len(rows) + 1.3), layout="constrained")
    for i, s in enumerate(rows):
        m = s["metrics"][metric]
        gated = s["count"] >= min_slice_size
        ax.barh(
            i, m["value"], color="steelblue" if gated else "lightgrey",
            hatch=None if gated else "//", edgecolor="grey",
        )  # fmt: skip
        if m["interval"]:
            low, high = m["interval"]
            ax.plot([low, high], [i, i], color="black", linewidth=1.2)
    names = [
        ", ".join(f"{k}={v}" for k, v in s["slice"].items())[:40] + f"  (n={s['count']})"
        for s in rows
    ]
    ax.set_yticks(range(len(rows)), labels=names, fontsize=8)
    ax.invert_yaxis()
    value = overall["metrics"][metric]["value"]
    if value is not None:
        ax.axvline(value, color="firebrick", linestyle="--", linewidth=1, label=f"all: {value:.3f}")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"{metric} (bars), 95% interval (lines); hatched: under {min_slice_size} images")
    title = f"{metric.capitalize()} per slice (test)"
    if more > 0:
        title += f"; {more} more in analysis.json"
    ax.set_title(title, fontsize=10)
    return figure_png(fig)


THUMBNAIL = 256  # pixels on the longer side: the figure holds up to 48 images at once


def _thumbnail(image: Any) -> np.ndarray:
    """A decoded image [H, W, 3] (tf) shrunk to at most THUMBNAIL on its longer side, uint8."""
    import tensorflow as tf

    height, width = int(image.shape[0]), int(image.shape[1])
    scale = THUMBNAIL / max(height, width)
    if scale < 1:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        image = tf.cast(tf.image.resize(image, size, antialias=True), tf.uint8)
    return np.asarray(image)


def mistakes_png(items: list[dict], labels: list[str], columns: int = 4) -> bytes:
    """The most confident wrong test images, each with its Grad-CAM heat map for the class the
    model predicted (where it saw that class) when the model exports one."""
    import tensorflow as tf

    plt = pyplot()
    if not items:
        fig, ax = plt.subplots(figsize=(4, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no misclassified test images", ha="center", va="center")
        return figure_png(fig)
    rows = (len(items) + columns - 1) // columns
    cols = min(columns, len(items))
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.6 * cols, 2.9 * rows + 0.5), squeeze=False, layout="constrained"
    )
    for ax in axes.ravel():
        ax.axis("off")
    for ax, item in zip(axes.ravel(), items, strict=False):
        image = _thumbnail(tf.io.decode_image(item["encoded"], channels=3, expand_animations=False))
        height, width = image.shape[:2]
        ax.imshow(image)
        if item.get("heatmap") is not None:
            ax.imshow(
                item["heatmap"], cmap="jet", alpha=0.45, extent=(0, width, height, 0),
                interpolation="bilinear", vmin=0, vmax=1,
            )  # fmt: skip
        ax.set_title(
            f"{labels[item['true']]} → {labels[item['pred']]} ({item['score']:.2f})\n"
            f"{item['filename'][-28:]}",
            fontsize=8,
            color="firebrick",
        )
    explained = any(item.get("heatmap") is not None for item in items)
    note = "heat map: Grad-CAM for the predicted class" if explained else "no grad_cam signature"
    fig.suptitle(f"Most confident mistakes per true class (true → predicted); {note}", fontsize=10)
    return figure_png(fig)
