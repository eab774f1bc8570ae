"""Multi-worker training end to end: two real worker processes on 127.0.0.1
(`transfer-pipeline train --workers 2 --local`, MultiWorkerMirroredStrategy over gRPC), on an
easy split of 32x32 JPEGs (dark vs light noise), frozen VGG16 with `weights: none`, 3 epochs.

- The two workers train like one: the chief writes the same artifacts as a single-worker run of
  the same config (same files, same signatures, labels and limits in the SavedModel), the other
  worker leaves nothing behind, and the chief's model serves over gRPC with a test accuracy within
  ACCURACY_TOLERANCE of the single-worker model's. They cannot be identical: each worker shuffles
  its own half of the data, so the global batches, and the steps, differ.
- A worker killed (SIGKILL) mid-training is restarted by the launcher; the chief, which lost its
  peer, fails with exit 75 and is restarted too; both restore the chief's backup of the last
  finished epoch and the run completes: its log and history show the resume, not a new start.

Measured: 32 s and 47 s on 2 idle cores, 2.5-3 minutes with a load average of 8 (most of it
TensorFlow starting in each worker process, twice in the second test).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline_components import cli
from pipeline_components.core import examples
from pipeline_components.example_gen.executor import run_example_gen
from pipeline_components.tools import sample_data

# Both models score the same 16 test images: at most 2 of them may be classified differently.
ACCURACY_TOLERANCE = 0.125
SETTINGS = [
    "backbone=vgg16",
    "weights=none",
    "image_size=[32,32]",
    "batch_size=8",
    "epochs=3",
    "learning_rate=0.01",
    "seed=5",
]
REPO = Path(__file__).resolve().parents[1]


def _write_tone(rng: np.random.Generator):
    def write(cls: str, _index: int, path: str) -> None:
        base = 60 if cls == "dark" else 190
        pixels = np.clip(rng.normal(base, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
        with open(path, "wb") as f:
            f.write(sample_data.encode(Image.fromarray(pixels), "jpg"))

    return write


@pytest.fixture(scope="module")
def easy_examples(tmp_path_factory) -> str:
    """24/8/8 images per class in 2 shards (one whole shard per worker)."""
    root = tmp_path_factory.mktemp("easy")
    write = _write_tone(np.random.default_rng(0))
    sample_data.write_tree(
        str(root / "data"), ("dark", "light"), (24, 8, 8), "jpg", sample_data.SPLITS, write
    )
    run_example_gen(str(root / "data"), str(root / "examples"), num_shards=2)
    return str(root / "examples")


def launcher(examples_dir: str, output: Path, scratch: Path, *settings: str) -> subprocess.Popen:
    scratch.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "TMPDIR": str(scratch),  # where the non-chief worker keeps its temporary directory
        "PYTHONPATH": str(REPO),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    argv = [sys.executable, "-m", "pipeline_components.cli", "train", "--workers", "2", "--local"]
    argv += ["--max-restarts", "2", "--examples", examples_dir, "--output", str(output)]
    return subprocess.Popen(
        [*argv, *SETTINGS, *settings],
        env=env,
        cwd=str(REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    )


def collect(proc: subprocess.Popen) -> tuple[list[str], list[str], list[threading.Thread]]:
    """Read the launcher's stdout and stderr lines as they come."""
    out: list[str] = []
    err: list[str] = []
    threads = [
        threading.Thread(target=lambda s=s, b=b: b.extend(s), daemon=True)
        for s, b in ((proc.stdout, out), (proc.stderr, err))
    ]
    for t in threads:
        t.start()
    return out, err, threads


def finish(proc, threads, timeout=600) -> int:
    try:
        rc = proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    for t in threads:
        t.join(10)
    return rc


def files(root: Path) -> set[str]:
    """Relative paths of every file, TensorBoard event files by their folder."""
    found = set()
    for p in root.rglob("*"):
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            found.add(re.sub(r"events\.out\.tfevents\..*", "events.out.tfevents", rel))
    return found


def signature_specs(saved_model: Path) -> dict:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(saved_model))
    return {
        name: (repr(fn.structured_input_signature), repr(fn.structured_outputs))
        for name, fn in loaded.signatures.items()
    }


def test_split(examples_dir: str) -> tuple[list[bytes], list[str]]:
    import tensorflow as tf

    labels = examples.read_labels(examples_dir)
    images, names = [], []
    files_ = examples.split_files(examples_dir, "test")
    for s in tf.data.TFRecordDataset(files_, compression_type="GZIP"):
        parsed = examples.parse(s)
        images.append(parsed[examples.ENCODED].numpy())
        names.append(labels[int(parsed[examples.LABEL])])
    return images, names


test_split.__test__ = False  # a helper, not a test


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def one_and_two_workers(easy_examples, tmp_path_factory) -> dict:
    """The same config trained by two workers (`--workers 2 --local`) and by one process, with
    what each logged. Augmentation off: cached features, each worker running the backbone over
    its half."""
    root = tmp_path_factory.mktemp("one_and_two")
    multi, single, scratch = root / "multi", root / "single", root / "scratch"
    proc = launcher(easy_examples, multi, scratch, "augmentation=null", "steps_per_epoch=null")
    out, err, threads = collect(proc)
    rc = finish(proc, threads)
    argv = ["train", "--examples", easy_examples, "--output", str(single), *SETTINGS]
    lines = _Lines()
    logger = logging.getLogger("pipeline_components")
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        single_rc = cli.main([*argv, "augmentation=null", "steps_per_epoch=null"])
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    return {
        "multi": multi,
        "single": single,
        "scratch": scratch,
        "rc": rc,
        "out": out,
        "log": "".join(err),
        "single_rc": single_rc,
        "single_log": lines.lines,
    }


@pytest.mark.slow
def test_two_workers_train_like_one_and_the_chief_exports_a_model_that_serves(
    one_and_two_workers, easy_examples, tmp_path
):
    import tensorflow as tf

    from serving.client import PredictionClient
    from serving.server import start_server

    runs = one_and_two_workers
    multi, single, scratch = runs["multi"], runs["single"], runs["scratch"]
    log, out = runs["log"], runs["out"]
    assert runs["rc"] == 0, log[-6000:]
    assert any(line.startswith("trained 3 epochs") for line in out), out  # the chief's result
    assert "[worker 1] worker 1: done" in log

    # the other worker wrote only to its own temporary directory, and removed it
    (temp_dir,) = re.findall(r"worker 1/2 \(writes to (\S+)\)", log)
    assert Path(temp_dir).parent == scratch and not Path(temp_dir).exists()
    assert f"removed its temporary directory {temp_dir}" in log
    assert list(scratch.iterdir()) == []

    assert runs["single_rc"] == 0

    # the chief's output is a single-worker run's output, file for file
    assert files(multi) == files(single)
    record = json.loads((multi / "training_config.json").read_text())
    one = json.loads((single / "training_config.json").read_text())
    assert set(record["summary"]) == set(one["summary"]) | {"workers"}
    summary = record["summary"]
    assert summary["workers"] == 2 and summary["replicas"] == 2 and summary["epochs_run"] == 3
    assert summary["cached_features"] is True and summary["resumed_from_epoch"] is None
    assert json.loads((multi / "history.json").read_text())["epoch"] == [1, 2, 3]

    # the same SavedModel: signatures, preprocessing inside, labels, limits, warmup requests
    assert signature_specs(multi / "saved_model") == signature_specs(single / "saved_model")
    for asset in ("assets/labels.txt", "assets/serving_limits.json"):
        assert (multi / "saved_model" / asset).read_bytes() == (
            single / "saved_model" / asset
        ).read_bytes()
    warmup = "assets.extra/tf_serving_warmup_requests"
    assert (multi / "saved_model" / warmup).read_bytes() == (
        single / "saved_model" / warmup
    ).read_bytes()

    # the chief's model serves over gRPC; accuracy on the test split as the single worker's
    images, truth = test_split(easy_examples)
    shutil.copytree(multi / "saved_model", tmp_path / "serving" / "easy" / "1")
    with (
        start_server(str(tmp_path / "serving" / "easy"), "easy") as server,
        PredictionClient(server.target, "easy", labels=["dark", "light"], timeout=30) as client,
    ):
        served = [p.class_name for p in client.predict(images)]
    reference = tf.saved_model.load(str(single / "saved_model")).signatures["serving_default"]
    alone = [c.decode() for c in reference(images=tf.constant(images))["classes"].numpy()]
    acc_multi = np.mean([p == t for p, t in zip(served, truth, strict=True)])
    acc_single = np.mean([p == t for p, t in zip(alone, truth, strict=True)])
    assert acc_single >= 0.75, f"the easy split is not learnt by one worker: {acc_single}"
    assert abs(acc_multi - acc_single) <= ACCURACY_TOLERANCE, (acc_multi, acc_single)


@pytest.mark.slow
def test_one_process_and_two_workers_go_through_one_training_skeleton(one_and_two_workers):
    """Issue 27: one skeleton (trainer/training.py) with two runtimes. Both runs log the same
    start line, record the same per-epoch fields, pick the best epoch by the same monitor from
    their own records, and write the same summary and training record, the group adding only
    how many workers trained."""
    runs = one_and_two_workers
    assert runs["rc"] == 0 and runs["single_rc"] == 0, runs["log"][-6000:]
    started = r"training vgg16 on 48 train / 16 validation images, 2 classes, 32x32: cached"
    started += r" features, float32, (.+)$"
    (alone,) = [m[1] for line in runs["single_log"] if (m := re.search(started, line))]
    group = re.findall(r"worker (\d)/2 \(.*?\): " + started, runs["log"], re.M)
    assert alone == "1 replica(s)"
    assert sorted(group) == [(rank, "2 replicas in sync, global batch 8") for rank in "01"]

    records = {
        name: json.loads((runs[name] / "training_config.json").read_text())
        for name in ("single", "multi")
    }
    one, two = records["single"], records["multi"]
    assert list(one) == list(two)  # the same training record, written by one write_outputs
    for key in ("config", "labels", "image_size", "head"):
        assert one[key] == two[key], key
    sizes = {"train": 48, "validation": 16}
    assert one["data"]["num_examples"] == two["data"]["num_examples"] == sizes
    # one summary definition: the same fields in the same order, the group adds `workers`
    assert [k for k in two["summary"] if k != "workers"] == list(one["summary"])
    assert two["summary"]["workers"] == 2 and "workers" not in one["summary"]
    for field in ("epochs_run", "monitor", "cached_features", "num_classes", "trainable_params"):
        assert one["summary"][field] == two["summary"][field], field
    assert (one["summary"]["replicas"], two["summary"]["replicas"]) == (1, 2)

    # one per-epoch record: the same fields per epoch in history.json and history.csv
    histories = {
        name: json.loads((runs[name] / "history.json").read_text()) for name in ("single", "multi")
    }
    assert list(histories["single"]) == list(histories["multi"])
    assert {"epoch", "phase", "seconds", "loss", "accuracy", "val_loss", "val_accuracy"} <= set(
        histories["multi"]
    )
    assert "images_per_sec" in histories["multi"]
    for history in histories.values():
        assert history["epoch"] == [1, 2, 3] and history["phase"] == ["head"] * 3
    csv_headers = [
        (runs[name] / "history.csv").read_text().splitlines()[0] for name in ("single", "multi")
    ]
    assert csv_headers[0] == csv_headers[1]

    # the best checkpoint follows trainer.monitor over each run's own records
    for name, record in records.items():
        summary, history = record["summary"], histories[name]
        assert summary["monitor"] == "val_accuracy"
        best = summary["best_epoch"]
        assert summary["best"]["epoch"] == best
        assert summary["best"]["val_accuracy"] == history["val_accuracy"][best - 1]
        assert summary["best"]["val_accuracy"] == max(history["val_accuracy"])


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_the_group_resumes_after_the_last_finished_epoch(
    easy_examples, tmp_path
):
    out_dir, scratch = tmp_path / "trainer", tmp_path / "scratch"
    backup = out_dir / "checkpoints" / "backup_multi_worker_head" / "checkpoint"
    # augmentation on: the backbone runs every epoch (live features); 6 steps of 8 per epoch
    proc = launcher(easy_examples, out_dir, scratch, "steps_per_epoch=6")
    out, err, threads = collect(proc)
    try:
        deadline = time.monotonic() + 400
        while not backup.exists():  # epoch 1 finished and backed up
            assert proc.poll() is None and time.monotonic() < deadline, "".join(err[-40:])
            time.sleep(0.1)
        (pid,) = [int(m) for m in re.findall(r"started worker 1 \(pid (\d+)\)", "".join(err))]
        os.kill(pid, signal.SIGKILL)
        backed_up = int(re.search(r'"ckpt-(\d+)"', backup.read_text())[1])
        before = {
            r["epoch"]: r
            for r in json.loads((out_dir / "checkpoints" / "epochs.json").read_text())
            if r["epoch"] <= backed_up
        }
    finally:
        rc = finish(proc, threads)
    log = "".join(err)
    assert rc == 0, log[-6000:]
    assert "worker 1 exited (signal SIGKILL); restarting it" in log
    # the chief lost its peer: it failed with 75 (not 1: a configuration error is not retried)
    assert "worker 0 exited (exit status 75); restarting it" in log
    assert "lost a peer worker" in log

    # both restored the chief's backup of the last finished epoch, and went on from there
    restored = r"^\S+ INFO \S+ worker 0/2: restored the head phase after epoch (\d)"
    resumed = [int(e) for e in re.findall(restored, log, re.M)]
    other = re.findall(r"\[worker 1\] .* worker 1/2: restored the head phase after epoch (\d)", log)
    assert len(resumed) == 1 and other == [str(resumed[0])]
    k = resumed[0]
    assert backed_up <= k < 3
    # the chief's epoch lines (core/logs.py: `HH:MM:SS epoch N/M (phase): ...`, no logger name)
    chief_epochs = [int(e) for e in re.findall(r"^\S+ epoch (\d)/3 \(head\)", log, re.M)]
    assert sorted(set(chief_epochs)) == [1, 2, 3]
    for e in range(1, k + 1):  # the finished epochs were not trained again
        assert chief_epochs.count(e) == 1, chief_epochs

    history = json.loads((out_dir / "history.json").read_text())
    assert history["epoch"] == [1, 2, 3]
    for e, record in before.items():  # the records of the finished epochs are the first run's
        assert history["loss"][e - 1] == record["loss"]
        assert history["val_accuracy"][e - 1] == record["val_accuracy"]
    summary = json.loads((out_dir / "training_config.json").read_text())["summary"]
    assert summary["resumed_from_epoch"] == k and summary["epochs_run"] == 3
    assert (out_dir / "saved_model" / "saved_model.pb").exists()
    assert not (out_dir / "checkpoints" / "backup_multi_worker_head").exists()  # cleaned up
    # the restarted worker cleaned up what it and its killed predecessor wrote (TensorFlow's own
    # autograph files of the killed processes may stay)
    assert [p for p in scratch.iterdir() if p.name.startswith("transfer-pipeline-")] == []
