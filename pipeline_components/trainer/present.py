"""The Trainer's line in the run table and its section of report.html."""

from __future__ import annotations

from pipeline_components.core import artifacts, fsutil
from pipeline_components.core.reporting import figures, img, key_values, number, result, section

REPORTED = ("backbone", "weights", "image_size", "head", "fine_tune_from", "epochs", "batch_size")


def summary(entry: dict) -> str:
    """The exported (best) epoch's validation accuracy, not the last epoch's."""
    r = result(entry)
    parts = []
    best = r.get("best") or {}
    if "val_accuracy" in best:
        parts.append(f"val_accuracy {best['val_accuracy']:.4f} (best epoch {r.get('best_epoch')})")
    if "epochs_run" in r:
        parts.append(f"{r['epochs_run']} epochs")
    if r.get("cached_features"):
        parts.append("FeatureGen's features" if r.get("features") else "cached features")
    tuned = r.get("hyperparameters") or {}
    changed = {k: tuned.get("applied", {}).get(k) for k in tuned.get("replaced") or {}}
    if changed:
        parts.append("tuned " + " ".join(f"{k}={v}" for k, v in changed.items()))
    return ", ".join(parts)


def report_html(entry: dict, record: dict) -> str:
    out_dir = entry.get("output_dir")
    if not out_dir:
        return ""
    plots = fsutil.join(out_dir, artifacts.PLOTS_DIR)
    t = record.get("config", {}).get("trainer", {})
    r = result(entry)
    facts = {
        "epochs run": r.get("epochs_run"),
        "best epoch": r.get("best_epoch"),
        "cached features": r.get("cached_features"),
        "training images/s": r.get("images_per_sec"),
    }
    rows = [(k, t.get(k)) for k in REPORTED]
    rows += [(k, number(v, 1)) for k, v in facts.items() if v is not None]
    if r.get("features"):
        rows.append(("features from", r["features"]))
    tuned = r.get("hyperparameters") or {}
    for key, was in (tuned.get("replaced") or {}).items():
        value = (tuned.get("applied") or {}).get(key)
        rows.append((f"{key} (from the Tuner)", f"{value} (config: {was})"))
    return section(
        "Training",
        key_values(rows)
        + figures(
            img(fsutil.join(plots, "accuracy.png"), "Training and validation accuracy"),
            img(fsutil.join(plots, "loss.png"), "Training and validation loss"),
        ),
    )
