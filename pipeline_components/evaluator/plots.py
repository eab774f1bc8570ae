"""Figures a person looks at first after an evaluation: confusion matrix and misclassified images.

Each function returns PNG bytes (matplotlib Agg, no display needed).
"""

from __future__ import annotations

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


def errors_png(errors: list[dict], labels: list[str], columns: int = 4) -> bytes:
    """Grid of misclassified images titled 'true → predicted (score)'."""
    import tensorflow as tf

    plt = pyplot()
    if not errors:
        fig, ax = plt.subplots(figsize=(4, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no misclassified test images", ha="center", va="center")
        return figure_png(fig)
    rows = (len(errors) + columns - 1) // columns
    cols = min(columns, len(errors))
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.6 * cols, 2.8 * rows + 0.4), squeeze=False, layout="constrained"
    )
    for ax in axes.ravel():
        ax.axis("off")
    for ax, err in zip(axes.ravel(), errors, strict=False):
        image = tf.io.decode_image(err["encoded"], channels=3, expand_animations=False).numpy()
        ax.imshow(image)
        ax.set_title(
            f"{labels[err['true']]} → {labels[err['pred']]} ({err['score']:.2f})\n"
            f"{err['filename'][-28:]}",
            fontsize=8,
            color="firebrick",
        )
    fig.suptitle("Misclassified test images (true → predicted)")
    return figure_png(fig)
