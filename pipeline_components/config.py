"""One config object for the whole pipeline (`pipeline.yaml`), validated strictly.

An unknown key or a value of the wrong type is a one-line PipelineError naming the key, e.g.
`pipeline.yaml: trainer.learning_rate: expected a number, got 'fast'`.
Defaults reproduce the reference notebook (frozen VGG19, 224x224, batch 100, 20 x 100 epochs).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field

import yaml

from pipeline_components.errors import PipelineError


@dataclass
class ExampleGenConfig:
    num_shards: int = 4
    max_bad_fraction: float = 0.01
    resize_max_side: int | None = None  # re-encode larger images to JPEG with this longest side
    validation_fraction: float = (
        0.1  # carved from train by a stable hash when validation/ is absent
    )
    beam_args: list[str] = field(default_factory=lambda: ["--runner=DirectRunner"])
    max_image_pixels: int = 40_000_000  # skip larger images (decompression bombs)


@dataclass
class AugmentationConfig:
    # ImageDataGenerator semantics: rotation and shear in degrees, shifts and zoom as fractions.
    rotation_range: float = 40.0
    width_shift_range: float = 0.2
    height_shift_range: float = 0.2
    shear_range: float = 0.2
    zoom_range: float = 0.2
    horizontal_flip: bool = True

    def enabled(self) -> bool:
        return any(
            [
                self.rotation_range,
                self.width_shift_range,
                self.height_shift_range,
                self.shear_range,
                self.zoom_range,
                self.horizontal_flip,
            ]
        )


@dataclass
class TrainerConfig:
    backbone: str = "vgg19"  # keras.applications name: vgg19, vgg16, resnet50, ...
    weights: str = "imagenet"  # imagenet | none | path to a weights file
    image_size: list[int] | None = field(default_factory=lambda: [224, 224])  # None: backbone's
    head: str = "flatten"  # flatten | global_average
    dropout: float = 0.0
    fine_tune_from: str | None = None  # layer name to unfreeze from, e.g. block5_conv1
    fine_tune_epochs: int = 10
    fine_tune_learning_rate: float = 1e-5
    batch_size: int = 100
    epochs: int = 100
    steps_per_epoch: int | None = 20  # None = whole split
    validation_steps: int | None = None  # None = whole split
    optimizer: str = "rmsprop"  # rmsprop | adam | sgd
    learning_rate: float = 0.001
    augmentation: AugmentationConfig | None = field(default_factory=AugmentationConfig)
    cache_features: str = "auto"  # auto | true | false
    early_stopping_patience: int | None = None
    shuffle_buffer: int = 1000
    mixed_precision: str = "auto"  # auto (on GPU) | true | false
    seed: int | None = 42
    max_image_pixels: int = 40_000_000  # serving_default rejects larger images (INVALID_ARGUMENT)


@dataclass
class EvaluatorConfig:
    min_accuracy: float = 0.9
    max_regression: float = 0.01
    batch_size: int = 32
    num_error_examples: int = 12


@dataclass
class InfraValidatorConfig:
    num_examples: int = 8  # test images sent through the real gRPC server
    timeout_seconds: float = 120.0
    tolerance: float = 1e-4  # max |probability difference| vs the Evaluator's predictions


@dataclass
class PusherConfig:
    keep_versions: int = 3


@dataclass
class PipelineConfig:
    pipeline_name: str = "transfer-pipeline"
    pipeline_root: str = "./pipeline_root"
    data_root: str = "./data"
    serving_dir: str = "./serving_models"
    model_name: str = "model"
    example_gen: ExampleGenConfig = field(default_factory=ExampleGenConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    infra_validator: InfraValidatorConfig = field(default_factory=InfraValidatorConfig)
    pusher: PusherConfig = field(default_factory=PusherConfig)


CHOICES = {
    "trainer.head": ("flatten", "global_average"),
    "trainer.optimizer": ("rmsprop", "adam", "sgd"),
    "trainer.cache_features": ("auto", "true", "false"),
    "trainer.mixed_precision": ("auto", "true", "false"),
}


def _type_name(tp) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _convert(value, tp, where: str, source: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if value is None:
            raise PipelineError(f"{source}: {where}: must not be null")
        return _convert(value, inner[0], where, source)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise PipelineError(f"{source}: {where}: expected a mapping, got {value!r}")
        return _from_dict(tp, value, where, source)
    if origin is list:
        if not isinstance(value, list):
            raise PipelineError(f"{source}: {where}: expected a list, got {value!r}")
        return [_convert(v, args[0], f"{where}[{i}]", source) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise PipelineError(f"{source}: {where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PipelineError(f"{source}: {where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PipelineError(f"{source}: {where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, bool):  # yaml's `true` for a string-valued choice
            value = "true" if value else "false"
        if value is None or isinstance(value, dict | list):
            raise PipelineError(f"{source}: {where}: expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported config type {tp} at {where}")


def _from_dict(cls, data: dict, prefix: str, source: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise PipelineError(
                f"{source}: unknown key '{where}' (known: {', '.join(sorted(names))})"
            )
        kwargs[key] = _convert(value, hints[key], where, source)
    obj = cls(**kwargs)
    return obj


def validate(cfg: PipelineConfig, source: str = "config") -> PipelineConfig:
    """Range and choice checks the types alone cannot express."""
    for where, allowed in CHOICES.items():
        section, key = where.split(".")
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            raise PipelineError(f"{source}: {where}: must be one of {list(allowed)}, got {value!r}")
    t, e, eg = cfg.trainer, cfg.evaluator, cfg.example_gen

    def check(ok: bool, where: str, what: str, value):
        if not ok:
            raise PipelineError(f"{source}: {where}: must be {what}, got {value!r}")

    if t.image_size is not None:
        check(
            len(t.image_size) == 2 and all(s >= 8 for s in t.image_size),
            "trainer.image_size",
            "[height, width] of at least 8",
            t.image_size,
        )
    check(t.batch_size >= 1, "trainer.batch_size", ">= 1", t.batch_size)
    check(t.epochs >= 1, "trainer.epochs", ">= 1", t.epochs)
    check(t.fine_tune_epochs >= 0, "trainer.fine_tune_epochs", ">= 0", t.fine_tune_epochs)
    check(
        t.steps_per_epoch is None or t.steps_per_epoch >= 1,
        "trainer.steps_per_epoch",
        ">= 1 or null",
        t.steps_per_epoch,
    )
    check(t.learning_rate > 0, "trainer.learning_rate", "> 0", t.learning_rate)
    check(0 <= t.dropout < 1, "trainer.dropout", "in [0, 1)", t.dropout)
    check(0 <= e.min_accuracy <= 1, "evaluator.min_accuracy", "in [0, 1]", e.min_accuracy)
    check(0 <= e.max_regression <= 1, "evaluator.max_regression", "in [0, 1]", e.max_regression)
    check(eg.num_shards >= 1, "example_gen.num_shards", ">= 1", eg.num_shards)
    check(
        0 <= eg.max_bad_fraction <= 1,
        "example_gen.max_bad_fraction",
        "in [0, 1]",
        eg.max_bad_fraction,
    )
    check(
        0 < eg.validation_fraction < 1,
        "example_gen.validation_fraction",
        "in (0, 1)",
        eg.validation_fraction,
    )
    for where, value in (
        ("example_gen.max_image_pixels", eg.max_image_pixels),
        ("trainer.max_image_pixels", t.max_image_pixels),
    ):
        check(1 <= value <= 2**40, where, "in [1, 2**40]", value)
    check(cfg.pusher.keep_versions >= 1, "pusher.keep_versions", ">= 1", cfg.pusher.keep_versions)
    return cfg


def from_dict(data: dict | None, source: str = "config") -> PipelineConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PipelineError(
            f"{source}: expected a mapping at the top level, got {type(data).__name__}"
        )
    return validate(_from_dict(PipelineConfig, data, "", source), source)


def section_from_dict(cls, data: dict | None, prefix: str, source: str = "config"):
    """Build one section (e.g. TrainerConfig) alone, e.g. for `transfer-pipeline train`."""
    full = from_dict({prefix: data or {}}, source)
    return getattr(full, prefix)


def load_yaml(path: str) -> dict:
    from pipeline_components import fsutil

    try:
        text = fsutil.read_text(path)
    except Exception:
        raise PipelineError(f"config file {path} does not exist or cannot be read") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise PipelineError(f"config file {path} is not valid YAML{where}: {problem}") from None


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def apply_overrides(data: dict, overrides: list[str], source: str = "override") -> dict:
    """Apply `dotted.key=value` overrides (values parsed as YAML) to a config dict in place."""
    for item in overrides:
        if "=" not in item:
            raise PipelineError(f"{source} {item!r}: expected key=value, e.g. trainer.epochs=2")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and _NUMBER.fullmatch(value):  # YAML 1.1 reads 1e-9 as text
            value = float(value)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise PipelineError(f"{source} {item!r}: {part} is not a section")
        node[parts[-1]] = value
    return data


def load(path: str | None, overrides: list[str] | None = None) -> PipelineConfig:
    data = load_yaml(path) if path else {}
    apply_overrides(data, overrides or [])
    return from_dict(data, source=path or "config")


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
