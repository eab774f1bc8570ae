"""The multi-worker runtime: this process is one worker of a
`tf.distribute.MultiWorkerMirroredStrategy` group over the workers that TF_CONFIG names
(cluster.py), for when one node is not enough. training.py runs the same skeleton as on one
process; this module is how a worker trains, resumes and reads its data (runtime.py's interface).

Keras 3's `model.fit` does not run under MultiWorkerMirroredStrategy (keras-team/keras#20585: an
eager cross-replica MEAN reduce while building, then a metric concatenation, fail), so every
worker runs a custom loop (`MultiWorker.phase`, its compiled steps in steps.py) with the meaning
of the one-process runtime's `fit` (fit.py):

- the same model, optimizer, losses and phases (head, then fine-tuning), and the same callbacks
  (`runtime.Run.callbacks`: epoch records, best checkpoint, history.csv, TensorBoard scalars,
  early stopping; without fit.py's BackupAndRestore, see below), called once per epoch with the
  same logs: `loss`, `accuracy`, `val_loss`, `val_accuracy` over the whole epoch of the whole
  group (sums all-reduced, so every worker sees the same values and stops at the same time);
- the global batch is `trainer.batch_size`, split evenly over the replicas (workers x local
  devices); an epoch is the same number of global steps as on one worker, and the learning rate
  is not scaled: the same optimisation as a single worker, spread over the group;
- input through `strategy.distribute_datasets_from_function`: each worker reads its own part of
  a split, whole shards when the split has at least as many shards as there are workers, else
  every n-th record (`inputs.shard_inputs`). Cached features: FeatureGen's artifact when the
  run is given one, else the chief runs the feature writer's Beam job once into its
  `checkpoints/features/` while the others wait; every worker streams its own part of the
  feature files the same way; the head trains on them with the same loop;
- artifacts: the chief (worker 0) writes the output directory exactly as one process does
  (`executor.write_outputs`, from a float32 copy of the model outside the strategy); every other
  worker writes its logs and checkpoints to its own temporary directory, removed at the end (the
  rule of TensorFlow's multi-worker guide); the group stays up until the chief has written;
- fault tolerance with BackupAndRestore's contract: after every epoch each worker saves a
  `tf.train.Checkpoint` (model, optimizer, epoch), the chief in `checkpoints/`, the others in
  their temporary directory; at start every worker restores the chief's latest one. A worker
  whose peer disappears fails with `cluster.WorkerLost` (exit 75); once the lost worker and the
  failed ones are started again, the group resumes after the last finished epoch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from pipeline_components.core import fsutil
from pipeline_components.core.errors import PipelineError
from pipeline_components.features import files
from pipeline_components.trainer import datasets
from pipeline_components.trainer import model as model_lib
from pipeline_components.trainer.checkpoints import checkpoint_paths, prepare_checkpoints
from pipeline_components.trainer.cluster import Cluster, WorkerLost
from pipeline_components.trainer.config import TrainerConfig
from pipeline_components.trainer.plan import TrainingPlan
from pipeline_components.trainer.runtime import Run, Runtime
from pipeline_components.trainer.steps import Batch, Steps, epoch_logs

log = logging.getLogger(__name__)

# What distribute_datasets_from_function takes: this worker's input pipeline's dataset.
DatasetFn = Callable[[tf.distribute.InputContext], tf.data.Dataset]

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


def check_cluster(config: TrainerConfig, plan: TrainingPlan, group: MultiWorker) -> None:
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


def worker_temp_dir(cluster: Cluster) -> str:
    """A worker's own temporary directory (not the chief's): named by its group and rank, so a
    worker restarted after being killed replaces what it left there."""
    group = hashlib.sha256(json.dumps(cluster.addresses).encode()).hexdigest()[:12]
    path = os.path.join(tempfile.gettempdir(), f"transfer-pipeline-{group}-worker{cluster.rank}")
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


# ---------------------------------------------------------------------------- input


def per_replica(
    build: Callable[..., tf.data.Dataset], global_batch: int, *, shard: bool
) -> DatasetFn:
    """What distribute_datasets_from_function takes, from a datasets.py function `build`: its
    dataset for one input pipeline of this worker, batched per replica, seeded per pipeline, and
    with `shard` this worker's part of the split."""

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        part = {"shard": (ctx.num_input_pipelines, ctx.input_pipeline_id)} if shard else {}
        batch_size = ctx.get_per_replica_batch_size(global_batch)
        return build(batch_size=batch_size, pipeline=ctx.input_pipeline_id, **part)

    return dataset_fn


# ---------------------------------------------------------------------------- the runtime


class MultiWorker(Runtime):
    """This worker in its group: `output_dir` is the chief's output, where every worker restores
    the backups from; `write_dir` is output_dir on the chief, a temporary directory on the
    others."""

    def __init__(
        self, cluster: Cluster, strategy: tf.distribute.Strategy, output_dir: str, write_dir: str
    ) -> None:
        self.cluster, self.strategy = cluster, strategy
        self.output_dir, self.write_dir = output_dir, write_dir
        self.is_chief = cluster.is_chief
        self._train_iterator: Iterator[Batch] | None = None

    @classmethod
    def join(cls, output_dir: str, cluster: Cluster) -> MultiWorker:
        """Form the group (waits until every worker has started) and take this worker's
        directory."""
        for noisy in ("tensorflow", "absl"):  # a line per collective and per checkpoint otherwise
            logging.getLogger(noisy).setLevel(logging.WARNING)
        strategy = make_strategy(cluster)
        write_dir = output_dir if cluster.is_chief else worker_temp_dir(cluster)
        return cls(cluster, strategy, output_dir, write_dir)

    @property
    def name(self) -> str:
        return f"worker {self.cluster.rank}/{self.cluster.num_workers}"

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        try:
            yield
        except PEER_ERRORS as e:
            raise WorkerLost(
                f"{self.name}: lost a peer worker ({type(e).__name__}: {_first_line(e)});"
                " restart this worker, the group resumes after its last finished epoch"
            ) from None

    def check(self, config: TrainerConfig, plan: TrainingPlan) -> None:
        check_cluster(config, plan, self)

    def prepare(self, run_key: dict[str, Any]) -> None:
        # The chief resumes its checkpoints/ or clears them; no worker reads them before that.
        prepare_checkpoints(self.write_dir, {**run_key, "workers": self.cluster.num_workers})
        all_reduce_sum(self.strategy, [1.0])

    def describe(self, config: TrainerConfig) -> tuple[str, str]:
        me = " (chief)" if self.is_chief else f" (writes to {self.write_dir})"
        replicas = self.strategy.num_replicas_in_sync
        return (
            f"{self.name}{me}: ",
            f", {replicas} replicas in sync, global batch {config.batch_size}",
        )

    def datasets(
        self, net: keras.Model, examples_dir: str, config: TrainerConfig, plan: TrainingPlan
    ) -> tuple[Any, Any, float | None]:
        """Distributed datasets of this worker's parts of train and validation."""
        seconds = None
        if plan.cached:
            manifest, seconds = self._features(net, examples_dir, config, plan.features)
            train_fn = functools.partial(
                datasets.features_dataset, manifest, "train", config, training=True
            )
            val_fn = functools.partial(
                datasets.features_dataset, manifest, "validation", config, training=False
            )
        else:
            train_fn = functools.partial(
                datasets.image_dataset, examples_dir, "train", config, plan, training=True
            )
            val_fn = functools.partial(
                datasets.image_dataset, examples_dir, "validation", config, plan, training=False
            )
        distribute = self.strategy.distribute_datasets_from_function
        train = distribute(per_replica(train_fn, config.batch_size, shard=True))
        val = distribute(per_replica(val_fn, config.batch_size, shard=True))
        return train, val, seconds

    def _features(
        self, net: keras.Model, examples_dir: str, config: TrainerConfig, given: str | None
    ) -> tuple[files.Manifest, float | None]:
        """Every worker streams its own part of the features: FeatureGen's (`given`), or ones
        the chief writes first (the feature writer's Beam job, into its checkpoints/) while
        the others wait."""
        if given:
            return datasets.given_features(net, examples_dir, config, given), None
        directory = datasets.features_dir(self.output_dir)
        seconds = None
        if self.is_chief:
            manifest, seconds = datasets.cached_features(net, examples_dir, config, directory)
        all_reduce_sum(self.strategy, [1.0])  # the features are complete
        if not self.is_chief:
            manifest = datasets.read_features(net, examples_dir, config, directory)
        log.info(
            "%s: streams its part of %d train / %d validation features from %s",
            self.name,
            manifest.count("train"),
            manifest.count("validation"),
            directory,
        )
        return manifest, seconds

    def phase(
        self, run: Run, name: str, model: keras.Model, learning_rate: float, first: int, last: int
    ) -> int:
        optimizer = self._optimizer(run, model, learning_rate)
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
            checkpoint, backup_dir(self.write_dir, name), max_to_keep=1
        )
        callbacks = keras.callbacks.CallbackList(run.callbacks(name), model=model)
        steps = Steps(self.strategy, model, optimizer, run.plan.num_classes, run.train.element_spec)
        model.stop_training = False
        callbacks.on_train_begin()
        for e in range(done, last):
            callbacks.on_epoch_begin(e)
            logs = epoch_logs(Steps.run(steps.train_step, self._train_batches(run)))
            callbacks.on_test_begin()
            logs.update(epoch_logs(Steps.run(steps.eval_step, self._val_batches(run)), "val_"))
            callbacks.on_test_end(logs)
            callbacks.on_epoch_end(e, logs)
            stop = any_replica(self.strategy, bool(model.stop_training))
            epoch.assign(e + 1)
            stopped.assign(stop)
            # every worker saves (the chief where all restore from), like the guide's rule
            manager.save(checkpoint_number=e + 1)
            if stop:
                break
        callbacks.on_train_end()
        return int(epoch.numpy())

    def _optimizer(
        self, run: Run, model: keras.Model, learning_rate: float
    ) -> keras.optimizers.Optimizer:
        """The phase's optimizer, its variables built in the strategy's scope."""
        with self.strategy.scope():
            optimizer = model_lib.make_optimizer(run.config.optimizer, learning_rate)
            if run.plan.mixed:
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            optimizer.build(model.trainable_variables)
        return optimizer

    def _train_batches(self, run: Run) -> Iterator[Batch]:
        steps = run.config.steps_per_epoch
        if not steps:
            return iter(run.train)  # one pass, reshuffled
        if self._train_iterator is None:  # the data repeats: continue where the last epoch ended
            self._train_iterator = iter(run.train)
        return (next(self._train_iterator) for _ in range(steps))

    def _val_batches(self, run: Run) -> Iterator[Batch]:
        steps = run.config.validation_steps
        if not steps:
            return iter(run.val)
        it = iter(run.val)
        return (next(it) for _ in range(steps))

    def _restore(self, checkpoint: tf.train.Checkpoint, phase: str, epoch: tf.Variable) -> None:
        """Every worker restores the chief's latest backup of `phase`, and all must agree."""
        latest = tf.train.latest_checkpoint(backup_dir(self.output_dir, phase))
        if latest:
            checkpoint.restore(latest).assert_existing_objects_matched()
        restored = int(epoch.numpy())
        if not all_agree(self.strategy, restored):
            raise WorkerLost(
                f"{self.name}: the workers restored different epochs of the {phase} phase"
                f" ({restored} here) from {backup_dir(self.output_dir, phase)}"
            )
        if latest:
            log.info(
                "%s: restored the %s phase after epoch %d from %s",
                self.name,
                phase,
                restored,
                latest,
            )
            self.resumed_from_epoch = restored

    def summary_fields(self) -> dict[str, Any]:
        return {"workers": self.cluster.num_workers}

    def exportable(self, net: keras.Model, config: TrainerConfig, num_classes: int) -> keras.Model:
        """The trained model with plain float32 variables, outside the strategy."""
        return model_lib.float32_copy(net, config, num_classes)

    def finish(self) -> None:
        """The group stays up until the chief's artifacts are written."""
        try:
            all_reduce_sum(self.strategy, [1.0])
        except PEER_ERRORS as e:
            if not self.is_chief:
                raise WorkerLost(
                    f"{self.name}: lost the chief while it wrote the artifacts"
                    f" ({_first_line(e)}); restart this worker"
                ) from None
            log.warning("%s: a worker left before the end (%s)", self.name, _first_line(e))

    def close(self) -> None:
        if not self.is_chief:
            fsutil.rmtree(self.write_dir)
            log.info("%s: removed its temporary directory %s", self.name, self.write_dir)
