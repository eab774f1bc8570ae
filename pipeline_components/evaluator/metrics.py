"""Classification metrics from predicted probabilities: pure numpy, no TensorFlow.

Kept apart from I/O so a test can compare them with a hand computation and with scikit-learn.
`classification_metrics` is metrics.json (accuracy, the Keras-clipped cross-entropy `loss`,
per-class precision/recall/F1, the confusion matrix, binary ROC AUC). The gate's metrics,
with bootstrap replicates, are in measures.py.
"""

from __future__ import annotations

import numpy as np

EPSILON = 1e-7  # Keras' clipping in its cross-entropy losses


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def cross_entropy(probabilities: np.ndarray, y_true: np.ndarray) -> float:
    """Mean -log p(true class). For a sigmoid head with probabilities [1-p, p] this equals
    binary cross-entropy; for softmax, sparse categorical cross-entropy."""
    p_true = probabilities[np.arange(len(y_true)), y_true]
    return float(np.mean(-np.log(np.clip(p_true, EPSILON, 1.0 - EPSILON))))


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve = P(score of a random positive > random negative), ties half.
    None when one class is absent (AUC is undefined)."""
    positive = positive.astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    i = 0
    while i < len(sorted_scores):
        j = i
        while j + 1 < len(sorted_scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def classification_metrics(
    probabilities: np.ndarray, y_true: np.ndarray, labels: list[str]
) -> dict:
    """accuracy, loss, num_examples, per_class precision/recall/f1/support, confusion_matrix,
    and auc (binary only, positive class = labels[1])."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.int64)
    n_classes = len(labels)
    y_pred = probabilities.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, n_classes)
    auc = roc_auc(probabilities[:, 1], y_true == 1) if n_classes == 2 else None
    return metrics_from_counts(cm, cross_entropy(probabilities, y_true), labels, auc)


def metrics_from_counts(cm: np.ndarray, loss: float, labels: list[str], auc: float | None) -> dict:
    """The metrics dict from the confusion matrix (rows true, columns predicted), the mean
    cross-entropy and the ROC AUC (used for two classes only)."""
    cm = np.asarray(cm, dtype=np.int64)
    n_classes = len(labels)
    num_examples = int(cm.sum())
    per_class = {}
    for i, name in enumerate(labels):
        tp = cm[i, i]
        predicted, support = cm[:, i].sum(), cm[i, :].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": int(support),
        }
    out = {
        "accuracy": float(np.trace(cm) / num_examples) if num_examples else 0.0,
        "loss": float(loss),
        "num_examples": num_examples,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "labels": list(labels),
    }
    if n_classes == 2:
        out["auc"] = auc
    return out
