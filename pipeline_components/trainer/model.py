"""The transfer-learning model: a frozen keras.applications backbone, its own `preprocess_input`
inside the model, and a small classification head.

    pixels float32 [N, H, W, 3] RGB 0..255 -> BackbonePreprocess -> backbone(training=False)
        -> head: Flatten | GlobalAveragePooling2D, optional Dense(units, relu), optional Dropout,
                 Dense(1, sigmoid) for two classes | Dense(C, softmax) for more

BatchNormalization stays in inference mode, fine-tuning included: Keras 3 passes fit()'s
`training=True` to every layer of a nested functional model, overriding the `training=False`
the backbone is called with (keras-team/keras#20285), so `unfreeze_from` keeps every
BatchNormalization layer `trainable=False`, which Keras 3 runs with the moving mean and
variance and never updates (the Keras transfer-learning guide's rule).

The head is its own sub-model (layer "head"), so it can be trained alone on cached backbone
features and then used unchanged inside the full model that is exported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import keras

from pipeline_components.core import fsutil
from pipeline_components.core.errors import PipelineError

if TYPE_CHECKING:
    import tensorflow as tf

    from pipeline_components.trainer.config import TrainerConfig

log = logging.getLogger(__name__)

BACKBONE = "backbone"  # layer names inside the full model
HEAD = "head"
PREPROCESS = "preprocess"

# name: (keras.applications constructor, module holding its preprocess_input, default size)
BACKBONES = {
    "vgg16": ("VGG16", "vgg16", 224),
    "vgg19": ("VGG19", "vgg19", 224),
    "resnet50": ("ResNet50", "resnet50", 224),
    "resnet101": ("ResNet101", "resnet", 224),
    "resnet152": ("ResNet152", "resnet", 224),
    "resnet50_v2": ("ResNet50V2", "resnet_v2", 224),
    "mobilenet_v2": ("MobileNetV2", "mobilenet_v2", 224),
    "efficientnet_b0": ("EfficientNetB0", "efficientnet", 224),
    "densenet121": ("DenseNet121", "densenet", 224),
    "inception_v3": ("InceptionV3", "inception_v3", 299),
    "xception": ("Xception", "xception", 299),
}


def backbone_spec(name: str) -> tuple[str, str, int]:
    spec = BACKBONES.get(name.lower())
    if spec is None:
        raise PipelineError(
            f"trainer.backbone: unknown backbone {name!r} (known: {', '.join(BACKBONES)})"
        )
    return spec


def image_size_for(backbone: str, image_size: Sequence[int] | None) -> tuple[int, int]:
    """The configured [height, width], or the backbone's default size when it is null."""
    if image_size:
        return int(image_size[0]), int(image_size[1])
    size = backbone_spec(backbone)[2]
    return size, size


def preprocess_input(backbone: str) -> Callable[..., Any]:
    return importlib.import_module(
        f"keras.applications.{backbone_spec(backbone)[1]}"
    ).preprocess_input


@keras.saving.register_keras_serializable(package="transfer_pipeline")
class BackbonePreprocess(keras.layers.Layer):
    """The backbone's `preprocess_input` (e.g. RGB->BGR and ImageNet mean subtraction for VGG)
    as a serializable layer, so the exported model takes plain 0..255 RGB pixels."""

    def __init__(self, backbone: str, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")  # stay float32 under a mixed_float16 policy
        super().__init__(**kwargs)
        self.backbone = backbone
        self._fn = preprocess_input(backbone)

    def call(self, pixels: tf.Tensor) -> tf.Tensor:
        return self._fn(pixels)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "backbone": self.backbone}


def build_backbone(name: str, weights: str, image_size: Sequence[int]) -> keras.Model:
    """keras.applications `name`, include_top=False, frozen; weights: imagenet | none | path."""
    constructor = getattr(keras.applications, backbone_spec(name)[0])
    height, width = image_size
    kind = weights.strip().lower()
    try:
        backbone = constructor(
            include_top=False,
            weights="imagenet" if kind == "imagenet" else None,
            input_shape=(height, width, 3),
            name=BACKBONE,
        )
    except ValueError as e:  # e.g. "Input size must be at least 32x32"
        raise PipelineError(
            f"trainer.image_size: {list(image_size)} does not suit backbone {name}: {e}"
        ) from None
    except Exception as e:  # keras.utils.get_file: "URL fetch failure on ..."
        if kind != "imagenet":
            raise
        raise PipelineError(
            f"trainer.weights: cannot download the ImageNet weights of {name}"
            f" ({str(e).splitlines()[0][:200]}); put the file in ~/.keras/models/, or set"
            " weights to a weights file path or none"
        ) from None
    if kind not in ("imagenet", "none"):
        load_backbone_weights(backbone, weights.strip(), name)
    backbone.trainable = False
    return backbone


def missing_weights(path: str) -> PipelineError:
    """The one-line error for a weights file that is not there, naming both ways to supply it."""
    return PipelineError(
        f"trainer.weights: weights file {path} does not exist; supply it at build time (the"
        " Dockerfile bakes it with BAKE_IMAGENET_WEIGHTS=1, from weights/ in the build context"
        " or downloaded) or at run time (trainer.weights: a file on a mounted volume, or a gs://"
        " path); docs/container.md"
    )


def load_backbone_weights(backbone: keras.Model, path: str, name: str = "") -> None:
    """Load a weights file (Keras `.weights.h5` or a legacy `.h5` such as the keras.applications
    download) into the backbone; a missing or mismatched file is a one-line PipelineError."""
    if not fsutil.exists(path):
        raise missing_weights(path)
    local, tmp = path, None
    if fsutil.is_remote(path):  # h5py reads local files only
        tmp = tempfile.TemporaryDirectory()
        local = os.path.join(tmp.name, fsutil.basename(path))
        fsutil.gfile().copy(path, local)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            backbone.load_weights(local)
        # Keras only warns when parts of a .weights.h5 file match nothing; that is a mismatch too.
        skipped = [str(w.message) for w in caught if "Skipping" in str(w.message)]
        if skipped:
            raise ValueError(skipped[0])
    except Exception as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PipelineError(
            f"trainer.weights: weights file {path} does not fit backbone {name or backbone.name}"
            f" at input {tuple(backbone.input_shape[1:3])}: {detail[:300]}"
        ) from None
    finally:
        if tmp is not None:
            tmp.cleanup()


def build_head(
    feature_shape: Sequence[int | None],
    num_classes: int,
    head: str,
    dropout: float,
    units: int = 0,
) -> keras.Sequential:
    """Flatten | GlobalAveragePooling2D, [Dense(units, relu)], [Dropout], the output layer."""
    if head not in ("flatten", "global_average"):
        raise PipelineError(f"trainer.head: must be flatten or global_average, got {head!r}")
    layers = [keras.Input(tuple(feature_shape))]
    layers.append(
        keras.layers.Flatten() if head == "flatten" else keras.layers.GlobalAveragePooling2D()
    )
    if units:
        layers.append(keras.layers.Dense(units, activation="relu"))
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    # float32 outputs also under mixed_float16 (a float16 sigmoid/softmax loses precision)
    if num_classes == 2:
        layers.append(keras.layers.Dense(1, activation="sigmoid", dtype="float32"))
    else:
        layers.append(keras.layers.Dense(num_classes, activation="softmax", dtype="float32"))
    return keras.Sequential(layers, name=HEAD)


def create_model(config: TrainerConfig, num_classes: int) -> keras.Model:
    """The full model for a TrainerConfig: pixels 0..255 -> probabilities, backbone frozen."""
    if num_classes < 2:
        raise PipelineError(f"need at least 2 classes, got {num_classes}")
    size = image_size_for(config.backbone, config.image_size)
    backbone = build_backbone(config.backbone, config.weights, size)
    head = build_head(
        backbone.output.shape[1:], num_classes, config.head, config.dropout, config.units
    )
    pixels = keras.Input((*size, 3), name="pixels")
    x = BackbonePreprocess(config.backbone.lower(), name=PREPROCESS)(pixels)
    # training=False holds for model.predict/evaluate; under fit() Keras 3 overrides it, and
    # unfreeze_from keeps BatchNormalization frozen instead
    x = backbone(x, training=False)
    return keras.Model(pixels, head(x), name=f"{config.backbone.lower()}_transfer")


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Keras' global dtype policy (`mixed_float16` or `float32`) for the layers built inside."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def float32_copy(model: keras.Model, config: TrainerConfig, num_classes: int) -> keras.Model:
    """`model`'s weights in a new float32 model built outside any distribution strategy: what is
    exported from a mixed-precision or a multi-worker run (CPU servers have no fast float16
    convolutions; a SavedModel holds plain variables)."""
    with dtype_policy("float32"):
        clone = create_model(dataclasses.replace(config, weights="none"), num_classes)
    clone.set_weights(model.get_weights())
    return clone


def feature_extractor(model: keras.Model) -> keras.Model:
    """pixels -> backbone features, sharing the full model's layers (for cache_features)."""
    return keras.Model(model.input, model.get_layer(HEAD).input, name="features")


def check_layer_name(model: keras.Model, layer_name: str) -> int:
    """Index of `layer_name` among the backbone's layers; else a one-line error listing some."""
    backbone = model.get_layer(BACKBONE)
    names = [layer.name for layer in backbone.layers]
    if layer_name not in names:
        weighted = [layer.name for layer in backbone.layers if layer.weights]
        few = weighted[:2] + ["..."] + weighted[-4:] if len(weighted) > 6 else weighted
        raise PipelineError(
            f"trainer.fine_tune_from: no layer {layer_name!r} in backbone "
            f"(layers with weights: {', '.join(few)})"
        )
    return names.index(layer_name)


def batch_norm_layers(layer: keras.layers.Layer) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer in `layer`, nested models included."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return [layer]
    found = []
    for sub in getattr(layer, "layers", None) or []:
        found += batch_norm_layers(sub)
    return found


def unfreeze_from(model: keras.Model, layer_name: str) -> list[str]:
    """Make `layer_name` and every backbone layer after it trainable, except BatchNormalization
    layers, which stay non-trainable and so in inference mode (moving statistics used, never
    updated) also under fit(); returns the names of the layers made trainable."""
    start = check_layer_name(model, layer_name)
    backbone = model.get_layer(BACKBONE)
    backbone.trainable = True
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= start
    for layer in batch_norm_layers(backbone):
        layer.trainable = False
    return [layer.name for layer in backbone.layers[start:] if layer.trainable]


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    optimizers = {
        "rmsprop": keras.optimizers.RMSprop,
        "adam": keras.optimizers.Adam,
        "sgd": keras.optimizers.SGD,
    }
    if name not in optimizers:
        raise PipelineError(f"trainer.optimizer: must be one of {list(optimizers)}, got {name!r}")
    return optimizers[name](learning_rate=learning_rate)


def compile_model(
    model: keras.Model, num_classes: int, optimizer: str, learning_rate: float
) -> keras.Model:
    if num_classes == 2:
        loss = keras.losses.BinaryCrossentropy()
        accuracy = keras.metrics.BinaryAccuracy(name="accuracy")
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
        accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    # jit_compile="auto": XLA on GPU, plain graphs on CPU
    model.compile(
        optimizer=make_optimizer(optimizer, learning_rate),
        loss=loss,
        metrics=[accuracy],
        jit_compile="auto",
    )
    return model


def count_params(weights: Iterable[keras.Variable]) -> int:
    return int(sum(int(w.numpy().size) for w in weights))


def head_type(num_classes: int) -> str:
    return "sigmoid" if num_classes == 2 else "softmax"
