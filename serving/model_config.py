"""Which models to serve: `--model_name/--model_base_path` or TF Serving's `models.config`.

`models.config` is a ModelServerConfig text proto, parsed with the tensorflow_serving.config
protos, so the same file configures the official server. A model's name is only a key into
this list: requests never turn it into a path.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from pipeline_components.core import fsutil
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
