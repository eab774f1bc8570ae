"""`checkpoints/`: what a killed Trainer needs to resume at its last finished epoch, and what a
finished one keeps (the best weights)."""

from __future__ import annotations

import json
import logging

from pipeline_components.core import artifacts, fsutil
from pipeline_components.core.errors import PipelineError

log = logging.getLogger(__name__)


def checkpoint_paths(output_dir: str) -> dict[str, str]:
    """Every file and folder under `checkpoints/`, by role."""
    ckpt = fsutil.join(output_dir, artifacts.CHECKPOINTS_DIR)
    return {
        "dir": ckpt,
        "run_state": fsutil.join(ckpt, "run_state.json"),
        "epochs": fsutil.join(ckpt, "epochs.json"),
        "best_weights": fsutil.join(ckpt, "best.weights.npz"),
        "best_state": fsutil.join(ckpt, "best.json"),
        "head_done": fsutil.join(ckpt, "head_phase_done.json"),
        "head_weights": fsutil.join(ckpt, "head_phase.weights.npz"),
        "backup_head": fsutil.join(ckpt, "backup_head"),
        "backup_fine_tune": fsutil.join(ckpt, "backup_fine_tune"),
        # multi-worker runs (distributed.py): tf.train.Checkpoint backups, one folder a phase
        "backup_multi_worker_head": fsutil.join(ckpt, "backup_multi_worker_head"),
        "backup_multi_worker_fine_tune": fsutil.join(ckpt, "backup_multi_worker_fine_tune"),
        # backbone features the run computed itself (trainer/datasets.py `cached_features`)
        "features": fsutil.join(ckpt, "features"),
    }


def prepare_checkpoints(output_dir: str, run_key: dict) -> bool:
    """True when `checkpoints/` holds an unfinished run of the same config and data (resume);
    otherwise clears checkpoints and the logs of any earlier run and starts fresh."""
    paths = checkpoint_paths(output_dir)
    if fsutil.exists(paths["run_state"]):
        try:
            previous = fsutil.read_json(paths["run_state"], "checkpoint state")
        except PipelineError:
            previous = None
        if previous == json.loads(json.dumps(run_key)):
            return True
        log.info("checkpoints in %s are from another config or data; starting over", paths["dir"])
    for stale in (paths["dir"], fsutil.join(output_dir, artifacts.LOGS_DIR)):
        fsutil.rmtree(stale)
    history_csv = fsutil.join(output_dir, artifacts.HISTORY_CSV)
    if fsutil.exists(history_csv):
        fsutil.gfile().remove(history_csv)
    fsutil.makedirs(paths["dir"])
    fsutil.write_json(paths["run_state"], run_key)
    return False


def finish_checkpoints(output_dir: str) -> None:
    """After a complete run keep only the best weights; the resume state goes."""
    paths = checkpoint_paths(output_dir)
    for key in (
        "backup_head",
        "backup_fine_tune",
        "backup_multi_worker_head",
        "backup_multi_worker_fine_tune",
        "features",
    ):
        fsutil.rmtree(paths[key])
    for key in ("run_state", "epochs", "head_done", "head_weights"):
        if fsutil.exists(paths[key]):
            fsutil.gfile().remove(paths[key])
