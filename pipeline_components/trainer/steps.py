"""The multi-worker loop's compiled steps (distributed.py): one global batch of training or of
evaluation over every replica of every worker, with the meaning of Keras' `fit` on one process:
the same losses and accuracy, the mean loss over the global batch, gradients summed over the
replicas, and the LossScaleOptimizer under mixed_float16."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import keras
import numpy as np
import tensorflow as tf

# One global batch of a distributed dataset: (images or features, labels), values per replica.
Batch = tuple[
    tf.types.experimental.distributed.PerReplica, tf.types.experimental.distributed.PerReplica
]
# A compiled step: a global batch -> [loss sum, correct, examples] over the group.
StepFn = Callable[[Batch], tf.Tensor]
# A replica's part of a step: (x, y) -> [loss sum, correct, examples] of its examples.
ReplicaFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
# (labels, predictions) -> (per-example losses, correct predictions, examples)
StatsFn = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor, tf.Tensor]]


def batch_stats(num_classes: int) -> StatsFn:
    """The per-example losses and the correct predictions of a batch, as `compile_model`'s loss
    and accuracy metric count them."""
    if num_classes == 2:
        loss_fn = keras.losses.BinaryCrossentropy(reduction=None)
    else:
        loss_fn = keras.losses.SparseCategoricalCrossentropy(reduction=None)

    def stats(y: tf.Tensor, p: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        per_example = loss_fn(y, p)
        if num_classes == 2:  # keras.metrics.BinaryAccuracy, threshold 0.5
            hits = tf.equal(tf.cast(p > 0.5, y.dtype), y)[:, 0]
        else:  # SparseCategoricalAccuracy
            hits = tf.equal(tf.argmax(p, axis=-1, output_type=tf.int32), tf.cast(y, tf.int32))
        n = tf.cast(tf.shape(per_example)[0], tf.float32)
        return per_example, tf.reduce_sum(tf.cast(hits, tf.float32)), n

    return stats


def train_replica_fn(
    model: keras.Model, optimizer: keras.optimizers.Optimizer, stats: StatsFn
) -> ReplicaFn:
    zeros = tf.zeros([3])

    def train_replica(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        ctx = tf.distribute.get_replica_context()
        n = tf.cast(tf.shape(x)[0], tf.float32)
        # the mean over the global batch: the gradients are summed over the replicas
        group_n = tf.maximum(ctx.all_reduce(tf.distribute.ReduceOp.SUM, n), 1.0)
        variables = model.trainable_variables

        def forward_backward() -> list[tf.Tensor]:
            with tf.GradientTape() as tape:
                per_example, hits, _ = stats(y, model(x, training=True))
                loss = tf.reduce_sum(per_example) / group_n
                if model.losses:
                    loss += tf.add_n(model.losses) / ctx.num_replicas_in_sync
                scaled = optimizer.scale_loss(loss)  # LossScaleOptimizer: mixed_float16
            grads = tape.gradient(scaled, variables)
            return [*grads, tf.stack([tf.reduce_sum(per_example), hits, n])]

        def nothing() -> list[tf.Tensor]:
            # a worker out of data before the others (uneven parts of a split)
            return [*(tf.zeros_like(v) for v in variables), zeros]

        # Keras/TensorFlow kernels fail on some empty batches (a Conv2D on [0, H, W, 3]);
        # the collectives (all_reduce above, apply_gradients below) run on every replica.
        *grads, totals = tf.cond(n > 0, forward_backward, nothing)
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            grads = agree_on_finite(ctx, grads)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        return totals

    return train_replica


def eval_replica_fn(model: keras.Model, stats: StatsFn) -> ReplicaFn:
    zeros = tf.zeros([3])

    def eval_replica(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        def evaluate() -> tf.Tensor:
            per_example, hits, n = stats(y, model(x, training=False))
            return tf.stack([tf.reduce_sum(per_example), hits, n])

        return tf.cond(tf.shape(x)[0] > 0, evaluate, lambda: zeros)

    return eval_replica


def over_group(
    strategy: tf.distribute.Strategy, fn: ReplicaFn, element_spec: tuple[tf.TypeSpec, tf.TypeSpec]
) -> StepFn:
    """`fn` on every replica, its totals summed over the group, compiled once."""

    def step(batch: Batch) -> tf.Tensor:
        totals = strategy.run(fn, args=batch)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, totals, axis=None)

    return tf.function(step, input_signature=[element_spec])


class Steps:
    """One phase's compiled steps. Each returns [sum of per-example losses, correct predictions,
    examples] over the whole group for one global batch."""

    def __init__(
        self,
        strategy: tf.distribute.Strategy,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        num_classes: int,
        element_spec: tuple[tf.TypeSpec, tf.TypeSpec],
    ) -> None:
        stats = batch_stats(num_classes)
        train = train_replica_fn(model, optimizer, stats)
        self.train_step = over_group(strategy, train, element_spec)
        self.eval_step = over_group(strategy, eval_replica_fn(model, stats), element_spec)

    @staticmethod
    def run(step: StepFn, batches: Iterable[Batch]) -> np.ndarray:
        totals = np.zeros(3)
        for batch in batches:
            totals += step(batch).numpy()
        return totals


def agree_on_finite(ctx: tf.distribute.ReplicaContext, grads: list[tf.Tensor]) -> list[tf.Tensor]:
    """LossScaleOptimizer skips a step whose gradients are not finite, deciding on this
    replica's gradients before they are all-reduced (inside a cond that holds the all-reduce):
    replicas that decided differently would wait for each other for ever. So when any replica's
    gradients are not finite, every replica's become NaN, and all skip the step together."""
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
    bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32)) > 0
    return [g + tf.cast(tf.where(bad, np.nan, 0.0), g.dtype) for g in grads]


def epoch_logs(totals: np.ndarray, prefix: str = "") -> dict[str, float]:
    n = max(float(totals[2]), 1.0)
    return {f"{prefix}loss": float(totals[0] / n), f"{prefix}accuracy": float(totals[1] / n)}
