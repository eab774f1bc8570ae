"""The Tuner's line in the run table, its field of run.json (`hyperparameters`: the best trial)
and its section of report.html (the search, the trials table, the plot)."""

from __future__ import annotations

from typing import Any

from pipeline_components.core import artifacts, fsutil
from pipeline_components.core.reporting import (
    figures,
    img,
    key_values,
    number,
    result,
    section,
    table,
)

# The trials table's columns: (heading, row key, digits for numbers or None)
COLUMNS = (
    ("trial", "trial", None),
    ("status", "status", None),
    ("worker", "worker", None),
    ("learning rate", "learning_rate", 6),
    ("dropout", "dropout", 3),
    ("units", "units", None),
    ("optimizer", "optimizer", None),
    ("batch", "batch_size", None),
    ("epochs", "epochs", None),
    ("val_accuracy", "val_accuracy", 4),
    ("val_loss", "val_loss", 4),
    ("seconds", "seconds", 1),
)


def summary(entry: dict) -> str:
    r = result(entry)
    best = r.get("best")
    if not best:
        return ""
    values = " ".join(f"{k}={v}" for k, v in best.get("trainer", {}).items())
    return (
        f"best {best['objective']} {best['score']:.4f} of {r.get('trials')} trials"
        f" ({r.get('algorithm')}, on {r.get('mode')}): {values}"
    )


def record_fields(entry: dict) -> dict:
    best = result(entry).get("best")
    return {"hyperparameters": best} if best else {}


def _cell(row: dict[str, Any], key: str, digits: int | None) -> Any:
    value = row.get(key)
    if digits is not None and isinstance(value, float):
        return number(value, digits)
    return "—" if value is None else value


def report_html(entry: dict, record: dict) -> str:
    r = result(entry)
    out_dir = entry.get("output_dir")
    if not out_dir or not r.get("best"):
        return ""
    trials_path = fsutil.join(out_dir, artifacts.TRIALS_JSON)
    rows = fsutil.read_json(trials_path, "trials") if fsutil.exists(trials_path) else []
    best = r["best"]
    facts = [
        ("algorithm", r.get("algorithm")),
        ("trials", f"{r.get('trials')} ({r.get('completed')} completed)"),
        ("stopped by", r.get("stopped_by")),
        ("workers", r.get("workers")),
        ("trials on", r.get("mode")),
        (f"best {best['objective']}", number(best.get("score"))),
        ("best (the Trainer's values)", ", ".join(f"{k}={v}" for k, v in best["trainer"].items())),
        ("seconds", number(r.get("seconds"), 1)),
    ]
    images = r.get("images")
    if images:
        facts.append(("on images", f"{images.get('why')}: {images.get('slowdown')}x slower"))
    head = [heading for heading, _, _ in COLUMNS]
    body = [[_cell(row, key, digits) for _, key, digits in COLUMNS] for row in rows]
    plot = fsutil.join(out_dir, artifacts.PLOTS_DIR, artifacts.TRIALS_PNG)
    numeric = {i for i, (_, _, digits) in enumerate(COLUMNS) if digits is not None}
    return section(
        "Hyperparameter search",
        key_values(facts)
        + table(body, head, num=numeric)
        + figures(img(plot, f"{best['objective']} per trial, and against the learning rate")),
    )
