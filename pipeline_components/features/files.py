"""The features artifact on disk: its files, its manifest, and what identifies it.

    <features>/manifest.json                       written last (see `Manifest`)
    <features>/backbone.weights.h5                 the backbone the features came from: a model
                                                   trained on them exports with these weights
    <features>/<split>/features-SSSSS-CCCCC.tfrecord   chunk C of example shard S, record order

Each file is an uncompressed TFRecord file (read by tf.data's C++ reader, checksummed per
record, on every file system TensorFlow knows) of tf.train.Examples with three features:
`features` (bytes: the backbone's output for one image, raw little-endian float16 or float32 in
C order, `Manifest.shape`), `label` (int64: the class index of labels.txt) and `key` (bytes:
the image's path under data_root, UTF-8, as ExampleGen stored it). A training batch is parsed
with one `tf.io.parse_example` and one `tf.io.decode_raw` (`parse_batch`).

The key material (`key_material`): backbone, weights identity (`imagenet`, `none`, or the
weights file's sha256), image size, preprocessing, stored dtype and file size, the examples'
fingerprint and labels, and the code fingerprint of the writer. A later run with the same key
material may reuse the features: nothing of the head (learning rate, dropout, units, epochs,
optimizer, seed) is in it. Weights `none` gives a random backbone: any is as good, and the
artifact carries the one it used (FEATURES_BACKBONE).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline_components.core import artifacts, examples, fsutil
from pipeline_components.core.errors import PipelineError
from pipeline_components.features.config import DTYPES, FeatureSpec

if TYPE_CHECKING:
    import tensorflow as tf

FORMAT = "transfer-pipeline features v1"
FEATURES, LABEL, KEY = "features", "label", "key"
SPLITS = ("train", "validation")


# ---------------------------------------------------------------- identity


def weights_identity(weights: str) -> str:
    """`imagenet`, `none`, or `sha256:<hex>` of a weights file (its path does not matter)."""
    kind = weights.strip().lower()
    if kind in ("imagenet", "none"):
        return kind
    digest = hashlib.sha256()
    try:
        with fsutil.gfile().GFile(weights.strip(), "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    except Exception:
        raise PipelineError(f"trainer.weights: cannot read weights file {weights}") from None
    return f"sha256:{digest.hexdigest()}"


def preprocessing(spec: FeatureSpec) -> dict[str, Any]:
    """How an image becomes the backbone's input: decoded and resized as the exported model's
    serving_default does, then the backbone's own preprocess_input."""
    from pipeline_components.trainer import export
    from pipeline_components.trainer import model as model_lib

    module = model_lib.backbone_spec(spec.backbone)[1]
    return {
        **export.input_metadata(spec.image_size, spec.exif_transpose),
        "preprocess_input": f"keras.applications.{module}.preprocess_input",
    }


def writer_code() -> str:
    """The code fingerprint of the writer and everything it imports (core/codeprint.py)."""
    from pipeline_components.core import codeprint

    return str(codeprint.code_fingerprint("pipeline_components.features.writer")["sha256"])


def key_material(spec: FeatureSpec, examples_dir: str, file_mb: int) -> dict[str, Any]:
    """Everything the features depend on (see the module docstring); the features' cache key."""
    spec = spec.for_examples(examples_dir)
    return {
        "format": FORMAT,
        "backbone": spec.backbone,
        "weights": weights_identity(spec.weights),
        "image_size": list(spec.image_size),
        "preprocessing": preprocessing(spec),
        "dtype": spec.dtype,
        "file_mb": file_mb,
        "examples": artifacts.examples_fingerprint(examples_dir),
        "labels": examples.read_labels(examples_dir),
        "code": writer_code(),
    }


# What decides whether features fit a model: the rest of the key (dtype, file size, the
# writer's code) is how they were stored and computed, not what they are.
MODEL_KEYS = ("format", "backbone", "weights", "image_size", "preprocessing", "examples", "labels")


def mismatches(key: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """The MODEL_KEYS whose values differ between a manifest's key and the expected one."""
    same = json.loads(json.dumps(key)), json.loads(json.dumps(expected))
    return [k for k in MODEL_KEYS if same[0].get(k) != same[1].get(k)]


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------- records


def encode_record(features: np.ndarray | bytes, label: int, key: str, dtype: str) -> bytes:
    """One serialized tf.train.Example of the format above."""
    from tensorflow.core.example import example_pb2

    raw = features if isinstance(features, bytes) else to_bytes(features, dtype)
    example = example_pb2.Example()
    feature = example.features.feature
    feature[FEATURES].bytes_list.value.append(raw)
    feature[LABEL].int64_list.value.append(int(label))
    feature[KEY].bytes_list.value.append(key.encode("utf-8"))
    return example.SerializeToString()


def to_bytes(features: np.ndarray, dtype: str) -> bytes:
    return np.ascontiguousarray(features, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


def _masked_crc(data: bytes) -> bytes:
    import google_crc32c

    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def tfrecord_bytes(records: Iterable[bytes]) -> bytes:
    """Records framed as a TFRecord file: length, its masked CRC32C, data, the data's."""
    parts = []
    for data in records:
        length = struct.pack("<Q", len(data))
        parts += [length, _masked_crc(length), data, _masked_crc(data)]
    return b"".join(parts)


def write_file(path: str, records: Sequence[bytes]) -> dict[str, Any]:
    """Write one feature file atomically; {"count", "bytes", "sha256"} of it."""
    data = tfrecord_bytes(records)
    # ram:// lists a folder's files only once the folder itself exists
    fsutil.makedirs(fsutil.parent(path))
    fsutil.write_atomic(path, data)
    return {"count": len(records), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def file_name(split: str, shard: int, chunk: int) -> str:
    """A feature file's path relative to the artifact (posix)."""
    return f"{split}/{artifacts.FEATURE_FILE.format(shard=shard, chunk=chunk)}"


def records_per_file(shape: Sequence[int], dtype: str, file_mb: int) -> int:
    """Records of one feature file: `file_mb` MiB of features (at least one)."""
    return max(1, int(file_mb * 2**20 // record_bytes(shape, dtype)))


def record_bytes(shape: Sequence[int], dtype: str) -> int:
    return int(np.prod(shape)) * np.dtype(dtype).itemsize


def record_spec() -> dict[str, Any]:
    import tensorflow as tf

    return {
        FEATURES: tf.io.FixedLenFeature([], tf.string),
        LABEL: tf.io.FixedLenFeature([], tf.int64),
    }


def parse_batch(
    serialized: tf.Tensor, shape: Sequence[int], dtype: str, num_classes: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """A batch of serialized records -> (float32 [B, *shape] features, labels: float32 [B, 1]
    for two classes, int32 [B] for more, as the image input pipeline's)."""
    import tensorflow as tf

    parsed = tf.io.parse_example(serialized, record_spec())
    flat = tf.io.decode_raw(parsed[FEATURES], tf.dtypes.as_dtype(dtype), little_endian=True)
    return as_batch(tf.reshape(flat, [-1, *shape]), parsed[LABEL], num_classes)


def parse_record(
    serialized: tf.Tensor, shape: Sequence[int], dtype: str
) -> tuple[tf.Tensor, tf.Tensor]:
    """One serialized record -> (features [*shape] in the stored dtype, int64 label)."""
    import tensorflow as tf

    parsed = tf.io.parse_single_example(serialized, record_spec())
    flat = tf.io.decode_raw(parsed[FEATURES], tf.dtypes.as_dtype(dtype), little_endian=True)
    return tf.reshape(flat, shape), parsed[LABEL]


def as_batch(
    features: tf.Tensor, labels: tf.Tensor, num_classes: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """Stored features and int64 labels of a batch -> what the head trains on."""
    import tensorflow as tf

    x = tf.cast(features, tf.float32)
    if num_classes == 2:
        return x, tf.reshape(tf.cast(labels, tf.float32), [-1, 1])
    return x, tf.cast(labels, tf.int32)


# ---------------------------------------------------------------- manifest


@dataclasses.dataclass
class Manifest:
    """manifest.json of a features artifact at `path`."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    labels: list[str]
    splits: dict[str, list[dict[str, Any]]]  # split -> files: {"path", "count", "bytes", "sha256"}
    key: dict[str, Any]
    fingerprint: str  # sha256 over the key material and every file's sha256
    seconds: float | None = None

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def count(self, split: str) -> int:
        return sum(int(f["count"]) for f in self.split_files(split))

    def split_files(self, split: str) -> list[dict[str, Any]]:
        if split not in self.splits:
            raise PipelineError(f"features {self.path}: no {split} split")
        return self.splits[split]

    def files(self, split: str) -> list[str]:
        """Full paths of a split's files, in record order."""
        return [fsutil.join(self.path, *f["path"].split("/")) for f in self.split_files(split)]

    def backbone_weights(self) -> str:
        return fsutil.join(self.path, artifacts.FEATURES_BACKBONE)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "labels": self.labels,
            "counts": {split: self.count(split) for split in self.splits},
            "splits": self.splits,
            "key": self.key,
            "fingerprint": self.fingerprint,
            "seconds": self.seconds,
        }


def fingerprint(key: dict[str, Any], splits: dict[str, list[dict[str, Any]]]) -> str:
    digest = hashlib.sha256(key_digest(key).encode())
    for split in sorted(splits):
        for f in splits[split]:
            digest.update(f"{f['path']}\0{f['count']}\0{f['sha256']}\0".encode())
    return digest.hexdigest()


def write_manifest(manifest: Manifest) -> None:
    fsutil.write_json(fsutil.join(manifest.path, artifacts.FEATURES_MANIFEST), manifest.to_json())


def read_manifest(path: str) -> Manifest:
    """The manifest of the features at `path`; a one-line PipelineError when it is missing or
    not a features manifest."""
    where = fsutil.join(path, artifacts.FEATURES_MANIFEST)
    if not fsutil.exists(where):
        raise PipelineError(f"no features at {path} ({artifacts.FEATURES_MANIFEST} is missing)")
    data = fsutil.read_json(where, "features manifest")
    try:
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
        manifest = Manifest(
            path=path,
            shape=tuple(int(s) for s in data["shape"]),
            dtype=str(data["dtype"]),
            labels=[str(label) for label in data["labels"]],
            splits={str(k): list(v) for k, v in data["splits"].items()},
            key=dict(data["key"]),
            fingerprint=str(data["fingerprint"]),
            seconds=data.get("seconds"),
        )
        if manifest.dtype not in DTYPES:
            raise ValueError(f"dtype {manifest.dtype!r}")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise PipelineError(f"features manifest {where} is not valid: {e}") from None
    return manifest


def matching(path: str, key: dict[str, Any]) -> Manifest | None:
    """The features at `path` when they exist and were made with `key`, else None."""
    if not fsutil.exists(fsutil.join(path, artifacts.FEATURES_MANIFEST)):
        return None
    try:
        manifest = read_manifest(path)
    except PipelineError:
        return None
    same = json.loads(json.dumps(manifest.key)) == json.loads(json.dumps(key))
    return manifest if same else None


def read_split(manifest: Manifest, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A whole split in memory: (features in their stored dtype [N, *shape], labels int64 [N],
    keys), in record order. For tests and small splits only: training streams (stream.py)."""
    import tensorflow as tf

    xs, ys, keys = [], [], []
    spec = {
        FEATURES: tf.io.FixedLenFeature([], tf.string),
        LABEL: tf.io.FixedLenFeature([], tf.int64),
        KEY: tf.io.FixedLenFeature([], tf.string),
    }
    for record in tf.data.TFRecordDataset(manifest.files(split)).as_numpy_iterator():
        parsed = tf.io.parse_single_example(record, spec)
        xs.append(
            np.frombuffer(
                parsed[FEATURES].numpy(), dtype=np.dtype(manifest.dtype).newbyteorder("<")
            )
        )
        ys.append(int(parsed[LABEL].numpy()))
        keys.append(parsed[KEY].numpy().decode("utf-8"))
    x = np.stack(xs).reshape(-1, *manifest.shape) if xs else np.zeros((0, *manifest.shape))
    return x.astype(manifest.dtype), np.asarray(ys, dtype=np.int64), keys


def write_split(
    path: str,
    split: str,
    rows: Iterable[tuple[np.ndarray, int, str]],
    shape: Sequence[int],
    dtype: str,
    file_mb: int,
) -> list[dict[str, Any]]:
    """Write (features, label, key) rows as a split's feature files (shard 0, chunked by
    `file_mb`, holding one file's records at a time); the files' entries for the manifest.
    The Beam writer writes the same files from its chunks; tests, benchmarks and the Tuner's
    speed estimate write feature files with this."""
    per_file = records_per_file(shape, dtype, file_mb)
    entries: list[dict[str, Any]] = []
    records: list[bytes] = []

    def flush() -> None:
        name = file_name(split, 0, len(entries))
        entries.append({"path": name, **write_file(fsutil.join(path, *name.split("/")), records)})
        records.clear()

    for features, label, key in rows:
        records.append(encode_record(features, label, key, dtype))
        if len(records) == per_file:
            flush()
    if records or not entries:
        flush()
    return entries


def write_arrays(
    path: str,
    splits: dict[str, tuple[np.ndarray, Sequence[int], Sequence[str]]],
    labels: list[str],
    dtype: str,
    key: dict[str, Any],
    file_mb: int = 128,
) -> Manifest:
    """A whole features artifact from in-memory arrays {split: (features, labels, keys)}, for
    tests and benchmarks (no backbone, no backbone.weights.h5)."""
    shape = tuple(next(iter(splits.values()))[0].shape[1:])
    entries = {
        split: write_split(path, split, zip(x, y, k, strict=True), shape, dtype, file_mb)
        for split, (x, y, k) in splits.items()
    }
    manifest = Manifest(path, shape, dtype, labels, entries, key, fingerprint(key, entries))
    write_manifest(manifest)
    return manifest
