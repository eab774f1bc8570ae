"""Before/after on class-sorted folders: the old input order against the new one (issue 12).

    python -m benchmarks.class_order [--per-class 1000] [--epochs 12] [--seeds 1 2 3] [--quick]

Not a timing: a measurement of what is learned. Data: sample shapes, circles vs stripes, 32x32
JPEGs, `--per-class` train images per class (the notebook's 1,000), 100 validation and 200 test
images per class; every circle's path sorts before every square's. ExampleGen runs once.

- old: the same shards with their records rewritten in path order (what ExampleGen wrote before
  issue 12) and the Trainer's shuffle buffer at the old default of 1,000 records: the first batch
  of every epoch holds few squares and the share drifts upwards through the epoch.
- new: the shards as ExampleGen writes them now (hash order) and the default buffer (the whole
  split, reshuffled every epoch).

The same Trainer call for both, same seed (same initial weights): frozen random ResNet50
(`weights: none`; a random ResNet keeps O(1) features, see tests/test_trainer.py), global-average
head, Adam 1e-3, batch 100, one pass per epoch (steps_per_epoch 20 at 1,000 per class), no
augmentation, `cache_features: false` (the live input path; cached features were already fully
shuffled). Reported per seed and variant: the class share of the batches of the first epoch, the
validation accuracy after every epoch, the test accuracy after every epoch, and the test accuracy
of the epoch the Trainer exports (best val_accuracy). Results: <out>/class_order.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time

from benchmarks import common

NAME = "class_order"
CLASSES = ("circles", "stripes")
OLD_SHUFFLE_BUFFER = 1000  # the Trainer's default before issue 12


def make_examples(per_class: int, size: int = 32) -> str:
    """ExampleGen output of class-sorted shape JPEGs (cached in $BENCH_CACHE)."""
    from pipeline_components.example_gen.executor import run_example_gen
    from pipeline_components.example_gen.stats import RECORD_ORDER
    from pipeline_components.tools import sample_data

    root = os.path.join(common.cache_dir(NAME), f"shapes-{per_class}-{size}-{RECORD_ORDER}")
    out, done = os.path.join(root, "examples"), os.path.join(root, ".complete")
    if not os.path.exists(done):
        shutil.rmtree(root, ignore_errors=True)
        images = os.path.join(root, "images")
        sample_data.generate(images, CLASSES, (per_class, 100, 200), (size, size))
        run_example_gen(images, out)
        open(done, "w").close()
    return out


def path_ordered_copy(examples_dir: str, out: str) -> str:
    """`examples_dir` with every shard's records in path order: the old ExampleGen's output
    (same shard assignment; it wrote each shard's files sorted by relative path)."""
    import tensorflow as tf

    from pipeline_components.core import examples

    if os.path.exists(out):
        return out
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(examples_dir, tmp)
    options = tf.io.TFRecordOptions(compression_type="GZIP", compression_level=0)

    def name(record: bytes) -> str:
        feature = tf.train.Example.FromString(record).features.feature
        return feature[examples.FILENAME].bytes_list.value[0].decode()

    for split in ("train", "validation", "test"):
        for path in examples.split_files(tmp, split):
            records = list(
                tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator()
            )
            with tf.io.TFRecordWriter(path, options) as writer:
                for record in sorted(records, key=name):
                    writer.write(record)
    os.rename(tmp, out)
    return out


def trainer_config(seed: int, epochs: int, per_class: int, old: bool):
    from pipeline_components.trainer.config import TrainerConfig

    return TrainerConfig(
        backbone="resnet50",
        weights="none",
        image_size=[32, 32],
        head="global_average",
        optimizer="adam",
        learning_rate=1e-3,
        augmentation=None,
        cache_features="false",
        batch_size=100,
        epochs=epochs,
        steps_per_epoch=2 * per_class // 100,
        seed=seed,
        shuffle_buffer=OLD_SHUFFLE_BUFFER if old else None,
    )


def first_epoch_shares(examples_dir: str, config, per_class: int) -> list[float]:
    """Share of the second class in each batch of the first epoch, as fit() sees them."""
    from pipeline_components.trainer import datasets
    from pipeline_components.trainer.plan import plan_training

    plan = plan_training(examples_dir, config)
    train, _ = datasets.live_datasets(examples_dir, config, plan)
    steps = config.steps_per_epoch
    return [round(float(y.numpy().mean()), 2) for _, y in train.take(steps)]


def _test_accuracy(net, test) -> float:
    import numpy as np

    x, y = test
    p = net.predict(x, verbose=0)[:, 0]
    return float(np.mean((p > 0.5) == (y > 0.5)))


def train_once(examples_dir: str, config) -> dict:
    """One Trainer run; test accuracy after every epoch and of the exported (best) epoch."""
    import keras
    import numpy as np

    from pipeline_components.trainer import inputs, training
    from pipeline_components.trainer.fit import OneProcess

    test_ds = inputs.make_dataset(
        examples_dir, "test", image_size=(32, 32), batch_size=100, num_classes=2
    )
    xs, ys = zip(*[(x.numpy(), y.numpy()[:, 0]) for x, y in test_ds], strict=True)
    test = (np.concatenate(xs), np.concatenate(ys))
    per_epoch: list[float] = []

    class TestAccuracy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            per_epoch.append(round(_test_accuracy(self.model, test), 4))

    out = tempfile.mkdtemp(prefix="bench-class-order-")
    try:
        t0 = time.perf_counter()
        net, summary, history = training.train_and_evaluate(
            examples_dir, config, OneProcess(out), callbacks=[TestAccuracy()]
        )
        seconds = time.perf_counter() - t0
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {
        "val_accuracy": [round(v, 4) for v in history["val_accuracy"]],
        "test_accuracy": per_epoch,
        "best_epoch": summary["best_epoch"],
        "exported_test_accuracy": round(_test_accuracy(net, test), 4),
        "seconds": round(seconds, 1),
    }


def run(
    quick: bool = False,
    per_class: int | None = None,
    epochs: int | None = None,
    seeds: list[int] | None = None,
) -> dict:
    logging.getLogger("pipeline_components").setLevel(logging.ERROR)
    per_class = per_class or (300 if quick else 1000)
    epochs = epochs or (3 if quick else 12)
    seeds = seeds or ([1] if quick else [1, 2, 3])
    new = make_examples(per_class)
    old = path_ordered_copy(new, new.rstrip("/") + "-path-ordered")
    runs: dict[str, dict[str, dict]] = {"old": {}, "new": {}}
    shares = {}
    for seed in seeds:
        for variant, examples_dir in (("old", old), ("new", new)):
            config = trainer_config(seed, epochs, per_class, variant == "old")
            if seed == seeds[0]:
                shares[variant] = first_epoch_shares(examples_dir, config, per_class)
            result = train_once(examples_dir, config)
            runs[variant][str(seed)] = result
            print(
                f"seed {seed} {variant}: val_accuracy {result['val_accuracy']}, exported epoch "
                f"{result['best_epoch']} test accuracy {result['exported_test_accuracy']:.4f} "
                f"({result['seconds']:.0f} s)",
                flush=True,
            )
    summary = {
        variant: {
            "mean_val_accuracy_per_epoch": [
                round(statistics.mean(r["val_accuracy"][e] for r in by_seed.values()), 4)
                for e in range(epochs)
            ],
            "mean_test_accuracy_per_epoch": [
                round(statistics.mean(r["test_accuracy"][e] for r in by_seed.values()), 4)
                for e in range(epochs)
            ],
            "mean_exported_test_accuracy": round(
                statistics.mean(r["exported_test_accuracy"] for r in by_seed.values()), 4
            ),
            "first_epoch_batch_shares": shares[variant],
        }
        for variant, by_seed in runs.items()
    }
    return {
        "benchmark": NAME,
        "per_class": per_class,
        "epochs": epochs,
        "seeds": seeds,
        "runs": runs,
        "summary": summary,
        "environment": common.environment(),
    }


def report(results: dict) -> str:
    lines = [
        f"# Class-sorted data: old vs new input order ({results['per_class']} train images per "
        f"class, seeds {results['seeds']})",
        "",
        "| variant | first-epoch share of stripes per batch (first, min, max) | val_accuracy per "
        "epoch (mean over seeds) | test accuracy of the exported epoch (mean; per seed) |",
        "|---|---|---|---|",
    ]
    for variant in ("old", "new"):
        s = results["summary"][variant]
        shares = s["first_epoch_batch_shares"]
        per_seed = ", ".join(
            f"{r['exported_test_accuracy']:.3f}" for r in results["runs"][variant].values()
        )
        lines.append(
            f"| {variant} | {shares[0]:.2f}, {min(shares):.2f}, {max(shares):.2f} | "
            f"{' '.join(f'{v:.3f}' for v in s['mean_val_accuracy_per_epoch'])} | "
            f"{s['mean_exported_test_accuracy']:.3f} ({per_seed}) |"
        )
    lines += ["", "Per seed (val_accuracy per epoch; test accuracy per epoch):", ""]
    for variant in ("old", "new"):
        for seed, r in results["runs"][variant].items():
            lines.append(
                f"- {variant}, seed {seed}: val {r['val_accuracy']}; test {r['test_accuracy']};"
                f" exported epoch {r['best_epoch']}"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.class_order", description=__doc__)
    p.add_argument("--quick", action="store_true", help="300 per class, 3 epochs, one seed")
    p.add_argument("--per-class", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--out", default=common.DEFAULT_RESULTS_DIR)
    args = p.parse_args(argv)
    results = run(args.quick, args.per_class, args.epochs, args.seeds)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{NAME}.json"), "w") as f:
        json.dump(results, f, indent=1)
    text = report(results)
    with open(os.path.join(args.out, f"{NAME}.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
