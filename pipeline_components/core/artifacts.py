"""Every artifact's file names and directory layout, in one place (docs/ARCHITECTURE.md).

Components, the runner, the report and the model server read and write artifacts only through
the names and functions here, so a layout changes in one file. The layouts:

    <examples>/                     Examples (ExampleGen)
        <split>/examples-SSSSS-of-NNNNN.tfrecord.gz
        labels.txt   stats.json
    <trainer>/                      Model (Trainer)
        saved_model/                the SavedModel TF Serving loads (see below)
        history.json  history.csv  plots/  logs/  checkpoints/  training_config.json
    <feature_gen>/                  Features (FeatureGen: the backbone's features of the
                                    train and validation splits, features/files.py)
        manifest.json  backbone.weights.h5  <split>/features-SSSSS-CCCCC.tfrecord
    <tuner>/                        HyperParameters (Tuner: tuner/results.py); the artifact is
                                    best_hyperparameters.json, the rest its record
        best_hyperparameters.json  trials.json  trials.csv  plots/trials.png  tuning.json
    <statistics_gen>/               ExampleStatistics (StatisticsGen)
        statistics.json  plots/class_shares.png  plots/sizes.png
    <schema_gen>/schema.yaml        Schema (SchemaGen)
    <example_validator>/            ExampleAnomalies (ExampleValidator)
        anomalies.json  plots/ (this run next to the baseline's, when there is one)
    <evaluator>/                    ModelBlessing (Evaluator)
        blessing.json  metrics.json  predictions.csv  confusion_matrix.png  errors.png
        baseline_metrics.json (when a baseline was scored)
    <infra_validator>/infra_blessing.json   InfraBlessing (InfraValidator)
    <pusher>/push.json                      PushedModel (Pusher)
    <batch_predict>/                        InferenceResult (BulkInferrer, batch-predict)
        predictions-SSSSS-of-NNNNN.jsonl (or .csv)  prediction_logs-SSSSS-of-NNNNN.tfrecord
        errors-SSSSS-of-NNNNN.jsonl  summary.json

    <saved_model>/saved_model.pb  variables/  assets/labels.txt  assets/serving_limits.json
                  assets/preprocessing.json  assets.extra/tf_serving_warmup_requests

    <serving_dir>/<model_name>/<version>/   a served version: digits only, complete once
                                            saved_model.pb (or .pbtxt) exists in it
    <serving_dir>/models.config             TF Serving's model config: every pushed model,
                                            its version policy and labels (stable, canary)
    <serving_dir>/_versions/<model_name>.json       every version ever pushed: fingerprint,
                                            accuracy, push time, labels, rollback state, and
                                            the journal of a push in progress (`pending`)
    <serving_dir>/_versions/<model_name>.json.lock  held by a push, rollback or promotion
    <serving_dir>/_versions/models.config.lock      held while models.config is rewritten
    <serving_dir>/_rolled_back/<model_name>/<version>/  rolled-back versions, moved aside

    <pipeline_root>/<Component>/<n>/        execution n's output directory
    <pipeline_root>/<Component>/<n>.json    execution n's record
    <pipeline_root>/runs/<run_id>/run.json  report.html  error.log
    <pipeline_root>/runs/<run_id>/steps/<Component>.json   a KFP run's record, one per task
    <pipeline_root>/lock.json               held while a run (or a component) writes there
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable

from pipeline_components.core import fsutil

# -------------------------------------------------------------------------------- Examples
SPLITS = ("train", "validation", "test")
SHARD_PREFIX = "examples"
SHARD_SUFFIX = ".tfrecord.gz"
LABELS_FILE = "labels.txt"
STATS_FILE = "stats.json"

# ------------------------------------------------------------------- data validation
STATISTICS_FILE = "statistics.json"
SCHEMA_FILE = "schema.yaml"
ANOMALIES_FILE = "anomalies.json"
CLASS_SHARES_PNG = "class_shares.png"  # under plots/
SIZES_PNG = "sizes.png"  # under plots/

# ----------------------------------------------------------------------------------- Model
SAVED_MODEL_DIR = "saved_model"
HISTORY_JSON = "history.json"
HISTORY_CSV = "history.csv"
PLOTS_DIR = "plots"
LOGS_DIR = "logs"
CHECKPOINTS_DIR = "checkpoints"
TRAINING_CONFIG = "training_config.json"

# -------------------------------------------------------------------------------- Features
# Uncompressed TFRecords of tf.train.Example {features: raw little-endian floats, label, key},
# one file per chunk of an example shard, in record order: <split>/features-SSSSS-CCCCC.tfrecord
FEATURES_MANIFEST = "manifest.json"  # written last: shape, dtype, files, counts, key material
FEATURES_BACKBONE = "backbone.weights.h5"  # the backbone the features came from
FEATURE_FILE = "features-{shard:05d}-{chunk:05d}.tfrecord"

# ----------------------------------------------------------------------------------- Tuner
BEST_HYPERPARAMETERS = "best_hyperparameters.json"
TRIALS_JSON = "trials.json"
TRIALS_CSV = "trials.csv"
TRIALS_PNG = "trials.png"  # under plots/
TUNING_SUMMARY = "tuning.json"

# ------------------------------------------------------------------- inside a SavedModel
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
SAVED_MODEL_PB = SAVED_MODEL_FILES[0]
ASSETS_DIR = "assets"
ASSETS_EXTRA_DIR = "assets.extra"
LABELS_ASSET = LABELS_FILE  # assets/labels.txt
WARMUP_FILE = "tf_serving_warmup_requests"  # assets.extra/tf_serving_warmup_requests
LIMITS_ASSET = "serving_limits.json"  # assets/serving_limits.json: {"max_image_pixels": n}
# assets/preprocessing.json: the input a client must send (image_size, channels, color,
# pixel_range, resize) and how the model treats it (backbone, ...): core/contract.py
PREPROCESSING_ASSET = "preprocessing.json"

# --------------------------------------------------------------------------- Evaluation
BLESSING_FILE = "blessing.json"
METRICS_FILE = "metrics.json"
BASELINE_METRICS_FILE = "baseline_metrics.json"
PREDICTIONS_FILE = "predictions.csv"
CONFUSION_MATRIX_PNG = "confusion_matrix.png"
ERRORS_PNG = "errors.png"

# --------------------------------------------------------------------- InfraValidator, Pusher
INFRA_BLESSING_FILE = "infra_blessing.json"
PUSH_FILE = "push.json"

# ------------------------------------------------------ InferenceResult (BulkInferrer)
# Sharded like Beam writes them: <prefix>-SSSSS-of-NNNNN<suffix>.
BATCH_PREDICTIONS_PREFIX = "predictions"  # .jsonl or .csv: one row per labelled image
# TFRecords of tensorflow.serving.PredictionLog, uncompressed: they are mostly the images' own
# bytes (JPEG/PNG), which GZIP shrinks by ~2% for ~3 ms of CPU per image.
PREDICTION_LOGS_PREFIX = "prediction_logs"
PREDICTION_LOGS_SUFFIX = ".tfrecord"
BATCH_ERRORS_PREFIX = "errors"  # .jsonl: {"path", "reason"} per image that was not labelled
BATCH_SUMMARY_FILE = "summary.json"

# ----------------------------------------------------------------------------------- runs
RUNS_DIR = "runs"
RUN_RECORD = "run.json"
STEPS_DIR = "steps"  # runs/<run_id>/steps/<Component>.json: a run whose steps are KFP tasks
REPORT_FILE = "report.html"
ERROR_LOG = "error.log"
LOCK_FILE = "lock.json"  # <pipeline_root>/lock.json: core/locking.py

# --------------------------------------------------------------------------- serving_dir
# Names outside the model base paths: a model name starts with a letter or digit, so no model
# can be called `_versions`; TF Serving ignores every non-numeric entry of a base path anyway.
MODELS_CONFIG = "models.config"
VERSIONS_DIR = "_versions"
ROLLED_BACK_DIR = "_rolled_back"
MODELS_CONFIG_LOCK = "models.config.lock"  # in VERSIONS_DIR; model locks end in .json.lock

# The SavedModel's serving contract (trainer/export.py writes it; clients, the Evaluator and the
# InfraValidator call it): two signatures with the same four outputs.
SERVING_SIGNATURE = "serving_default"  # images: DT_STRING [-1], encoded JPEG/PNG/GIF/BMP
PIXELS_SIGNATURE = "predict_pixels"  # pixels: DT_FLOAT [-1, H, W, 3], RGB 0..255
IMAGES_INPUT = "images"
PIXELS_INPUT = "pixels"
OUTPUT_KEYS = ("probabilities", "scores", "class_ids", "classes")

VERSION_DIR = re.compile(r"[0-9]{1,18}")


def shard_pattern(examples_dir: str, split: str) -> str:
    """Glob of one split's TFRecord shards."""
    return fsutil.join(examples_dir, split, f"{SHARD_PREFIX}-*-of-*{SHARD_SUFFIX}")


def shard_path(split: str, index: int, num_shards: int) -> str:
    """`<split>/examples-SSSSS-of-NNNNN.tfrecord.gz`, relative to the examples directory."""
    return f"{split}/{SHARD_PREFIX}-{index:05d}-of-{num_shards:05d}{SHARD_SUFFIX}"


def saved_model_dir(trainer_dir: str) -> str:
    return fsutil.join(trainer_dir, SAVED_MODEL_DIR)


def labels_asset(saved_model: str) -> str:
    return fsutil.join(saved_model, ASSETS_DIR, LABELS_ASSET)


def parse_labels(text: str) -> list[str]:
    """The class names of a labels.txt, exactly as written: one per line, split at "\n" only
    (str.splitlines would also split at U+2028, U+0085, ...), nothing stripped but a "\r" of a
    CRLF line end (a name may end in a space; none holds a control character: ExampleGen refuses
    them), empty lines skipped."""
    lines = (line.removesuffix("\r") for line in text.split("\n"))
    return [line for line in lines if line]


def read_labels_asset(saved_model: str) -> list[str]:
    """The class names a SavedModel was exported with (assets/labels.txt), in label order."""
    return parse_labels(fsutil.read_text(labels_asset(saved_model)))


def limits_asset(saved_model: str) -> str:
    return fsutil.join(saved_model, ASSETS_DIR, LIMITS_ASSET)


def read_max_image_pixels(saved_model: str) -> int | None:
    """The pixel limit recorded at export; None for a SavedModel exported without one."""
    path = limits_asset(saved_model)
    if not fsutil.exists(path):
        return None
    return int(fsutil.read_json(path, "serving limits")["max_image_pixels"])


def preprocessing_asset(saved_model: str) -> str:
    return fsutil.join(saved_model, ASSETS_DIR, PREPROCESSING_ASSET)


def read_preprocessing_asset(saved_model: str) -> dict | None:
    """The input metadata recorded at export; None for a SavedModel exported without it."""
    path = preprocessing_asset(saved_model)
    if not fsutil.exists(path):
        return None
    data = fsutil.read_json(path, "preprocessing metadata")
    return data if isinstance(data, dict) else None


def warmup_file(saved_model: str) -> str:
    return fsutil.join(saved_model, ASSETS_EXTRA_DIR, WARMUP_FILE)


def is_saved_model(path: str) -> bool:
    """True when `path` holds a SavedModel's graph file (the last file a push writes)."""
    return any(fsutil.exists(fsutil.join(path, name)) for name in SAVED_MODEL_FILES)


def model_base_path(serving_dir: str, model_name: str) -> str:
    return fsutil.join(serving_dir, model_name)


def version_path(base_path: str, version: int) -> str:
    return fsutil.join(base_path, str(version))


def version_numbers(base_path: str) -> list[int]:
    """Every version-named directory under a model base path, complete or not, ascending."""
    if not fsutil.isdir(base_path):
        return []
    return sorted({int(n) for n in fsutil.listdir(base_path) if VERSION_DIR.fullmatch(n)})


def served_versions(base_path: str) -> dict[int, str]:
    """{version: path} of the *complete* versions under a model base path, ascending.

    The one definition of a servable version, shared by the Pusher, the Evaluator (its baseline)
    and the model server: a directory named by digits only that holds `saved_model.pb` (or
    `.pbtxt`). The Pusher writes that file last, so a version being copied is not complete;
    `.5.tmp-x` and other names are never versions.
    """
    return {
        v: path
        for v in version_numbers(base_path)
        if is_saved_model(path := version_path(base_path, v))
    }


def models_config_path(serving_dir: str) -> str:
    """`<serving_dir>/models.config`: the ModelServerConfig the Pusher maintains."""
    return fsutil.join(serving_dir, MODELS_CONFIG)


def models_config_lock_path(serving_dir: str) -> str:
    """`<serving_dir>/_versions/models.config.lock`: held while models.config is rewritten."""
    return fsutil.join(serving_dir, VERSIONS_DIR, MODELS_CONFIG_LOCK)


def version_registry_path(serving_dir: str, model_name: str) -> str:
    """`<serving_dir>/_versions/<model_name>.json`: every version pushed, with its state."""
    return fsutil.join(serving_dir, VERSIONS_DIR, f"{model_name}.json")


def rolled_back_path(serving_dir: str, model_name: str, version: int) -> str:
    """Where a rolled-back version is moved: outside the base path, out of TF Serving's sight."""
    return fsutil.join(serving_dir, ROLLED_BACK_DIR, model_name, str(version))


def run_dir(pipeline_root: str, run_id: str) -> str:
    return fsutil.join(pipeline_root, RUNS_DIR, run_id)


def component_dir(pipeline_root: str, component: str) -> str:
    return fsutil.join(pipeline_root, component)


def execution_dir(pipeline_root: str, component: str, execution_id: int) -> str:
    return fsutil.join(pipeline_root, component, str(execution_id))


def execution_record(pipeline_root: str, component: str, execution_id: int) -> str:
    return fsutil.join(pipeline_root, component, f"{execution_id}.json")


def step_record(pipeline_root: str, run_id: str, component: str) -> str:
    """One component's record in a run whose components run as separate tasks (Kubeflow
    Pipelines: `transfer-pipeline step`): one file per component, so tasks running in parallel
    never rewrite each other's record."""
    return fsutil.join(run_dir(pipeline_root, run_id), STEPS_DIR, f"{component}.json")


# ------------------------------------------------------------------------ artifact kinds


def content_fingerprint(uri: str) -> str:
    """sha256 of a file's bytes, or of every file under a directory (tree_fingerprint)."""
    if fsutil.isdir(uri):
        return fsutil.tree_fingerprint(uri)
    return hashlib.sha256(fsutil.read_bytes(uri)).hexdigest()


def examples_fingerprint(uri: str) -> str:
    """ExampleGen's own fingerprint of what the examples hold (stats.json), cheap to read."""
    stats = fsutil.read_json(fsutil.join(uri, STATS_FILE), "ExampleGen statistics")
    return str(stats["fingerprint"])


def statistics_fingerprint(uri: str) -> str:
    """sha256 of statistics.json (its plots are drawn from it)."""
    return hashlib.sha256(fsutil.read_bytes(fsutil.join(uri, STATISTICS_FILE))).hexdigest()


def features_fingerprint(uri: str) -> str:
    """The features' own fingerprint (manifest.json: the key material and every file's
    sha256), cheap to read."""
    manifest = fsutil.read_json(fsutil.join(uri, FEATURES_MANIFEST), "features manifest")
    return str(manifest["fingerprint"])


def read_blessed(uri: str) -> bool:
    """The `blessed` field of a verdict file (blessing.json, infra_blessing.json)."""
    return bool(fsutil.read_json(uri, "blessing").get("blessed"))


@dataclasses.dataclass(frozen=True)
class ArtifactType:
    """A kind of artifact a component produces or consumes.

    `path` is where the artifact lives inside its producer's execution directory ("" for the
    directory itself); `fingerprint` identifies its content for cache keys. `verdict`, for a
    verdict artifact (a blessing), reads whether it passed: a component that *requires* an input
    of such a type runs only when it passed (orchestrators that branch, such as Kubeflow
    Pipelines, put it under a condition on its producer's verdict).
    """

    name: str
    path: str = ""
    fingerprint: Callable[[str], str] = content_fingerprint
    description: str = ""
    verdict: Callable[[str], bool] | None = None


EXAMPLES = ArtifactType(
    "Examples", "", examples_fingerprint, "TFRecord shards per split, labels.txt, stats.json"
)
EXAMPLE_STATISTICS = ArtifactType(
    "ExampleStatistics",
    "",
    statistics_fingerprint,
    "statistics.json per split (classes, sizes, formats, skipped, duplicates) and plots",
)
SCHEMA = ArtifactType("Schema", SCHEMA_FILE, description="the data schema (editable YAML)")
EXAMPLE_ANOMALIES = ArtifactType(
    "ExampleAnomalies", ANOMALIES_FILE, description="data anomalies found (anomalies.json)"
)
FEATURES = ArtifactType(
    "Features",
    "",
    features_fingerprint,
    "the frozen backbone's features of the train and validation splits (feature files,"
    " manifest.json, backbone.weights.h5)",
)
HYPERPARAMETERS = ArtifactType(
    "HyperParameters",
    BEST_HYPERPARAMETERS,
    description="the Tuner's best head hyperparameters (best_hyperparameters.json: trainer"
    " options)",
)
MODEL = ArtifactType("Model", SAVED_MODEL_DIR, fsutil.tree_fingerprint, "the exported SavedModel")
MODEL_EVALUATION = ArtifactType(
    "ModelEvaluation", "", description="metrics.json, predictions.csv, confusion matrix, errors"
)
MODEL_BLESSING = ArtifactType(
    "ModelBlessing",
    BLESSING_FILE,
    description="the Evaluator's verdict (blessing.json)",
    verdict=read_blessed,
)
INFRA_BLESSING = ArtifactType(
    "InfraBlessing",
    INFRA_BLESSING_FILE,
    description="the InfraValidator's verdict",
    verdict=read_blessed,
)
PUSHED_MODEL = ArtifactType("PushedModel", PUSH_FILE, description="what the Pusher did (push.json)")
INFERENCE_RESULT = ArtifactType(
    "InferenceResult",
    "",
    description="batch predictions (JSON Lines or CSV), PredictionLogs, errors, summary.json",
)


@dataclasses.dataclass
class Artifact:
    """One artifact of one execution: its kind, where it is, and who produced it."""

    type: ArtifactType
    uri: str
    producer: str = ""
    execution_id: int | None = None
    _fingerprint: str | None = dataclasses.field(default=None, repr=False)

    def fingerprint(self) -> str:
        """Content fingerprint (computed once)."""
        if self._fingerprint is None:
            self._fingerprint = self.type.fingerprint(self.uri)
        return self._fingerprint
