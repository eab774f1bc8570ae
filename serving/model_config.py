"""TF Serving's `models.config`, read and written here only: which models to serve.

`models.config` is a ModelServerConfig text proto, parsed and written with the
tensorflow_serving.config protos, so the same file configures the official server. The model
server reads it (`load_model_config_file`: `ModelConfig`s); the Pusher maintains one entry per
model in `<serving_dir>/models.config` through `write_model_entry` (policy `all`, labels only on
versions that exist; other models' entries kept), atomically and under the serving_dir's
models.config lock. A model's name is only a key into this list: requests never turn it into a
path.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pipeline_components.core import artifacts, fsutil, locking
from pipeline_components.core.errors import PipelineError

if TYPE_CHECKING:
    from tensorflow_serving.config import model_server_config_pb2

POLICIES = ("latest", "all", "specific")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str
    base_path: str
    policy: str = "latest"  # latest | all | specific (TF Serving's ServableVersionPolicy)
    num_versions: int = 1  # for latest
    versions: tuple[int, ...] = ()  # for specific
    labels: dict[str, int] = dataclasses.field(default_factory=dict)  # version_labels

    def aspired(self, on_disk: set[int]) -> set[int]:
        """The versions this policy wants loaded, out of those ready on disk."""
        if self.policy == "all":
            return set(on_disk)
        if self.policy == "specific":
            return set(self.versions) & set(on_disk)
        return set(sorted(on_disk)[-self.num_versions :])


def _from_proto(config: model_server_config_pb2.ModelConfig, source: str) -> ModelConfig:
    where = f"{source}: model '{config.name}'"
    if not config.name:
        raise PipelineError(f"{source}: a model config has no name")
    if not config.base_path:
        raise PipelineError(f"{where} has no base_path")
    if config.model_platform not in ("", "tensorflow"):
        raise PipelineError(
            f"{where}: model_platform '{config.model_platform}' is not supported (tensorflow)"
        )
    policy = config.model_version_policy.WhichOneof("policy_choice") or "latest"
    num_versions = 1
    versions: tuple[int, ...] = ()
    if policy == "latest":
        num_versions = config.model_version_policy.latest.num_versions or 1
    elif policy == "specific":
        versions = tuple(sorted(set(config.model_version_policy.specific.versions)))
        if not versions:
            raise PipelineError(f"{where}: the specific version policy lists no versions")
    labels = dict(config.version_labels)
    if policy == "specific" and (stray := set(labels.values()) - set(versions)):
        raise PipelineError(f"{where}: version_labels name versions not in the policy: {stray}")
    return ModelConfig(config.name, config.base_path, policy, num_versions, versions, labels)


def parse_model_server_config(text: str, source: str = "models.config") -> list[ModelConfig]:
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    proto = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as e:
        raise PipelineError(f"{source}: not a valid ModelServerConfig text proto: {e}") from None
    if proto.HasField("custom_model_config"):
        raise PipelineError(f"{source}: custom_model_config is not supported")
    models = [_from_proto(c, source) for c in proto.model_config_list.config]
    if not models:
        raise PipelineError(f"{source}: model_config_list lists no models")
    names = [m.name for m in models]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise PipelineError(f"{source}: model names must be unique, repeated: {dupes}")
    return models


def load_model_config_file(path: str) -> list[ModelConfig]:
    try:
        text = fsutil.read_text(path)
    except Exception:
        raise PipelineError(f"model config file {path} does not exist or cannot be read") from None
    return parse_model_server_config(text, source=str(path))


# ------------------------------------------------------------------ the Pusher's models.config

HEADER = (
    "# Written by transfer-pipeline (serving/model_config.py): policy `all`, labels\n"
    "# stable/canary, only on versions that exist. Read by TF Serving with\n"
    "# --model_config_file, re-read every --model_config_file_poll_wait_seconds.\n"
)
LOCK_WAIT_SECONDS = 600.0  # pushers of other models rewrite the same file


def read_server_config(path: str) -> model_server_config_pb2.ModelServerConfig:
    """The ModelServerConfig proto at `path`, as it is (empty when there is no file); a file
    that is not one is a one-line error."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    if fsutil.exists(path):
        try:
            text_format.Parse(fsutil.read_text(path), config)
        except text_format.ParseError as e:
            raise PipelineError(f"{path}: not a valid ModelServerConfig: {e}") from None
    return config


def entry_labels(serving_dir: str, model_name: str) -> dict[str, int] | None:
    """`model_name`'s version labels as `<serving_dir>/models.config` has them; None without
    an entry."""
    config = read_server_config(artifacts.models_config_path(serving_dir))
    for entry in config.model_config_list.config:
        if entry.name == model_name:
            return dict(entry.version_labels)
    return None


def render(
    config: model_server_config_pb2.ModelServerConfig,
    model_name: str,
    base_path: str,
    labels: Mapping[str, int],
) -> str:
    """The file's text with `model_name`'s entry replaced (appended after the others): policy
    `all`, `labels` as its version_labels (tensorflow/serving#1608: the caller names only
    versions that exist)."""
    from google.protobuf import text_format

    entries = config.model_config_list.config
    kept = [c for c in entries if c.name != model_name]
    del entries[:]
    entries.extend(kept)
    entry = entries.add(name=model_name, base_path=base_path, model_platform="tensorflow")
    entry.model_version_policy.all.SetInParent()
    for label, version in labels.items():
        entry.version_labels[label] = version
    return HEADER + text_format.MessageToString(config)


def write_model_entry(
    serving_dir: str, model_name: str, base_path: str, labels: Mapping[str, int]
) -> str:
    """Rewrite `model_name`'s entry of `<serving_dir>/models.config` (other models' entries are
    kept) atomically, under the serving_dir's models.config lock: pushers of different models
    each rewrite the whole file, and a temporary copy a killed writer left is removed there.
    Returns the file's path."""
    path = artifacts.models_config_path(serving_dir)
    lock = artifacts.models_config_lock_path(serving_dir)
    what = f"models.config in {serving_dir}"
    with locking.hold_file(lock, what, None, "write models.config", wait_s=LOCK_WAIT_SECONDS):
        for name in leftovers(serving_dir):
            fsutil.rmtree(fsutil.join(serving_dir, name))
        text = render(read_server_config(path), model_name, absolute(base_path), labels)
        fsutil.makedirs(serving_dir)
        fsutil.write_atomic(path, text)
    return path


def leftovers(serving_dir: str) -> list[str]:
    """Temporary copies of models.config a killed writer left (write_atomic's siblings)."""
    if not fsutil.isdir(serving_dir):
        return []
    prefix = f".{artifacts.MODELS_CONFIG}.tmp-"
    return [n for n in fsutil.listdir(serving_dir) if n.startswith(prefix)]


def absolute(path: str) -> str:
    """A base path as models.config names it: absolute, or the object store's URL."""
    return path if fsutil.is_remote(path) else os.path.abspath(path)
