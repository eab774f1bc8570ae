"""Grad-CAM (Selvaraju et al., 2017) inside the exported SavedModel: where in an image the model
looked for a class, as the `grad_cam` signature (docs/ARCHITECTURE.md "Signatures").

    grad_cam: images DT_STRING [-1] (encoded, as serving_default), class_ids DT_INT64 [-1]
              (-1: the predicted class)
          ->  heatmaps DT_FLOAT [-1, H, W] in [0, 1], class_ids DT_INT64 [-1] (the class
              explained), probabilities DT_FLOAT [-1, C]

The map is computed on the backbone's last convolutional block (`last_conv_layer`): with A its
feature maps [h, w, K] and s_c the class's score, the weights are the spatial means of ds_c/dA,
the map is ReLU(sum_k weight_k * A_k), resized bilinearly to the model's input size H x W (the
pixels serving_default feeds the model, same rows and columns) and divided by its maximum (all
zeros when nothing speaks for the class). The score is the class's logit (the head's Dense layer
before its activation; a sigmoid head's logit z is class 1's and -z class 0's) minus the mean
logit over the classes: softmax does not change when the same number is added to every logit,
so a raw logit carries an arbitrary per-image offset that the heat map would show (a head can
learn negative weights for every class on the feature that decides one); the centred score
does not, and unlike log p_c it does not vanish for confident predictions. With two classes it
is the logit itself.

Why a signature: serving_default exposes no intermediate activation and no gradient, and the
Evaluator sees only the SavedModel, the artifact that is served. The signature is traced from the
same Keras layers and variables as serving_default, so the map explains exactly the served
model; it costs nothing until called (about three forward passes per image when it is). The
serving contract (core/contract.py) records it apart from the client signatures: adding or
dropping it is not a contract change.

Only models built by trainer/model.py (layers "preprocess", "backbone", "head") get it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import tensorflow as tf

from pipeline_components.trainer.model import BACKBONE, HEAD, PREPROCESS

if TYPE_CHECKING:
    import keras

ExplainFn = Callable[[tf.Tensor, tf.Tensor], dict[str, tf.Tensor]]

_POOLING = (
    "MaxPooling2D",
    "AveragePooling2D",
    "GlobalMaxPooling2D",
    "GlobalAveragePooling2D",
    "ZeroPadding2D",
)


def last_conv_layer(backbone: keras.Model) -> keras.layers.Layer:
    """The backbone's last convolutional block: its last layer with a spatial output [N, h, w, K]
    that is not a pooling or padding layer. For the supported backbones: block5_conv4 (vgg19),
    block5_conv3 (vgg16), conv5_block3_out (resnet50/101/152 end in conv5_block3_out), post_relu
    (resnet50_v2), out_relu (mobilenet_v2), top_activation (efficientnet_b0), relu
    (densenet121), mixed10 (inception_v3), block14_sepconv2_act (xception) — the layers the
    Grad-CAM literature and Keras' own Grad-CAM example use."""
    for layer in reversed(backbone.layers):
        if type(layer).__name__ in _POOLING or type(layer).__name__ == "InputLayer":
            continue
        shape = getattr(layer, "output", None)
        if shape is not None and len(layer.output.shape) == 4:
            return layer
    raise ValueError(f"backbone {backbone.name} has no layer with a spatial output")


def supports_grad_cam(model: keras.Model) -> bool:
    """True for a model built by trainer/model.py (its layers preprocess, backbone, head)."""
    names = {layer.name for layer in getattr(model, "layers", None) or []}
    return {PREPROCESS, BACKBONE, HEAD} <= names


def _logits(head: keras.Model, features: tf.Tensor) -> tuple[tf.Tensor, Any]:
    """The head's Dense layer before its activation: logits [N, U] and that activation."""
    dense = head.layers[-1]
    x = features
    for layer in head.layers[:-1]:
        x = layer(x, training=False)
    z = tf.matmul(tf.cast(x, tf.float32), tf.cast(dense.kernel, tf.float32))
    return z + tf.cast(dense.bias, tf.float32), dense.activation


def build_grad_cam(model: keras.Model, image_size: Sequence[int]) -> Callable[..., Any]:
    """pixels float32 [N, H, W, 3] (0..255 RGB), class_ids int64 [N] (-1: predicted) ->
    {"heatmaps" [N, H, W], "class_ids" [N], "probabilities" [N, C]}; N >= 1."""
    import keras

    height, width = (int(s) for s in image_size)
    backbone = model.get_layer(BACKBONE)
    preprocess = model.get_layer(PREPROCESS)
    head = model.get_layer(HEAD)
    conv = last_conv_layer(backbone)
    # two halves sharing the backbone's layers: the maps must be a tensor the rest is computed
    # from (a functional model returning an inner tensor hands back a copy of it)
    to_maps = keras.Model(backbone.inputs, conv.output, name="grad_cam_maps")
    if conv.output is backbone.output:  # the block is the backbone's output (most of them)
        from_maps: Callable[..., Any] = lambda maps, training: maps  # noqa: E731
    else:  # VGG: the last block's pooling follows
        from_maps = keras.Model(conv.output, backbone.output, name="grad_cam_rest")

    def explain(pixels: tf.Tensor, class_ids: tf.Tensor) -> dict[str, tf.Tensor]:
        maps = to_maps(preprocess(pixels), training=False)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(maps)  # the backbone is frozen: nothing else needs watching
            features = from_maps(maps, training=False)
            z, activation = _logits(head, features)
            if z.shape[-1] == 1:  # sigmoid head: class 1's logit is z, class 0's is -z
                z = tf.concat([-z, z], axis=-1)
                probs = tf.concat([1.0 - activation(z[:, 1:]), activation(z[:, 1:])], -1)
            else:
                probs = activation(z)
            chosen = tf.where(class_ids < 0, tf.argmax(z, axis=-1, output_type=tf.int64), class_ids)
            # the class score: its logit minus the mean logit (see the module docstring); one
            # image's score depends on its own maps only, so the sum's gradient is per image
            centered = z - tf.reduce_mean(z, axis=-1, keepdims=True)
            target = tf.reduce_sum(tf.gather(centered, chosen, batch_dims=1))
        grads = tape.gradient(target, maps)
        maps = tf.cast(maps, tf.float32)
        weights = tf.reduce_mean(tf.cast(grads, tf.float32), axis=[1, 2])
        cam = tf.nn.relu(tf.einsum("nhwk,nk->nhw", maps, weights))
        cam = tf.image.resize(cam[..., None], (height, width), method="bilinear")[..., 0]
        peak = tf.reduce_max(cam, axis=[1, 2], keepdims=True)
        cam = tf.math.divide_no_nan(cam, peak)
        return {"heatmaps": cam, "class_ids": chosen, "probabilities": tf.cast(probs, tf.float32)}

    return explain


def check_class_ids(class_ids: tf.Tensor, count: tf.Tensor, num_classes: int) -> tf.Operation:
    """INVALID_ARGUMENT unless class_ids has one entry per image, each -1 or a class id."""
    size_ok = tf.equal(tf.size(class_ids, out_type=tf.int64), tf.cast(count, tf.int64))
    range_ok = tf.reduce_all((class_ids >= -1) & (class_ids < num_classes))
    return tf.debugging.Assert(
        size_ok & range_ok,
        [
            f"input 'class_ids' must hold one value per image, each -1 (the predicted class) "
            f"or a class id in [0, {num_classes})"
        ],
    )
