"""The Tuner's output, written atomically (core/artifacts.py names the files):

best_hyperparameters.json   the best trial: its score and the trainer options it sets
                            ({"trainer": {"learning_rate": ..., "dropout": ..., ...}})
trials.json  trials.csv     every trial: hyperparameters, best val_accuracy / val_loss,
                            epochs, seconds, the worker that ran it, its status
plots/trials.png            the objective per trial with the best so far, and against the
                            learning rate
tuning.json                 the search: algorithm, budgets, what stopped it, workers,
                            seconds; on images, how much slower that is than on features
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from pipeline_components.core import artifacts, fsutil
from pipeline_components.core.plotting import pyplot, save_figure
from pipeline_components.trainer.config import TrainerConfig
from pipeline_components.tuner.config import OBJECTIVES, SearchSpace, TunerConfig
from pipeline_components.tuner.trials import HEAD_KEYS, trainer_values

METRICS = ("val_accuracy", "val_loss", "accuracy", "loss")
CSV_COLUMNS = ("trial", "status", "worker", "seconds", "epochs", *HEAD_KEYS, *METRICS)


def _best(trial: Any, metric: str) -> float | None:
    if not trial.metrics.exists(metric):
        return None
    value = trial.metrics.get_best_value(metric)
    return None if value is None or not math.isfinite(value) else float(value)


def trial_rows(
    oracle: Any, tuner: TunerConfig, space: SearchSpace, base: TrainerConfig
) -> list[dict[str, Any]]:
    """One row per trial the oracle handed out, in the order they started."""
    timing = oracle.timing()
    rows = []
    for trial_id in oracle.start_order:
        trial = oracle.trials[trial_id]
        clock = timing.get(trial_id, {})
        seconds = (
            round(clock["end"] - clock["start"], 3) if "end" in clock and "start" in clock else None
        )
        raw = trial.hyperparameters.values
        values = trainer_values(raw, space, base)
        # hyperband: this round's epochs, continuing from `tuner/initial_epoch`
        epochs = int(raw.get("tuner/epochs", tuner.epochs)) - int(raw.get("tuner/initial_epoch", 0))
        rows.append(
            {
                "trial": trial_id,
                "status": str(trial.status),
                "worker": clock.get("tuner"),
                "seconds": seconds,
                "epochs": epochs,
                **values,
                **{metric: _best(trial, metric) for metric in METRICS},
                "score": None if trial.score is None else float(trial.score),
            }
        )
    return rows


def best_row(rows: list[dict[str, Any]], objective: str) -> dict[str, Any]:
    done = [r for r in rows if r["status"] == "COMPLETED" and r[objective] is not None]
    sign = 1 if OBJECTIVES[objective] == "max" else -1
    return max(done, key=lambda r: sign * r[objective])


def trials_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row[c] for c in CSV_COLUMNS])
    return buf.getvalue()


def plot_trials(rows: list[dict[str, Any]], objective: str, path: str) -> str:
    """The objective of each trial (dots) and the best so far (line); beside it, the objective
    against the learning rate, one colour per optimizer."""
    sign = 1 if OBJECTIVES[objective] == "max" else -1
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(10, 4))
    xs = [i + 1 for i, r in enumerate(rows) if r[objective] is not None]
    ys = [r[objective] for r in rows if r[objective] is not None]
    best: list[float] = []
    for y in ys:
        best.append(y if not best else sign * max(sign * best[-1], sign * y))
    left.plot(xs, ys, "o", color="tab:blue", label="trial")
    left.step(xs, best, where="post", color="tab:orange", label="best so far")
    left.set_xlabel("trial")
    left.set_ylabel(objective)
    left.set_title(f"{objective} per trial")
    left.legend()
    left.grid(alpha=0.3)
    for optimizer in sorted({str(r["optimizer"]) for r in rows}):
        mine = [r for r in rows if str(r["optimizer"]) == optimizer and r[objective] is not None]
        right.plot(
            [r["learning_rate"] for r in mine],
            [r[objective] for r in mine],
            "o",
            label=optimizer,
        )
    right.set_xscale("log")
    right.set_xlabel("learning rate")
    right.set_title(f"{objective} against the learning rate")
    right.legend(title="optimizer")
    right.grid(alpha=0.3)
    return save_figure(fig, path)


def write_results(
    output_dir: str, rows: list[dict[str, Any]], summary: dict[str, Any], tuner: TunerConfig
) -> dict[str, Any]:
    """Write every output file into `output_dir` (atomically); returns the summary with the
    best trial and the paths."""
    best = best_row(rows, tuner.objective)
    chosen = {
        "objective": tuner.objective,
        "score": best[tuner.objective],
        "trial": best["trial"],
        "trainer": {key: best[key] for key in HEAD_KEYS},
        "metrics": {metric: best[metric] for metric in METRICS},
    }
    with fsutil.atomic_dir(output_dir) as tmp:
        fsutil.write_json(fsutil.join(tmp, artifacts.BEST_HYPERPARAMETERS), chosen)
        fsutil.write_json(fsutil.join(tmp, artifacts.TRIALS_JSON), rows)
        fsutil.write_atomic(fsutil.join(tmp, artifacts.TRIALS_CSV), trials_csv(rows))
        fsutil.makedirs(fsutil.join(tmp, artifacts.PLOTS_DIR))
        plot_trials(
            rows, tuner.objective, fsutil.join(tmp, artifacts.PLOTS_DIR, artifacts.TRIALS_PNG)
        )
        out = {**summary, "best": chosen}
        fsutil.write_json(fsutil.join(tmp, artifacts.TUNING_SUMMARY), out)
    return {
        **out,
        "paths": {
            name: fsutil.join(output_dir, name)
            for name in (
                artifacts.BEST_HYPERPARAMETERS,
                artifacts.TRIALS_JSON,
                artifacts.TRIALS_CSV,
                artifacts.TUNING_SUMMARY,
            )
        },
    }
