"""ExampleGen's config section (`example_gen:` in pipeline.yaml)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

from pipeline_components.core.config import option

RESIZE_REMOVED = (
    "stored images are the original files, so the Evaluator and the InfraValidator score the "
    "pixels clients send (a downscaled re-encode was a train/serve skew no gate could see); "
    "delete the key (trainer.image_size sets the training size)"
)


@dataclasses.dataclass
class ExampleGenConfig:
    num_shards: int = option(4, ge=1, doc="TFRecord files per split")
    max_bad_fraction: float = option(
        0.01, ge=0, le=1, doc="fail when more than this share of a split's files are unusable"
    )
    validation_fraction: float = option(
        0.1,
        gt=0,
        lt=1,
        doc="carved from train by a stable hash of the path when validation/ is absent (a flat "
        "folder: this share of all files)",
    )
    test_fraction: float | None = option(
        None,
        gt=0,
        lt=1,
        doc="read data_root as a flat <class>/<image> folder: this share of the files is test, "
        "validation_fraction validation, the rest train, by a stable hash of each path; null: "
        "split folders",
    )
    beam_args: list[str] | None = option(
        None, key=False, doc="its Beam jobs' options, replacing beam.args (null: beam.args)"
    )
    max_image_pixels: int = option(
        40_000_000, ge=1, le=2**40, doc="skip larger images (decompression bombs)"
    )
    on_duplicates: str = option(
        "drop",
        choices=("drop", "warn", "fail"),
        doc="an image in two splits (train/test leakage): drop the train/validation copy "
        "(listed in stats.json), only warn, or fail",
    )
    multi_processing_min_files: int = option(
        10_000,
        ge=0,
        le=10**9,
        key=False,
        doc="with DirectRunner and no --direct_running_mode/--direct_num_workers in its Beam "
        "options: multi_threading on every core below this many files (and on 2 cores), "
        "multi_processing from it on",
    )
    exif_transpose: bool = option(
        True,
        doc="turn a JPEG as its EXIF orientation says (a phone photo taken upright) wherever it "
        "is decoded: in training and in the exported model's serving_default alike; the stored "
        "bytes stay the file's own",
    )
    metadata_max_bytes: int = option(
        64 << 20, ge=1, le=2**34, doc="refuse a metadata.csv beside the images over this size"
    )
    metadata_max_columns: int = option(
        32, ge=1, le=1024, doc="refuse a metadata.csv with more columns besides path"
    )
    metadata_max_cell_chars: int = option(
        256, ge=1, le=65_536, doc="refuse a metadata.csv with a longer cell or column name"
    )
    removed_options: ClassVar[dict[str, str]] = {"resize_max_side": RESIZE_REMOVED}

    def validate(self, fail: Callable[[str, str, object], None]) -> None:
        if self.test_fraction is not None and self.test_fraction + self.validation_fraction >= 1:
            fail(
                "test_fraction",
                f"< 1 - validation_fraction ({1 - self.validation_fraction:g}): train needs a "
                "share",
                self.test_fraction,
            )
