"""Serving building blocks without a server: batching, configs, version policy, tensors."""

from __future__ import annotations

import os
import threading
import time

import grpc
import numpy as np
import pytest

from pipeline_components.core.artifacts import served_versions
from pipeline_components.core.errors import PipelineError
from serving import model_config
from serving.batching import BatchingParameters, BatchScheduler, parse_batching_parameters
from serving.errors import StatusError, clean_tf_message
from serving.model_config import ModelConfig, parse_model_server_config
from serving.servables import versions_to_unload
from serving.tensors import to_ndarray, to_tensor_proto

pytestmark = pytest.mark.timeout(60)


# -- batching -------------------------------------------------------------------------------


class Recorder:
    """A batch function that records the batch sizes it saw and can be held on an Event."""

    def __init__(self, gate: threading.Event | None = None):
        self.sizes: list[int] = []
        self.gate = gate

    def __call__(self, inputs):
        if self.gate is not None:
            self.gate.wait(10)
        x = inputs["x"]
        if (x < 0).any():
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, "negative input")
        self.sizes.append(len(x))
        return {"y": x * 2, "n": np.full(len(x), len(x))}


def submit_all(scheduler, fn, arrays, key="k"):
    return [scheduler.submit(key, fn, {"x": a}) for a in arrays]


def test_batching_merges_concurrent_tasks_and_splits_results_back():
    scheduler = BatchScheduler(
        BatchingParameters(max_batch_size=8, batch_timeout_micros=200_000, num_batch_threads=1)
    )
    try:
        fn = Recorder()
        arrays = [np.arange(i, i + 2, dtype=np.float32) for i in range(0, 8, 2)]  # 4 tasks x 2
        futures = submit_all(scheduler, fn, arrays)
        results = [f.result(5) for f in futures]
    finally:
        scheduler.stop()
    assert fn.sizes == [8]  # one call: the batch filled up before the timeout
    for array, result in zip(arrays, results, strict=True):
        np.testing.assert_array_equal(result["y"], array * 2)
        np.testing.assert_array_equal(result["n"], [8, 8])


def test_batching_runs_a_partial_batch_after_the_timeout():
    scheduler = BatchScheduler(
        BatchingParameters(max_batch_size=8, batch_timeout_micros=50_000, num_batch_threads=1)
    )
    try:
        start = time.monotonic()
        result = scheduler.submit("k", Recorder(), {"x": np.ones(3, np.float32)}).result(5)
        waited = time.monotonic() - start
    finally:
        scheduler.stop()
    assert result["n"].tolist() == [3, 3, 3]
    assert 0.04 <= waited < 2.0


def test_batching_rejects_oversized_task_and_full_queue_like_tf_serving():
    gate = threading.Event()
    params = BatchingParameters(
        max_batch_size=2, batch_timeout_micros=0, max_enqueued_batches=1, num_batch_threads=1
    )
    scheduler = BatchScheduler(params)
    try:
        with pytest.raises(StatusError) as big:
            scheduler.submit("k", Recorder(), {"x": np.ones(3, np.float32)})
        assert big.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "Task size 3 is larger than maximum input batch size 2" in big.value.message

        fn = Recorder(gate)
        running = scheduler.submit("k", fn, {"x": np.ones(2, np.float32)})  # taken by the thread
        deadline = time.monotonic() + 5
        while scheduler.num_batches == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        queued = scheduler.submit("k", fn, {"x": np.ones(2, np.float32)})  # the one queued batch
        with pytest.raises(StatusError) as full:
            scheduler.submit("k", fn, {"x": np.ones(1, np.float32)})
        assert full.value.code == grpc.StatusCode.UNAVAILABLE
        assert "queue to which this task was submitted is full" in full.value.message
        other_queue = scheduler.submit("other", Recorder(), {"x": np.ones(1, np.float32)})
        gate.set()
        assert running.result(5)["n"].tolist() == [2, 2]
        assert queued.result(5)["n"].tolist() == [2, 2]
        assert other_queue.result(5)["n"].tolist() == [1]
    finally:
        gate.set()
        scheduler.stop()


def test_batching_pads_to_allowed_batch_sizes_and_trims_the_padding():
    params = BatchingParameters(
        max_batch_size=8, batch_timeout_micros=0, num_batch_threads=1, allowed_batch_sizes=(4, 8)
    )
    scheduler = BatchScheduler(params)
    try:
        fn = Recorder()
        result = scheduler.submit("k", fn, {"x": np.array([1.0, 2.0, 3.0], np.float32)}).result(5)
    finally:
        scheduler.stop()
    assert fn.sizes == [4]
    assert result["y"].tolist() == [2.0, 4.0, 6.0]


def test_batching_a_bad_task_fails_alone_not_its_batch_mates():
    gate = threading.Event()
    scheduler = BatchScheduler(
        BatchingParameters(max_batch_size=8, batch_timeout_micros=100_000, num_batch_threads=1)
    )
    try:
        fn = Recorder(gate)
        good = scheduler.submit("k", fn, {"x": np.ones(2, np.float32)})
        bad = scheduler.submit("k", fn, {"x": -np.ones(1, np.float32)})
        gate.set()
        assert good.result(5)["y"].tolist() == [2.0, 2.0]
        with pytest.raises(StatusError, match="negative input"):
            bad.result(5)
    finally:
        scheduler.stop()


def test_batching_requires_a_shared_leading_dimension():
    scheduler = BatchScheduler(BatchingParameters(num_batch_threads=1))
    try:
        with pytest.raises(StatusError, match="at least one dimension"):
            scheduler.submit("k", Recorder(), {"x": np.float32(1.0)})
        with pytest.raises(StatusError, match="equal 0th-dimension"):
            scheduler.submit("k", Recorder(), {"x": np.ones(2), "z": np.ones(3)})
    finally:
        scheduler.stop()


def test_parse_batching_parameters_text_proto():
    text = """
        max_batch_size { value: 32 }
        batch_timeout_micros { value: 5000 }
        max_enqueued_batches { value: 100 }
        num_batch_threads { value: 2 }
        allowed_batch_sizes: 8
        allowed_batch_sizes: 32
        pad_variable_length_inputs: true
    """
    params = parse_batching_parameters(text)
    assert params == BatchingParameters(32, 5000, 100, 2, (8, 32))
    assert parse_batching_parameters("").max_batch_size == 1000  # TF Serving's default
    with pytest.raises(PipelineError, match="not a valid BatchingParameters"):
        parse_batching_parameters("max_batch_size: 32")  # a wrapper needs { value: ... }
    with pytest.raises(PipelineError, match="must equal max_batch_size"):
        parse_batching_parameters("max_batch_size { value: 8 } allowed_batch_sizes: 4")


def test_repo_batching_parameters_file_parses_if_present():
    path = os.path.join(
        os.path.dirname(__file__), "..", "serving", "config", "batching_parameters.txt"
    )
    if not os.path.exists(path):
        pytest.skip("serving/config/batching_parameters.txt not written yet")
    with open(path) as f:
        assert parse_batching_parameters(f.read(), path).max_batch_size >= 1


# -- models.config --------------------------------------------------------------------------


# What the Pusher's models.config was, byte for byte, before serving/model_config.py wrote it
# (bar the comment naming the writer): TF Serving's text format, one entry rewritten in place.
PUSHED_CONFIG = """\
model_config_list {
  config {
    name: "other"
    base_path: "/models/other"
    model_platform: "tensorflow"
  }
  config {
    name: "m"
    base_path: "{base}"
    model_platform: "tensorflow"
    model_version_policy {
      all {
      }
    }
    version_labels {
      key: "canary"
      value: 2
    }
    version_labels {
      key: "stable"
      value: 1
    }
  }
}
"""


def test_the_pushers_models_config_is_tf_servings_text_byte_for_byte(tmp_path):
    """One module reads and writes models.config (the Pusher calls it): another model's entry
    is kept, this model's replaced, a killed writer's temporary copy removed, and the text is
    what TF Serving parses and what earlier versions wrote."""
    serving = tmp_path / "serving"
    serving.mkdir()
    (serving / "models.config").write_text(
        'model_config_list { config { name: "other" base_path: "/models/other" '
        'model_platform: "tensorflow" } config { name: "m" base_path: "/old" } }\n'
    )
    (serving / ".models.config.tmp-0a1b2c3d").write_text("half written")
    labels = {"stable": 1, "canary": 2}
    path = model_config.write_model_entry(str(serving), "m", str(serving / "m"), labels)
    text = (serving / "models.config").read_text()
    base = os.path.abspath(serving / "m")
    assert path == str(serving / "models.config")
    assert text == model_config.HEADER + PUSHED_CONFIG.replace("{base}", base)
    assert sorted(os.listdir(serving)) == ["_versions", "models.config"]  # the lock's folder
    assert model_config.entry_labels(str(serving), "m") == labels
    assert model_config.entry_labels(str(serving), "nobody") is None
    (m, other) = sorted(parse_model_server_config(text), key=lambda c: c.name)
    assert (m.name, m.base_path, m.policy, m.labels) == ("m", base, "all", labels)
    assert (other.name, other.base_path) == ("other", "/models/other")
    (serving / "models.config").write_text("model_config_list { nonsense }")
    with pytest.raises(PipelineError, match=r"models.config: not a valid ModelServerConfig"):
        model_config.entry_labels(str(serving), "m")


MODELS_CONFIG = """
model_config_list {
  config {
    name: "cats_dogs"
    base_path: "/models/cats_dogs"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
  }
  config { name: "other" base_path: "/models/other" model_version_policy { all {} } }
  config { name: "third" base_path: "/models/third" }
}
"""


def test_parse_model_server_config():
    models = parse_model_server_config(MODELS_CONFIG)
    assert [m.name for m in models] == ["cats_dogs", "other", "third"]
    cats = models[0]
    assert (cats.policy, cats.versions, cats.labels) == (
        "specific",
        (1, 2),
        {"stable": 1, "canary": 2},
    )
    assert (models[1].policy, models[2].policy, models[2].num_versions) == ("all", "latest", 1)


@pytest.mark.parametrize(
    "text, message",
    [
        ("model_config_list { config { name: 'a' } }", "has no base_path"),
        ("model_config_list {}", "lists no models"),
        (
            "model_config_list { config { name: 'a' base_path: '/x' } "
            "config { name: 'a' base_path: '/y' } }",
            "unique",
        ),
        ("model_config_list { config { name: 'a' base_path: '/x' platform: 1 } }", "not a valid"),
        ("model_config_list { config { name: 'a' base_path: '/x' model_platform: 'onnx' } }",
         "not supported"),
    ],
)  # fmt: skip
def test_model_server_config_errors_are_one_line(text, message):
    with pytest.raises(PipelineError, match=message) as err:
        parse_model_server_config(text)
    assert "\n" not in str(err.value)


def test_version_policies_choose_versions():
    on_disk = {1, 2, 5, 7}
    assert ModelConfig("m", "/b").aspired(on_disk) == {7}
    assert ModelConfig("m", "/b", num_versions=2).aspired(on_disk) == {5, 7}
    assert ModelConfig("m", "/b", policy="all").aspired(on_disk) == on_disk
    assert ModelConfig("m", "/b", policy="specific", versions=(2, 3)).aspired(on_disk) == {2}


def test_availability_preserving_unload_policy():
    # new version loaded: the old one goes
    assert versions_to_unload(loaded={1, 2}, aspired={2}) == {1}
    # new version failed to load (aspired, not loaded): the old one keeps serving
    assert versions_to_unload(loaded={1}, aspired={2}) == set()
    # of several unaspired versions only the newest is kept while nothing aspired serves
    assert versions_to_unload(loaded={1, 2, 3}, aspired={4}) == {1, 2}
    # nothing aspired at all (version directories deleted): unload
    assert versions_to_unload(loaded={1}, aspired=set()) == {1}
    # specific versions are never unloaded by this rule
    assert versions_to_unload(loaded={1, 2}, aspired={2}, keep={1}) == set()


def test_ready_versions_ignores_hidden_partial_and_non_numeric(tmp_path):
    def make(name, complete=True):
        (tmp_path / name).mkdir()
        if complete:
            (tmp_path / name / "saved_model.pb").write_bytes(b"")

    make("1")
    make("12")
    make(".13.tmp-1a2b3c4d")  # the Pusher's temporary sibling
    make("14", complete=False)  # saved_model.pb not copied yet (object store)
    make("latest")
    make("v15")
    (tmp_path / "16").write_text("a file, not a directory")
    assert sorted(served_versions(str(tmp_path))) == [1, 12]


# -- tensors and messages -------------------------------------------------------------------


def test_response_tensors_use_typed_fields_like_tf_serving():
    probs = np.array([[0.25, 0.75]], np.float32)
    proto = to_tensor_proto(probs)
    assert list(proto.float_val) == [0.25, 0.75] and not proto.tensor_content
    assert [d.size for d in proto.tensor_shape.dim] == [1, 2]
    np.testing.assert_array_equal(to_ndarray(proto), probs)
    assert list(to_tensor_proto(np.array([3], np.int64)).int64_val) == [3]
    assert list(to_tensor_proto(np.array([b"cat"], object)).string_val) == [b"cat"]


def test_clean_tf_message_keeps_the_informative_line():
    raw = (
        "Graph execution error:\n\nDetected at node Assert/Assert defined at (most recent call "
        "last):\n<stack traces unavailable>\nassertion failed: [input \\'images\\' holds junk]\n"
        "\t [[{{node Assert/Assert}}]] [Op:__inference_signature_wrapper_1]"
    )
    assert clean_tf_message(raw) == "input 'images' holds junk"


def test_typed_ndarray_matches_tf_make_ndarray_or_defers_to_it():
    """The fast path (strings, typed fields with one value per element) gives exactly what
    tf.make_ndarray gives; every other layout is left to tf.make_ndarray (None)."""
    import numpy as np
    import tensorflow as tf

    from serving import tensors

    cases = [
        np.array([b"a", b"\xff\x00", b""], dtype=object),
        np.array([[b"x"], [b"y"]], dtype=object),
        np.array([], dtype=object),
        np.array([[0.5, 1.5]], dtype=np.float32),
        np.array([1.0], dtype=np.float64),
        np.array([[1, -2], [3, 4]], dtype=np.int64),
        np.array([7], dtype=np.int32),
        np.array([True, False]),
    ]
    for value in cases:
        proto = tensors.to_tensor_proto(value)
        fast, reference = tensors.typed_ndarray(proto), tf.make_ndarray(proto)
        assert fast is not None and fast.dtype == reference.dtype, value
        assert fast.shape == reference.shape and fast.tolist() == reference.tolist()
        assert np.array_equal(tensors.to_ndarray(proto), reference)
    # tensor_content, the repeat-the-last-value encoding, other dtypes: tf.make_ndarray's job
    for proto in (
        tf.make_tensor_proto(np.arange(6, dtype=np.float32).reshape(2, 3)),  # tensor_content
        tf.make_tensor_proto(np.uint8(3), shape=[4]),
        tf.make_tensor_proto([b"z"], shape=[3]),
    ):
        assert tensors.typed_ndarray(proto) is None
        assert np.array_equal(tensors.to_ndarray(proto), tf.make_ndarray(proto))
