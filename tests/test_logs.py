"""What a command logs (core/logs.py): progress lines in text, one JSON object per line with
`--log-format json`, warnings only with `--quiet`; the Trainer's progress callbacks."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from pipeline_components.core import logs


def record_of(logger, level, message, **progress):
    """The LogRecord a call makes, formatted by nothing yet."""
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        if progress:
            logs.progress(logger, message, **progress)
        else:
            logger.log(level, message)
    finally:
        logger.removeHandler(handler)
    return records[0]


def test_text_shows_a_progress_event_as_its_line_and_others_as_before():
    log = logging.getLogger("tp.test.text")
    fmt = logs.TextFormatter()
    line = fmt.format(record_of(log, 0, "[5/9] Trainer started", event="component", index=5))
    assert line.split(" ", 1)[1] == "[5/9] Trainer started"  # after HH:MM:SS
    line = fmt.format(record_of(log, logging.WARNING, "careful"))
    assert line.split(" ", 1)[1] == "WARNING tp.test.text: careful"


def test_json_is_one_object_per_record_with_the_event_fields():
    log = logging.getLogger("tp.test.json")
    fmt = logs.JsonFormatter()
    record = record_of(log, 0, "epoch 3/20 (head): loss=0.5", event="epoch", epoch=3, loss=0.5)
    out = json.loads(fmt.format(record))
    assert out["level"] == "INFO" and out["logger"] == "tp.test.json"
    assert out["message"] == "epoch 3/20 (head): loss=0.5"
    assert (out["event"], out["epoch"], out["loss"]) == ("epoch", 3, 0.5)
    assert out["time"].endswith("+00:00")
    with pytest.raises(ValueError, match="reserved"):
        logs.progress(log, "x", event="e", level="clash")


def test_options_are_read_before_beam_args_and_bad_values_left_to_the_parser():
    assert logs.options(["--quiet", "--log-format", "json", "epochs=2"]) == (True, "json")
    assert logs.options(["--log-format=json"]) == (False, "json")
    assert logs.options(["--", "--quiet", "--log-format=json"]) == (False, "text")  # Beam's
    assert logs.options(["--log-format", "xml"]) == (False, "text")


def cli_process(*argv):
    """`transfer-pipeline ...` in its own process, as a scheduler runs it: logging is set up
    by the command (in-process, pytest's own logging wins, as logging.basicConfig would let it)."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline_components.cli", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


def test_a_component_command_logs_json_or_only_warnings(make_dataset, tmp_path):
    data = make_dataset(per_split=(4, 2, 2))
    argv = ["example-gen", "--data-root", data, "--num-shards", "1"]
    done = cli_process(*argv, "--output", tmp_path / "a", "--log-format", "json")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    assert any(r["message"].startswith("ExampleGen: 16 files") for r in records)
    assert not [line for line in done.stderr.splitlines() if " INFO " in line]  # none as text
    done = cli_process(*argv, "--output", tmp_path / "b", "--quiet")
    assert done.returncode == 0 and "INFO" not in done.stderr
    assert "ExampleGen: 16 files" not in done.stderr
    assert "wrote 16 examples to" in done.stdout  # what it prints stays
    argv = ["example-gen", "--data-root", tmp_path / "nope", "--output", tmp_path / "c"]
    done = cli_process(*argv, "--log-format", "json")
    assert done.returncode == 1  # its one error line is JSON too
    last = json.loads(done.stderr.strip().splitlines()[-1])
    assert last["level"] == "ERROR" and "transfer-pipeline example-gen: error:" in last["message"]


def test_trainer_progress_within_an_epoch(tmp_path, caplog):
    """Its backbone pass reports as a Beam job (features/writer.py; tests/test_features.py)."""
    from pipeline_components.trainer.callbacks import EpochLog

    caplog.set_level(logging.INFO, logger="pipeline_components.trainer.callbacks")
    epoch = EpochLog(str(tmp_path / "epochs.json"), 64, "head", 3, 4, interval=0.0)
    epoch.on_epoch_begin(0)
    epoch.on_train_batch_end(1, {"loss": 0.7})
    epoch.on_epoch_end(0, {"loss": 0.6, "accuracy": 0.5, "val_loss": 0.7, "val_accuracy": 0.4})
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "epoch 1/3 (head): step 2/4, loss=0.7000"
    assert messages[1].startswith(
        "epoch 1/3 (head): loss=0.6000, accuracy=0.5000, val_loss=0.7000, val_accuracy=0.4000 in "
    )
    fields = [getattr(r, logs.FIELDS) for r in caplog.records]
    assert fields[0] == {**fields[0], "event": "step", "step": 2, "steps": 4}
    assert fields[1]["event"] == "epoch" and fields[1]["val_accuracy"] == 0.4
