"""Multi-worker training: `tf.distribute.MultiWorkerMirroredStrategy` over the workers that
TF_CONFIG names (cluster.py), for when one node is not enough.

Keras 3's `model.fit` does not run under MultiWorkerMirroredStrategy (keras-team/keras#20585: an
eager cross-replica MEAN reduce while building, then a metric concatenation, fail), so every
worker runs the custom loop below, which keeps the single-worker `Phases` (executor.py) meaning:

- the same model (`executor.build_model`), optimizer, losses and phases (head, then fine-tuning),
  and the same callbacks (`Phases._callbacks`: EpochLog records, BestCheckpoint, CSVLogger,
  ScalarLogger, EarlyStopping, ...; BackupAndRestore is replaced, see below), called once per epoch
  with the same logs: `loss`, `accuracy`, `val_loss`, `val_accuracy` over the whole epoch of the
  whole group (sums all-reduced, so every worker sees the same values and stops at the same time);
- the global batch is `trainer.batch_size`, split evenly over the replicas (workers x local
  devices); an epoch is the same number of global steps as on one worker, and the learning rate
  is not scaled: the same optimisation as a single worker, spread over the group;
- input through `strategy.distribute_datasets_from_function`: each worker reads its own part of
  a split, whole shards when the split has at least as many shards as there are workers, else
  every n-th record (`inputs.shard_inputs`). Cached features: each worker runs the backbone once
  over its own part; the head then trains on the features with the same loop;
- artifacts: the chief (worker 0) writes the output directory exactly as a single worker does
  (`executor.write_outputs`, so the same `export_model` and the same SavedModel); every other
  worker writes its logs and checkpoints to its own temporary directory, removed at the end (the
  rule of TensorFlow's multi-worker guide);
- fault tolerance with BackupAndRestore's contract: after every epoch each worker saves a
  `tf.train.Checkpoint` (model, optimizer, epoch), the chief in `checkpoints/`, the others in
  their temporary directory; at start every worker restores the chief's latest one. A worker
  whose peer disappears fails with `cluster.WorkerLost` (exit 75); once the lost worker and the
  failed ones are started again, the group resumes after the last finished epoch.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from pipeline_components.core import fsutil
from pipeline_components.core.errors import PipelineError
from pipeline_components.trainer import executor, inputs
from pipeline_components.trainer import model as model_lib
from pipeline_components.trainer.callbacks import BestCheckpoint, read_epoch_records
from pipeline_components.trainer.checkpoints import checkpoint_paths, prepare_checkpoints
from pipeline_components.trainer.cluster import Cluster, WorkerLost
from pipeline_components.trainer.config import TrainerConfig

log = logging.getLogger(__name__)

# What distribute_datasets_from_function takes: this worker's input pipeline's dataset.
DatasetFn = Callable[[tf.distribute.InputContext], tf.data.Dataset]
# One global batch of a distributed dataset: (images or features, labels), values per replica.
Batch = tuple[
    tf.types.experimental.distributed.PerReplica, tf.types.experimental.distributed.PerReplica
]
# A compiled step of Steps: a global batch -> [loss sum, correct, examples] over the group.
StepFn = Callable[[Batch], tf.Tensor]

# What a worker sees when a peer dies mid-collective, or restarts: the group must restart.
PEER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.AbortedError,
    tf.errors.CancelledError,
    tf.errors.DeadlineExceededError,
    tf.errors.FailedPreconditionError,
    tf.errors.InternalError,
    tf.errors.UnknownError,
)


@dataclasses.dataclass
class Group:
    """This worker in its group."""

    cluster: Cluster
    strategy: tf.distribute.Strategy
    output_dir: str  # the chief's output: where every worker restores the backups from
    write_dir: str  # output_dir on the chief, a temporary directory on the others

    @property
    def name(self) -> str:
        return f"worker {self.cluster.rank}/{self.cluster.num_workers}"


def backup_dir(root: str, phase: str) -> str:
    """The tf.train.Checkpoint backups of one phase under `root`/checkpoints/."""
    return checkpoint_paths(root)[f"backup_multi_worker_{phase}"]


def make_strategy(cluster: Cluster) -> tf.distribute.MultiWorkerMirroredStrategy:
    """The strategy, from TF_CONFIG. It must be made before anything else initialises
    TensorFlow's runtime in this process; it waits until every worker has started."""
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as e:
        if "program startup" not in str(e):
            raise
        raise PipelineError(
            f"TF_CONFIG names {cluster.num_workers} workers, but TensorFlow was already"
            " initialised in this process; run the multi-worker Trainer as its own command"
            " (transfer-pipeline train on every worker), not inside transfer-pipeline run"
        ) from None
    except PEER_ERRORS as e:
        raise WorkerLost(
            f"could not form the group of {cluster.num_workers} workers: {_first_line(e)}"
        ) from None


def _first_line(error: BaseException) -> str:
    """The informative line of a TensorFlow error (its first is often 'Graph execution
    error:')."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if any(k in line.lower() for k in ("aborted by", "unhealthy", "connect", "restarted")):
            return line[:300]
    return (lines[0] if lines else type(error).__name__)[:300]


def all_reduce_sum(strategy: tf.distribute.Strategy, values: Sequence[float]) -> np.ndarray:
    """Sum of a float vector over every replica of every worker (also a barrier)."""
    return _sum_fn(strategy)(tf.constant(values, tf.float32)).numpy()


@functools.cache
def _sum_fn(strategy: tf.distribute.Strategy) -> Callable[[tf.Tensor], tf.Tensor]:
    def replica(values: tf.Tensor) -> tf.Tensor:
        # identity: a value made on this worker's device; the eager input's device (localhost)
        # leaves the collective without a destination
        values = tf.identity(values)
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, values)

    @tf.function
    def total(values: tf.Tensor) -> tf.Tensor:
        return strategy.experimental_local_results(strategy.run(replica, args=(values,)))[0]

    return total


def all_agree(strategy: tf.distribute.Strategy, value: float) -> bool:
    """True when every replica holds the same `value`."""
    n, total, squares = all_reduce_sum(strategy, [1.0, value, value * value])
    mean = total / n
    return bool(abs(squares / n - mean * mean) <= 1e-6 * max(1.0, mean * mean))


def any_replica(strategy: tf.distribute.Strategy, flag: bool) -> bool:
    return bool(all_reduce_sum(strategy, [1.0 if flag else 0.0])[0] > 0)


def check_cluster(config: TrainerConfig, plan: executor.TrainingPlan, group: Group) -> None:
    replicas = group.strategy.num_replicas_in_sync
    workers = group.cluster.num_workers
    if config.batch_size % replicas:
        raise PipelineError(
            f"trainer.batch_size: {config.batch_size} does not split evenly over {replicas}"
            f" replicas ({workers} workers x {replicas // workers} devices); batch_size is the"
            " global batch"
        )
    for split, n in plan.num_examples.items():
        if n < workers:
            raise PipelineError(
                f"the {split} split has {n} examples, fewer than the {workers} workers"
            )


# ---------------------------------------------------------------------------- input


def live_dataset_fn(
    examples_dir: str,
    split: str,
    config: TrainerConfig,
    plan: executor.TrainingPlan,
    training: bool,
) -> DatasetFn:
    """Decoded (train: augmented) images of this worker's part of `split`, batched per replica."""
    repeat = bool(config.steps_per_epoch if training else config.validation_steps)

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        seed = None
        if training and config.seed is not None:
            seed = config.seed + ctx.input_pipeline_id  # different draws on every worker
        return inputs.make_dataset(
            examples_dir,
            split,
            image_size=plan.image_size,
            batch_size=ctx.get_per_replica_batch_size(config.batch_size),
            num_classes=plan.num_classes,
            training=training,
            augmentation=config.augmentation if training else None,
            shuffle_buffer=config.shuffle_buffer,
            shuffle_memory_mb=config.shuffle_memory_mb,
            seed=seed,
            repeat=repeat,
            shard=(ctx.num_input_pipelines, ctx.input_pipeline_id),
        )

    return dataset_fn


def shard_features(
    net: keras.Model,
    examples_dir: str,
    split: str,
    plan: executor.TrainingPlan,
    config: TrainerConfig,
    cluster: Cluster,
) -> tuple[np.ndarray, np.ndarray]:
    """One backbone pass over this worker's part of `split`: (features, labels) as numpy."""
    extractor = model_lib.feature_extractor(net)
    extract = tf.function(lambda x: extractor(x, training=False))
    ds = inputs.make_dataset(
        examples_dir,
        split,
        image_size=plan.image_size,
        batch_size=config.batch_size,
        num_classes=plan.num_classes,
        shard=(cluster.num_workers, cluster.rank),
    )
    xs, ys = [], []
    for x, y in ds:
        xs.append(extract(x).numpy())
        ys.append(y.numpy())
    if not xs:  # an empty part (a split with fewer shards' worth of records than workers)
        shape = tuple(extractor.output.shape[1:])
        label_shape = (0, 1) if plan.num_classes == 2 else (0,)
        label_type = np.float32 if plan.num_classes == 2 else np.int32
        return np.zeros((0, *shape), np.float32), np.zeros(label_shape, label_type)
    return np.concatenate(xs), np.concatenate(ys)


def feature_dataset_fn(
    features: np.ndarray, labels: np.ndarray, config: TrainerConfig, training: bool
) -> DatasetFn:
    repeat = bool(config.steps_per_epoch if training else config.validation_steps)

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        seed = None
        if training and config.seed is not None:
            seed = config.seed + ctx.input_pipeline_id
        return executor.feature_dataset(
            features,
            labels,
            batch_size=ctx.get_per_replica_batch_size(config.batch_size),
            training=training,
            seed=seed,
            repeat=repeat,
        )

    return dataset_fn


def distributed_datasets(
    net: keras.Model,
    examples_dir: str,
    config: TrainerConfig,
    plan: executor.TrainingPlan,
    group: Group,
) -> tuple[tf.distribute.DistributedDataset, tf.distribute.DistributedDataset, float | None]:
    """(train, validation, seconds spent caching features or None), distributed datasets."""
    strategy, seconds = group.strategy, None
    if plan.cached:
        t0 = time.perf_counter()
        parts = {
            split: shard_features(net, examples_dir, split, plan, config, group.cluster)
            for split in ("train", "validation")
        }
        seconds = time.perf_counter() - t0
        log.info(
            "%s: backbone features of its %d train / %d validation images cached in %.1fs",
            group.name,
            len(parts["train"][1]),
            len(parts["validation"][1]),
            seconds,
        )
        train_fn = feature_dataset_fn(*parts["train"], config, training=True)
        val_fn = feature_dataset_fn(*parts["validation"], config, training=False)
    else:
        train_fn = live_dataset_fn(examples_dir, "train", config, plan, training=True)
        val_fn = live_dataset_fn(examples_dir, "validation", config, plan, training=False)
    train = strategy.distribute_datasets_from_function(train_fn)
    val = strategy.distribute_datasets_from_function(val_fn)
    return train, val, seconds


# ---------------------------------------------------------------------------- the loop


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

            def nothing() -> list[
                tf.Tensor
            ]:  # a worker out of data before the others (uneven parts of a split)
                return [*(tf.zeros_like(v) for v in variables), zeros]

            # Keras/TensorFlow kernels fail on some empty batches (a Conv2D on [0, H, W, 3]);
            # the collectives (all_reduce above, apply_gradients below) run on every replica.
            *grads, totals = tf.cond(n > 0, forward_backward, nothing)
            if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
                grads = agree_on_finite(ctx, grads)
            optimizer.apply_gradients(zip(grads, variables, strict=True))
            return totals

        def eval_replica(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
            def evaluate() -> tf.Tensor:
                per_example, hits, n = stats(y, model(x, training=False))
                return tf.stack([tf.reduce_sum(per_example), hits, n])

            return tf.cond(tf.shape(x)[0] > 0, evaluate, lambda: zeros)

        def over_group(fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]) -> StepFn:
            def step(batch: Batch) -> tf.Tensor:
                totals = strategy.run(fn, args=batch)
                return strategy.reduce(tf.distribute.ReduceOp.SUM, totals, axis=None)

            return tf.function(step, input_signature=[element_spec])

        self.train_step, self.eval_step = over_group(train_replica), over_group(eval_replica)

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


@dataclasses.dataclass
class Loop:
    """The phases of one training run on this worker."""

    group: Group
    phases: executor.Phases  # the single-worker phases: their config, plan and callbacks
    train: tf.distribute.DistributedDataset
    val: tf.distribute.DistributedDataset
    resumed_from_epoch: int | None = None
    _train_iterator: Iterator[Batch] | None = None

    def _train_batches(self) -> Iterator[Batch]:
        steps = self.phases.config.steps_per_epoch
        if not steps:
            return iter(self.train)  # one pass, reshuffled
        if self._train_iterator is None:  # the data repeats: continue where the last epoch ended
            self._train_iterator = iter(self.train)
        return (next(self._train_iterator) for _ in range(steps))

    def _val_batches(self) -> Iterator[Batch]:
        steps = self.phases.config.validation_steps
        if not steps:
            return iter(self.val)
        it = iter(self.val)
        return (next(it) for _ in range(steps))

    def _restore(self, checkpoint: tf.train.Checkpoint, phase: str, epoch: tf.Variable) -> None:
        latest = tf.train.latest_checkpoint(backup_dir(self.group.output_dir, phase))
        if latest:
            checkpoint.restore(latest).assert_existing_objects_matched()
        restored = int(epoch.numpy())
        if not all_agree(self.group.strategy, restored):
            raise WorkerLost(
                f"{self.group.name}: the workers restored different epochs of the {phase} phase"
                f" ({restored} here) from {backup_dir(self.group.output_dir, phase)}"
            )
        if latest:
            log.info(
                "%s: restored the %s phase after epoch %d from %s",
                self.group.name,
                phase,
                restored,
                latest,
            )
            self.resumed_from_epoch = restored

    def phase(
        self, name: str, model: keras.Model, learning_rate: float, first: int, last: int
    ) -> int:
        """Train `model` for epochs first..last-1 (numbered across phases); returns the number
        of epochs completed when the phase ends (EarlyStopping may end it sooner)."""
        config, plan, strategy = self.phases.config, self.phases.plan, self.group.strategy
        with strategy.scope():
            optimizer = model_lib.make_optimizer(config.optimizer, learning_rate)
            if plan.mixed:
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            optimizer.build(model.trainable_variables)
        epoch = tf.Variable(first, dtype=tf.int64, trainable=False, name="epoch")
        stopped = tf.Variable(False, trainable=False, name="stopped")
        checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer, epoch=epoch, stopped=stopped
        )
        self._restore(checkpoint, name, epoch)
        done = int(epoch.numpy())
        if done >= last or bool(stopped.numpy()):
            return done
        manager = tf.train.CheckpointManager(
            checkpoint, backup_dir(self.group.write_dir, name), max_to_keep=1
        )
        callbacks = keras.callbacks.CallbackList(
            [
                c
                for c in self.phases._callbacks(name)
                if not isinstance(c, keras.callbacks.BackupAndRestore)
            ],
            model=model,
        )
        steps = Steps(strategy, model, optimizer, plan.num_classes, self.train.element_spec)
        model.stop_training = False
        callbacks.on_train_begin()
        for e in range(done, last):
            callbacks.on_epoch_begin(e)
            logs = epoch_logs(Steps.run(steps.train_step, self._train_batches()))
            callbacks.on_test_begin()
            logs.update(epoch_logs(Steps.run(steps.eval_step, self._val_batches()), "val_"))
            callbacks.on_test_end(logs)
            callbacks.on_epoch_end(e, logs)
            stop = any_replica(strategy, bool(model.stop_training))
            epoch.assign(e + 1)
            stopped.assign(stop)
            # every worker saves (the chief where all restore from), like the guide's rule
            manager.save(checkpoint_number=e + 1)
            if stop:
                break
        callbacks.on_train_end()
        return int(epoch.numpy())


# ---------------------------------------------------------------------------- the run


def train_and_evaluate(
    examples_dir: str,
    config: TrainerConfig,
    group: Group,
    *,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> tuple[keras.Model, dict[str, Any], dict[str, list]]:
    """Like executor.train_and_evaluate, on every worker of the group; the chief's records and
    best weights are in output_dir, the others' in their temporary directory."""
    strategy, cluster = group.strategy, group.cluster
    executor.check_config(config)
    plan = executor.plan_training(examples_dir, config)
    check_cluster(config, plan, group)
    if config.seed is not None:
        keras.utils.set_random_seed(config.seed)
    with executor.dtype_policy("mixed_float16" if plan.mixed else "float32"):
        with strategy.scope():
            net = executor.build_model(config, plan)
        # The chief resumes its checkpoints/ or clears them; no worker reads them before that.
        run_key = {**plan.run_key(config), "workers": cluster.num_workers}
        prepare_checkpoints(group.write_dir, run_key)
        all_reduce_sum(strategy, [1.0])
        log.info(
            "%s%s: training %s on %d train / %d validation images, %d classes, %dx%d: %s"
            " features, %s, %d replicas in sync, global batch %d",
            group.name,
            " (chief)" if cluster.is_chief else f" (writes to {group.write_dir})",
            config.backbone,
            plan.num_examples["train"],
            plan.num_examples["validation"],
            plan.num_classes,
            *plan.image_size,
            "cached" if plan.cached else "live",
            "mixed_float16" if plan.mixed else "float32",
            strategy.num_replicas_in_sync,
            config.batch_size,
        )
        train, val, feature_seconds = distributed_datasets(net, examples_dir, config, plan, group)
        paths = checkpoint_paths(group.write_dir)
        head = net.get_layer(model_lib.HEAD)
        target = net if plan.fine_tune else head
        best = BestCheckpoint(paths["best_weights"], paths["best_state"], target, config.monitor)
        phases = executor.Phases(
            net, config, plan, group.write_dir, train, val, best, tuple(callbacks)
        )
        loop = Loop(group, phases, train, val)
        head_epochs = loop.phase(
            "head", head if plan.cached else net, config.learning_rate, 0, config.epochs
        )
        unfrozen: list[str] = []
        if plan.fine_tune and config.fine_tune_from:  # plan.fine_tune: fine_tune_from is set
            unfrozen = model_lib.unfreeze_from(net, config.fine_tune_from)
            loop.phase(
                "fine_tune",
                net,
                config.fine_tune_learning_rate,
                head_epochs,
                head_epochs + config.fine_tune_epochs,
            )
        best_state = best.restore()
        trainable = model_lib.count_params(net.trainable_weights)

    history = executor.history_from_records(read_epoch_records(paths["epochs"]))
    summary = executor.training_summary(
        config,
        plan,
        strategy,
        history,
        best_state,
        loop.resumed_from_epoch,
        feature_seconds,
        trainable,
        unfrozen,
    )
    summary["workers"] = cluster.num_workers
    return net, summary, history


def local_copy(net: keras.Model, config: TrainerConfig, num_classes: int) -> keras.Model:
    """The trained model with plain float32 variables, outside the strategy: what is exported."""
    with executor.dtype_policy("float32"):
        clone = model_lib.create_model(dataclasses.replace(config, weights="none"), num_classes)
    clone.set_weights(net.get_weights())
    return clone


def worker_temp_dir(cluster: Cluster) -> str:
    """A worker's own temporary directory (not the chief's): named by its group and rank, so a
    worker restarted after being killed replaces what it left there."""
    group = hashlib.sha256(json.dumps(cluster.addresses).encode()).hexdigest()[:12]
    path = os.path.join(tempfile.gettempdir(), f"transfer-pipeline-{group}-worker{cluster.rank}")
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def run_trainer(
    examples_dir: str,
    output_dir: str,
    config: TrainerConfig,
    cluster: Cluster,
    *,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> dict[str, Any]:
    """This worker's part of a multi-worker Trainer run: train with the group; the chief then
    writes every artifact (executor.write_outputs) while the others wait; the others remove
    their temporary directory. Returns the summary (the others' has `paths: None`)."""
    for noisy in ("tensorflow", "absl"):  # a line per collective and per checkpoint otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    strategy = make_strategy(cluster)
    chief = cluster.is_chief
    write_dir = output_dir if chief else worker_temp_dir(cluster)
    group = Group(cluster, strategy, output_dir, write_dir)
    try:
        try:
            net, summary, history = train_and_evaluate(
                examples_dir, config, group, callbacks=callbacks
            )
        except PEER_ERRORS as e:
            raise WorkerLost(
                f"{group.name}: lost a peer worker ({type(e).__name__}: {_first_line(e)});"
                " restart this worker, the group resumes after its last finished epoch"
            ) from None
        summary["paths"] = None
        if chief:
            model = local_copy(net, config, summary["num_classes"])
            summary = executor.write_outputs(
                model, summary, history, examples_dir, output_dir, config
            )
        try:  # the group stays up until the chief's artifacts are written
            all_reduce_sum(strategy, [1.0])
        except PEER_ERRORS as e:
            if not chief:
                raise WorkerLost(
                    f"{group.name}: lost the chief while it wrote the artifacts"
                    f" ({_first_line(e)}); restart this worker"
                ) from None
            log.warning("%s: a worker left before the end (%s)", group.name, _first_line(e))
        return summary
    finally:
        if not chief:
            fsutil.rmtree(write_dir)
            log.info("%s: removed its temporary directory %s", group.name, write_dir)
