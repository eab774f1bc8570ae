"""Components on object stores, all on this machine: TensorFlow's in-process `ram://`, a GCS
emulator reached by Beam and by TensorFlow's own GCS client, and an S3 emulator reached by Beam
(tests/object_stores.py; fixtures `gcs`, `s3` in conftest.py)."""

import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import uuid

import pytest
import tensorflow as tf
import yaml

from evalfixtures import export_threshold_model
from pipeline_components.core import examples, fsutil
from pipeline_components.core.beam import BeamSetup
from pipeline_components.example_gen import executor as example_gen
from pipeline_components.example_gen import layout
from pipeline_components.infra_validator.executor import serve_in_subprocess
from pipeline_components.pusher import executor as pusher
from pipeline_components.pusher.config import PusherConfig
from pipeline_components.tools import sample_data
from pipeline_components.trainer import callbacks
from pipeline_components.trainer import executor as trainer
from pipeline_components.trainer.config import TrainerConfig
from serving.client import PredictionClient

SPLIT_COUNTS = {"train": 24, "validation": 8, "test": 8}  # make_dataset(): 2 classes x (12, 4, 4)


def _counts(stats: dict) -> dict:
    return {split: s["num_examples"] for split, s in stats["splits"].items()}


# ---------------------------------------------------------------- ram:// (no network at all)


@pytest.fixture(scope="module")
def local_examples(tmp_path_factory):
    root = tmp_path_factory.mktemp("examples")
    sample_data.generate(str(root / "data"), ("circles", "squares"), (12, 4, 4), (32, 32))
    example_gen.run_example_gen(str(root / "data"), str(root / "examples"), num_shards=2)
    return str(root / "examples")


def test_trainer_writes_every_output_to_a_remote_file_system(local_examples):
    """Keras' CSVLogger failed at the end of every phase on a GFile (`no attribute 'closed'`),
    so nothing was exported to a remote output dir."""
    out = f"ram://trainer-{uuid.uuid4().hex[:8]}/1"
    config = TrainerConfig(
        weights="none", image_size=[32, 32], batch_size=8, epochs=2, steps_per_epoch=2, seed=3
    )
    result = trainer.run_trainer(local_examples, out, config)
    assert result["epochs_run"] == 2
    for rel in ("saved_model/saved_model.pb", "history.json", "plots/loss.png", "logs"):
        assert tf.io.gfile.exists(f"{out}/{rel}"), rel
    assert tf.io.gfile.exists(f"{out}/training_config.json")  # written last
    rows = list(csv.DictReader(io.StringIO(fsutil.read_text(f"{out}/history.csv"))))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert float(rows[1]["val_accuracy"]) == pytest.approx(result["final"]["val_accuracy"])
    served = tf.saved_model.load(f"{out}/saved_model")
    assert "serving_default" in served.signatures


def test_history_csv_is_rewritten_whole_and_a_resumed_epoch_replaces_its_row():
    folder = f"ram://history-{uuid.uuid4().hex[:8]}"
    path = f"{folder}/history.csv"
    first = callbacks.CsvHistory(path)
    first.on_epoch_end(0, {"loss": 1.0})
    first.on_epoch_end(1, {"loss": 0.5})
    resumed = callbacks.CsvHistory(path)  # a restarted run repeats epoch 1, now with validation
    resumed.on_epoch_end(1, {"loss": 0.25, "val_loss": 0.75})
    assert fsutil.read_text(path) == "epoch,loss,val_loss\n0,1.0,\n1,0.25,0.75\n"
    assert tf.io.gfile.listdir(folder) == ["history.csv"]  # no temporary left behind


def test_atomic_dir_on_ram_keeps_every_file_and_replaces_the_old_output():
    """TensorFlow's ram:// renamed only the directory entry: an exported SavedModel vanished."""
    final = f"ram://atomic-{uuid.uuid4().hex[:8]}/out"
    for version in ("1", "2"):
        with fsutil.atomic_dir(final) as tmp:
            fsutil.makedirs(f"{tmp}/assets.extra")
            fsutil.write_atomic(f"{tmp}/assets.extra/warmup", version)
            fsutil.makedirs(f"{tmp}/assets")
            fsutil.write_atomic(f"{tmp}/assets/labels.txt", version)
        assert fsutil.read_text(f"{final}/assets/labels.txt") == version
        assert fsutil.read_text(f"{final}/assets.extra/warmup") == version
    assert tf.io.gfile.listdir(fsutil.parent(final)) == ["out"]


# ---------------------------------------------------------------- s3:// through Beam (moto)


def test_s3_data_root_is_listed_and_read_with_the_beam_args(s3, make_dataset, tmp_path):
    """Beam's S3 file system refused to list (`Must provide one of client or options`) because
    the listing ran before any pipeline options reached it."""
    data_root = s3.upload(make_dataset(), "data")
    beam_args = s3.emulator.beam_args
    stats = example_gen.run_example_gen(
        data_root, str(tmp_path / "examples"), num_shards=2, beam_setup=BeamSetup(beam_args)
    )
    assert _counts(stats) == SPLIT_COUNTS and stats["data_root"] == data_root
    assert layout.data_fingerprint(data_root, beam_args)["num_files"] == 40
    written = examples.split_files(str(tmp_path / "examples"), "train")
    records = tf.data.TFRecordDataset(written, compression_type="GZIP")
    assert sum(1 for _ in records) == 24


# ---------------------------------------------------------------- gs:// (Beam and TensorFlow)


def test_example_gen_reads_and_writes_gcs(gcs, make_dataset):
    """Listing and reading through Beam's GCS client, shards and stats written through
    TensorFlow's GCS client, the output renamed into place on a store with no rename."""
    data_root = gcs.upload(make_dataset(), "data")
    out = f"{gcs.url}/examples"
    stats = example_gen.run_example_gen(data_root, out, num_shards=2)
    assert _counts(stats) == SPLIT_COUNTS
    assert layout.data_fingerprint(data_root)["num_files"] == 40
    assert json.loads(fsutil.read_text(f"{out}/stats.json"))["fingerprint"] == stats["fingerprint"]
    records = tf.data.TFRecordDataset(examples.split_files(out, "test"), compression_type="GZIP")
    assert sum(1 for _ in records) == 8
    names = gcs.emulator.object_names(gcs.name, "examples")
    assert names and not [n for n in names if ".tmp-" in n or "/_" in n], names


# ---------------------------------------------------------------- pushes to an object store


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return [str(export_threshold_model(root / f"t{i}", 0.3 + 0.4 * i)) for i in range(2)]


def push(model, blessing, serving: str, keep: int = 3) -> dict:
    """The Pusher's executor as the pipeline calls it, model name "m"."""
    config = PusherConfig(keep_versions=keep)
    return pusher.run_pusher(model, blessing, None, config, serving_dir=serving, model_name="m")


def _blessing(tmp_path, model) -> str:
    path = tmp_path / f"blessing-{uuid.uuid4().hex[:6]}.json"
    body = {"blessed": True, "model_fingerprint": fsutil.tree_fingerprint(model)}
    path.write_text(json.dumps(body))
    return str(path)


def _incomplete_versions(names, prefix: str, model_files: set[str]) -> list[str]:
    """Versions under prefix that count as present (saved_model.pb is there) but lack files."""
    versions: dict[str, set[str]] = {}
    for name in names:
        rest = name[len(prefix) :].split("/", 1) if name.startswith(prefix) else []
        if len(rest) == 2 and rest[0].isdigit() and not rest[1].endswith("/"):
            versions.setdefault(rest[0], set()).add(rest[1])
    return [
        f"{v}: missing {sorted(model_files - files)}"
        for v, files in versions.items()
        if "saved_model.pb" in files and not model_files <= files
    ]


def test_object_store_push_never_shows_an_incomplete_version(gcs, two_models, tmp_path):
    """A version counts as present once its saved_model.pb exists (server and Pusher agree).
    Replays every state the bucket went through (the emulator's journal of creates and deletes)
    and polls the model folder meanwhile: no state has a saved_model.pb beside missing files,
    neither while a version is copied in nor while retention deletes the old one."""
    old, new = two_models
    serving, model_path = f"{gcs.url}/serving", "serving/m/"
    model_files = {
        os.path.relpath(os.path.join(d, f), new).replace(os.sep, "/")
        for d, _, files in os.walk(new)
        for f in files
    }
    first = pusher.run_pusher(
        old, _blessing(tmp_path, old), None, PusherConfig(1), serving_dir=serving, model_name="m"
    )
    assert first["version"] == 1

    snapshots, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            snapshots.append(gcs.emulator.object_names(gcs.name, model_path))

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        second = pusher.run_pusher(
            new,
            _blessing(tmp_path, new),
            None,
            PusherConfig(1),
            serving_dir=serving,
            model_name="m",
        )
    finally:
        stop.set()
        poller.join()
    assert second["pushed"] and second["version"] == 2 and second["removed_versions"] == [1]

    state, states = set(), []
    for entry in gcs.emulator.journal(gcs.name):
        (state.add if entry["op"] == "put" else state.discard)(entry["name"])
        states.append(set(state))
    assert len(snapshots) >= 2
    for seen in [*states, *map(set, snapshots)]:
        assert not _incomplete_versions(seen, model_path, model_files)
    # staged outside the model base path before anything of version 2 appeared, then removed
    puts = [e["name"] for e in gcs.emulator.journal(gcs.name) if e["op"] == "put"]
    staged = [i for i, n in enumerate(puts) if n.startswith("serving/.staging/m-2-")]
    into_2 = [i for i, n in enumerate(puts) if n.startswith("serving/m/2/")]
    assert staged and into_2 and max(staged) < min(into_2)
    assert puts[into_2[-1]] == "serving/m/2/saved_model.pb"
    left = gcs.emulator.object_names(gcs.name, "serving/")
    assert not [n for n in left if n.startswith("serving/.staging/m-")], left
    version_2 = model_path + "2/"
    assert {n[len(version_2) :] for n in left if n.startswith(version_2)} >= model_files
    assert not [n for n in left if n.startswith(model_path + "1/")], left


def test_failed_object_store_push_leaves_no_version_and_no_staging(
    gcs, two_models, tmp_path, monkeypatch
):
    model = two_models[0]
    real_copy = tf.io.gfile.copy
    copied = []

    def failing_copy(src, dst, overwrite=False):  # the third file copied into the version fails
        if "/serving/m/1/" in dst:
            copied.append(dst)
            if len(copied) == 3:
                raise tf.errors.UnavailableError(None, None, "connection reset by peer")
        return real_copy(src, dst, overwrite)

    monkeypatch.setattr(tf.io.gfile, "copy", failing_copy)
    with pytest.raises(tf.errors.UnavailableError):
        pusher.run_pusher(
            model,
            _blessing(tmp_path, model),
            None,
            serving_dir=f"{gcs.url}/serving",
            model_name="m",
        )
    left = [n for n in gcs.emulator.object_names(gcs.name, "serving/") if not n.endswith("/")]
    # no version files, no staging copy; the registry's journal records the push rolled back
    assert len(copied) == 3 and left == ["serving/_versions/m.json"], left
    registry = json.loads(fsutil.read_text(f"{gcs.url}/serving/_versions/m.json"))
    assert "pending" not in registry and registry["versions"] == {}
    assert [e["action"] for e in registry["events"]] == ["push_abandoned"]


# ---------------------------------------------------------------- the whole pipeline on gs://


@pytest.mark.slow
def test_run_on_gcs_pushes_a_version_the_server_loads_from_gcs(gcs, make_dataset, tmp_path):
    """`transfer-pipeline run` with data_root, pipeline_root and serving_dir on (emulated) gs://,
    then `transfer-pipeline serve --model-base-path gs://...` answers over gRPC."""
    data = make_dataset()
    config = {
        "pipeline_name": "gcs",
        "pipeline_root": f"{gcs.url}/root",
        "data_root": gcs.upload(data, "data"),
        "serving_dir": f"{gcs.url}/serving",
        "model_name": "shapes",
        "example_gen": {"num_shards": 2},
        "trainer": {
            "weights": "none",
            "image_size": [32, 32],
            "head": "global_average",
            "epochs": 2,
            "batch_size": 8,
            "steps_per_epoch": None,
            "augmentation": None,
        },
        "evaluator": {"min_accuracy": 0.0},
        "infra_validator": {"num_examples": 4},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "pipeline_components.cli", "run", "--config", str(path)]
    proc = subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"pushed version 1 as stable -> {gcs.url}/serving/shapes/1" in proc.stdout

    runs = tf.io.gfile.listdir(f"{gcs.url}/root/runs")
    record = json.loads(fsutil.read_text(f"{gcs.url}/root/runs/{runs[0].rstrip('/')}/run.json"))
    assert record["status"] == "completed" and record["push"]["version"] == 1
    predictions = fsutil.read_text(
        f"{record['components']['Evaluator']['output_dir']}/predictions.csv"
    )
    rows = list(csv.DictReader(io.StringIO(predictions)))[:3]
    with (
        tempfile.TemporaryDirectory() as work,
        serve_in_subprocess(f"{gcs.url}/serving/shapes", "shapes", 120, work) as target,
        PredictionClient(target, "shapes") as client,
    ):
        assert client.wait_until_available(60) == 1
        answers = client.predict([str(data / r["filename"]) for r in rows])
    for row, answer in zip(rows, answers, strict=True):
        assert answer.class_name == row["predicted"]
        assert answer.score == pytest.approx(float(row["score"]), abs=1e-5)
