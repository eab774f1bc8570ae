"""The multi-worker Trainer's parts that need no cluster: TF_CONFIG (read, built for local workers
and from a Kubernetes Indexed Job), input sharding over real TFRecords, the checks a group makes,
the local launcher's restart policy (with real processes), and the command line."""

from __future__ import annotations

import json
import sys
import types

import pytest

from pipeline_components import cli
from pipeline_components.core import examples
from pipeline_components.core.errors import PipelineError
from pipeline_components.example_gen.executor import run_example_gen
from pipeline_components.trainer import cluster

K8S_ENV = {
    "JOB_NAME": "train-multiworker",
    "TRAINER_SERVICE": "train-multiworker",
    "POD_NAMESPACE": "transfer-pipeline",
}
ADDRESSES = [
    "train-multiworker-0.train-multiworker.transfer-pipeline.svc:2222",
    "train-multiworker-1.train-multiworker.transfer-pipeline.svc:2222",
]


@pytest.mark.parametrize("index", [0, 1])
def test_tf_config_from_the_completion_index_of_a_two_worker_job(index):
    env = {**K8S_ENV, "JOB_COMPLETION_INDEX": str(index)}
    spec = cluster.tf_config_from_k8s(2, env)
    assert spec == {"cluster": {"worker": ADDRESSES}, "task": {"type": "worker", "index": index}}
    me = cluster.parse_tf_config(json.dumps(spec))
    assert me.num_workers == 2 and me.rank == index and me.is_chief is (index == 0)
    # the same through TensorFlow's own resolver, which MultiWorkerMirroredStrategy uses
    import tensorflow as tf

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TF_CONFIG", json.dumps(spec))
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        assert resolver.cluster_spec().as_dict() == {"worker": ADDRESSES}
        assert (resolver.task_type, resolver.task_id) == ("worker", index)


def test_tf_config_from_k8s_flags_win_and_namespace_is_optional():
    env = {"JOB_COMPLETION_INDEX": "1"}
    spec = cluster.tf_config_from_k8s(3, env, job_name="j", service="s", port=9000)
    assert spec["cluster"]["worker"] == ["j-0.s:9000", "j-1.s:9000", "j-2.s:9000"]
    assert spec["task"]["index"] == 1


@pytest.mark.parametrize(
    "env, workers, message",
    [
        ({}, 2, "JOB_COMPLETION_INDEX is not set"),
        ({"JOB_COMPLETION_INDEX": "x"}, 2, "is not an integer"),
        ({"JOB_COMPLETION_INDEX": "2"}, 2, "is not below --workers 2"),
        ({"JOB_COMPLETION_INDEX": "0"}, 1, "at least 2 workers"),
        ({"JOB_COMPLETION_INDEX": "0", "JOB_NAME": "j"}, 2, "give --k8s-service or set"),
    ],
)
def test_tf_config_from_k8s_refuses_what_cannot_be_a_cluster(env, workers, message):
    with pytest.raises(PipelineError, match=message) as e:
        cluster.tf_config_from_k8s(workers, env)
    assert "\n" not in str(e.value)


def test_tf_config_with_a_chief_ranks_it_first():
    spec = {"cluster": {"chief": ["c:1"], "worker": ["w:1", "w:2"]}}
    chief = cluster.parse_tf_config(json.dumps({**spec, "task": {"type": "chief", "index": 0}}))
    worker = cluster.parse_tf_config(json.dumps({**spec, "task": {"type": "worker", "index": 1}}))
    assert chief.addresses == ("c:1", "w:1", "w:2") and chief.is_chief and chief.rank == 0
    assert worker.rank == 2 and not worker.is_chief and worker.num_workers == 3


@pytest.mark.parametrize(
    "text, message",
    [
        ("{", "not a TensorFlow cluster spec"),
        ('{"cluster": {"worker": ["a:1"], "ps": ["p:1"]}, "task": {"type": "worker", "index": 0}}',
         "cluster has ps tasks"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}',
         "task worker 3 is not in the cluster"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "evaluator", "index": 0}}',
         "task type must be chief or worker"),
    ],
)  # fmt: skip
def test_bad_tf_config_is_one_line_naming_it(text, message):
    with pytest.raises(PipelineError, match=message) as e:
        cluster.parse_tf_config(text)
    assert str(e.value).startswith("TF_CONFIG:") and "\n" not in str(e.value)


def test_only_more_than_one_worker_means_multi_worker():
    one = {"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}
    two = cluster.tf_config(["a:1", "b:2"], 1)
    assert cluster.multi_worker_cluster({}) is None
    assert cluster.multi_worker_cluster({"TF_CONFIG": json.dumps(one)}) is None
    assert cluster.multi_worker_cluster({"TF_CONFIG": json.dumps(two)}).rank == 1


def test_free_ports_are_distinct_and_bindable():
    import socket

    ports = cluster.free_ports(4)
    assert len(set(ports)) == 4
    for p in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


# --- input sharding, on real ExampleGen output ------------------------------------------------


def _filenames(ds) -> list[str]:
    return [e.decode() for e in ds]


@pytest.mark.parametrize("num_shards", [1, 2, 3])
def test_two_workers_read_disjoint_parts_that_make_up_the_split(make_dataset, tmp_path, num_shards):
    """With at least as many shards as workers each worker reads whole shards, else every
    second record; either way, the two parts are disjoint and together the whole split, also
    when training shuffles (same seed on both workers or not)."""
    import tensorflow as tf

    from pipeline_components.trainer import inputs

    out = str(tmp_path / "examples")
    run_example_gen(str(make_dataset(per_split=(9, 2, 2))), out, num_shards=num_shards)
    files = examples.split_files(out, "train")
    all_names = sorted(
        examples.parse(s)[examples.FILENAME].numpy().decode()
        for s in tf.data.TFRecordDataset(files, compression_type="GZIP")
    )
    assert len(all_names) == 18
    parts = []
    for index in range(2):
        picked, record_shard = inputs.shard_inputs(files, (2, index))
        assert (record_shard is None) == (num_shards >= 2)
        ds = inputs.make_dataset(
            out,
            "train",
            image_size=(32, 32),
            batch_size=4,
            num_classes=2,
            training=True,
            seed=7 + index,  # each worker shuffles with its own seed
            shard=(2, index),
        )
        n = sum(int(x.shape[0]) for x, _ in ds)
        names = inputs.read_records(picked, shuffle_files=False, seed=None, deterministic=True).map(
            lambda s: examples.parse(s)[examples.FILENAME]
        )
        if record_shard is not None:
            names = names.shard(*record_shard)
        parts.append(sorted(_filenames(names.as_numpy_iterator())))
        assert n == len(parts[-1])
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == all_names


def test_group_checks_batch_split_and_split_sizes():
    from pipeline_components.trainer import distributed
    from pipeline_components.trainer.config import TrainerConfig

    def group(replicas, workers):
        me = cluster.Cluster(tuple(f"h:{i}" for i in range(workers)), "worker", 0, 0)
        return types.SimpleNamespace(
            strategy=types.SimpleNamespace(num_replicas_in_sync=replicas), cluster=me
        )

    plan = types.SimpleNamespace(num_examples={"train": 10, "validation": 3})
    distributed.check_cluster(TrainerConfig(batch_size=8), plan, group(4, 2))
    with pytest.raises(PipelineError, match="batch_size: 10 does not split evenly over 4"):
        distributed.check_cluster(TrainerConfig(batch_size=10), plan, group(4, 2))
    with pytest.raises(PipelineError, match="validation split has 3 examples, fewer than the 4"):
        distributed.check_cluster(TrainerConfig(batch_size=8), plan, group(4, 4))


# --- the local launcher, with real worker processes -------------------------------------------

# A worker stand-in: records its TF_CONFIG, then exits with the status its plan says for its
# n-th start (plans: {"<index>": [status of start 1, start 2, ...]}, default 0).
FAKE_WORKER = r"""
import json, os, sys, pathlib
spec = json.loads(os.environ["TF_CONFIG"])
i = spec["task"]["index"]
log = pathlib.Path(sys.argv[1]) / f"worker{i}.starts"
starts = len(log.read_text().splitlines()) if log.exists() else 0
with log.open("a") as f:
    f.write(json.dumps(spec) + "\n")
plan = json.loads(sys.argv[2]).get(str(i), [])
code = plan[starts] if starts < len(plan) else 0
print(f"worker {i} start {starts + 1} exits {code}", flush=True)
if code == "hang":
    import time; time.sleep(60)
sys.exit(code)
"""


def _launch(tmp_path, plans, workers=2, max_restarts=2):
    script = tmp_path / "worker.py"
    script.write_text(FAKE_WORKER)
    argv = [sys.executable, str(script), str(tmp_path), json.dumps(plans)]
    local = cluster.LocalCluster(argv, workers, max_restarts=max_restarts, restart_delay=0.05)
    rc = local.run()
    starts = {}
    for i in range(workers):
        log = tmp_path / f"worker{i}.starts"
        starts[i] = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    return rc, starts, local


def test_launcher_gives_each_worker_its_tf_config_and_restarts_a_lost_one(tmp_path, capfd):
    rc, starts, local = _launch(tmp_path, {"1": [75, 0]})  # 75, then success
    assert rc == 0
    assert [len(starts[0]), len(starts[1])] == [1, 2]
    addresses = local.addresses
    assert len(set(addresses)) == 2 and all(a.startswith("127.0.0.1:") for a in addresses)
    for i in range(2):
        for spec in starts[i]:  # a restarted worker gets the very same TF_CONFIG
            assert spec == {
                "cluster": {"worker": addresses},
                "task": {"type": "worker", "index": i},
            }
    out, err = capfd.readouterr()
    assert "worker 0 start 1 exits 0" in out  # the chief's output as its own
    assert "[worker 1] worker 1 start 1 exits 75" in err  # the others', prefixed
    assert "worker 1 exited (exit status 75); restarting it" in err


def test_launcher_stops_the_group_on_a_configuration_error(tmp_path, capfd):
    rc, starts, local = _launch(tmp_path, {"0": [1], "1": ["hang"]})
    assert rc == 1 and len(starts[0]) == 1 and len(starts[1]) <= 1  # not restarted
    assert local.procs[1].returncode < 0  # the other worker was stopped, not left running
    assert "worker 0 failed (exit status 1, not retried)" in capfd.readouterr().err


def test_launcher_gives_up_after_max_restarts(tmp_path, capfd):
    rc, starts, _ = _launch(tmp_path, {"1": [75, 75, 75, 75]}, max_restarts=2)
    assert rc == 75 and len(starts[1]) == 3  # the first start and two restarts
    assert "worker 1 failed (exit status 75, no restarts left)" in capfd.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workers", "2"], "--workers needs --local or --tf-config-from-k8s"),
        (["--local"], "--workers N is required"),
        (["--local", "--tf-config-from-k8s", "--workers", "2"], "exclude each other"),
        (["--local", "--workers", "0"], "--workers must be >= 1"),
    ],
)
def test_multi_worker_flags_are_usage_errors(args, message, tmp_path, capsys):
    argv = ["train", "--examples", str(tmp_path), "--output", str(tmp_path / "t"), *args]
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_bad_tf_config_fails_the_train_command_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"ps": ["p:1"]}, "task": {}}')
    argv = ["train", "--examples", str(tmp_path), "--output", str(tmp_path / "t")]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("transfer-pipeline train: error: TF_CONFIG:")
    assert not (tmp_path / "t").exists()


def test_a_group_cannot_form_in_a_process_that_already_ran_tensorflow(tmp_path, monkeypatch):
    """`transfer-pipeline run` runs TensorFlow before the Trainer: with a multi-worker TF_CONFIG
    the Trainer refuses in one line (the strategy must be made first) and writes nothing."""
    import tensorflow as tf

    from pipeline_components.trainer import executor
    from pipeline_components.trainer.config import TrainerConfig

    assert float(tf.constant(1.0) + 1) == 2.0  # TensorFlow's runtime is up in this process
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps(cluster.tf_config(["127.0.0.1:1", "127.0.0.1:2"], 0))
    )
    out = tmp_path / "trainer"
    with pytest.raises(PipelineError, match="TensorFlow was already initialised") as e:
        executor.run_trainer(str(tmp_path / "examples"), str(out), TrainerConfig(weights="none"))
    assert "\n" not in str(e.value) and not out.exists()


def test_a_non_finite_gradient_anywhere_makes_every_replica_skip_the_step():
    """Under mixed precision LossScaleOptimizer decides per replica whether to apply a step; the
    replicas must decide alike, so one non-finite gradient turns every gradient NaN."""
    import numpy as np
    import tensorflow as tf

    from pipeline_components.trainer.steps import agree_on_finite

    ctx = tf.distribute.get_replica_context()  # the default strategy's single replica
    fine = [tf.constant([1.0, 2.0]), tf.constant([[3.0]], tf.float16)]
    kept = agree_on_finite(ctx, fine)
    assert [k.dtype for k in kept] == [tf.float32, tf.float16]
    np.testing.assert_array_equal(kept[0].numpy(), [1.0, 2.0])
    np.testing.assert_array_equal(kept[1].numpy(), [[3.0]])
    spoilt = agree_on_finite(ctx, [tf.constant([1.0, np.inf]), tf.constant([[3.0]], tf.float16)])
    assert all(np.isnan(g.numpy()).all() for g in spoilt)
