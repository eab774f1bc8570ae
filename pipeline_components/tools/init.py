"""`transfer-pipeline init DATA_ROOT [--output pipeline.yaml] [--force]`: look at a folder of
images and write a commented pipeline.yaml for it.

It reads the folder as ExampleGen will (its listing, name rules, format sniffing and split rule:
example_gen/layout.py), and says what it found: the layout (`<split>/<class>/<image>`, or a
flat `<class>/<image>` folder whose splits follow from a hash of each path), the classes and
their counts per split, the head this implies (sigmoid for two classes, softmax for more), and
what will go wrong or deserves a look: one class, a split missing, tiny classes, mixed formats
(worse: formats that tell the classes apart), identical images in two splits (by content hash),
names ExampleGen will refuse or skip, files it will skip. Then the next command.

It reads each file's first bytes (the format) and hashes only files whose size appears in more
than one split (identical bytes have identical sizes), so a large folder costs one listing and
one small read per file.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import posixpath
import re
import sys
import textwrap
from collections import Counter, defaultdict

from pipeline_components.core import logs
from pipeline_components.core.artifacts import SPLITS
from pipeline_components.core.errors import PipelineError

DEFAULT_OUTPUT = "pipeline.yaml"
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_VALIDATION_FRACTION = 0.1
HEADER_BYTES = 32  # enough for image_check.sniff_format
# A class with fewer images than this in a split is "tiny": its accuracy is noise.
TINY = {"train": 10, "validation": 2, "test": 2}
FORMAT_GAP = 0.5  # a format's share differs by more than this between two classes: a shortcut
MODEL_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclasses.dataclass
class Found:
    """What init saw in a data root."""

    root: str
    given: str  # the root as the user wrote it (what messages show)
    flat: bool
    labels: list[str]
    counts: dict[str, Counter]  # class -> split -> images ExampleGen will keep (by format)
    formats: dict[str, Counter]  # class -> format -> images
    folders: list[str]  # split folders present (split layout)
    skipped: Counter  # reason -> files ExampleGen will skip (counted as bad)
    skipped_example: dict[str, str]  # reason -> one path
    seen: set[str] = dataclasses.field(default_factory=set)  # every class folder with a file
    problems: list[str] = dataclasses.field(default_factory=list)  # ExampleGen will refuse
    warnings: list[str] = dataclasses.field(default_factory=list)


def _open_header(root: str, relpath: str) -> bytes:
    """The first bytes of a file, read through Beam's FileSystems as ExampleGen reads it."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    path = FileSystems.join(root, *relpath.split("/"))
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            return bytes(f.read(HEADER_BYTES))
    except Exception as e:  # permission denied, vanished
        raise _Skip(f"unreadable: {' '.join(str(e).split())}") from None


class _Skip(Exception):
    pass


def _classify(root: str, relpath: str, folder_split: str) -> tuple[str | None, str | None, str]:
    """(class or None, format or None, skip reason or '') of one listed file, by ExampleGen's
    rules: hidden/system files and files outside class folders are ignored, a file whose name
    cannot be written is skipped, the format comes from the bytes."""
    from pipeline_components.example_gen import image_check, layout

    parts = layout.below_split(relpath, folder_split)
    reason = image_check.name_skip_reason(parts)
    if reason:
        return None, None, reason
    problem = image_check.name_problem(relpath)
    if problem:
        return parts[0], None, f"file name {problem}"
    try:
        fmt = image_check.sniff_format(_open_header(root, relpath))
    except _Skip as e:
        return parts[0], None, str(e)
    if fmt is None:
        ext = posixpath.splitext(relpath)[1].lower()
        if ext in image_check.DOCUMENT_EXTENSIONS:  # a stray document: ignored, not bad
            return None, None, f"not an image ({ext} file)"
        return parts[0], None, "not an image"
    if fmt not in image_check.KEPT_FORMATS:
        return parts[0], None, f"unsupported format {fmt}"
    return parts[0], fmt, ""


def list_files(root: str, flat: bool) -> list[tuple[str, str, int]]:
    """(relpath, folder split, size) of every file ExampleGen would list."""
    from pipeline_components.example_gen import layout

    folders = [""] if flat else list(SPLITS)
    return [(f.relpath, split, f.size) for split in folders for f in layout.list_split(root, split)]


def scan(data_root: str, test_fraction: float, validation_fraction: float) -> Found:
    """Read a data root as ExampleGen will; a root with no split folder is flat."""
    from pipeline_components.core import beam as core_beam
    from pipeline_components.example_gen import layout

    root = layout._normalized_root(data_root)
    if "://" not in root and not os.path.isdir(root):
        raise PipelineError(f"data root {root} does not exist or is not a folder")
    core_beam.set_filesystem_options(None)
    files = list_files(root, flat=False)
    flat = not files
    if flat:
        files = list_files(root, flat=True)
    if not files:
        raise PipelineError(f"data root {root} holds no files")
    found = Found(
        root, data_root, flat, [], defaultdict(Counter), defaultdict(Counter), [], Counter(), {}
    )
    found.folders = sorted({s for _, s, _ in files if s}, key=SPLITS.index)
    carve = None if "validation" in found.folders else validation_fraction
    sizes: dict[int, list[tuple[str, str]]] = defaultdict(list)  # size -> [(split, relpath)]
    for relpath, folder, size in files:
        cls, fmt, reason = _classify(root, relpath, folder)
        if cls is None:
            continue  # hidden, system, a document, outside a class folder: ignored, not bad
        found.seen.add(cls)
        if reason:
            found.skipped[reason] += 1
            found.skipped_example.setdefault(reason, relpath)
            continue
        src = layout.SourceFile(relpath, folder, folder or "train", 0)
        split = layout.assign_split(src, carve, test_fraction if flat else None).split
        found.counts[cls][split] += 1
        found.formats[cls][str(fmt)] += 1
        sizes[size].append((split, relpath))
    found.labels = sorted(found.seen)
    check_names(found)
    check_layout(found, carve, test_fraction)
    check_formats(found)
    check_duplicates(found, sizes)
    return found


def check_names(found: Found) -> None:
    """Class folders ExampleGen refuses, file names it skips."""
    from pipeline_components.example_gen.image_check import name_problem, shown

    for name in found.labels:
        problem = name_problem(name)
        if problem:
            found.problems.append(f"class folder '{shown(name)}': the name {problem}; rename it")
    named = [r for r in found.skipped if r.startswith("file name")]
    for reason in named:
        found.warnings.append(
            f"{found.skipped[reason]} file(s) whose {reason} will be skipped "
            f"(e.g. {found.skipped_example[reason]!a})"
        )


def check_layout(found: Found, carve: float | None, test_fraction: float) -> None:
    """One class, a split missing, classes missing from a split, tiny classes."""
    if len(found.labels) < 2:
        found.problems.append(
            f"{len(found.labels)} class ({_names(found.labels) or 'none'}): a classifier "
            "needs at least 2 class folders"
        )
    if not found.flat:
        ignored = sorted(
            name
            for name in (os.listdir(found.root) if "://" not in found.root else [])
            if name not in SPLITS and not name.startswith(".")
            and os.path.isdir(os.path.join(found.root, name))
        )  # fmt: skip
        if ignored:
            found.warnings.append(
                f"folders beside the split folders are ignored: {_names(ignored)} (split "
                f"folders are {', '.join(SPLITS)})"
            )
        for split in ("train", "test"):
            if split not in found.folders:
                found.problems.append(f"the {split}/ split folder is missing (or holds no images)")
        if carve:
            found.warnings.append(
                f"no validation/ folder: {carve:g} of train is carved into validation by a "
                "stable hash of each path (example_gen.validation_fraction)"
            )
        for split in found.folders:
            missing = [c for c in found.labels if not found.counts[c][split]]
            if missing and split != "train":
                found.problems.append(
                    f"{split}/ has no images of {_names(missing)} (every class needs some "
                    "in every split folder)"
                )
    tiny = []
    for name in found.labels:
        short = [s for s in SPLITS if found.counts[name][s] < TINY[s]]
        if short:
            have = " / ".join(f"{found.counts[name][s]} {s}" for s in SPLITS)
            tiny.append(f"{_names([name])} ({have})")
    if tiny:
        floor = " / ".join(f"{TINY[s]} {s}" for s in SPLITS)
        found.warnings.append(
            f"tiny classes, under {floor} images: {'; '.join(tiny)}: their accuracy is noise; "
            "add images"
            + (" or raise example_gen.test_fraction / validation_fraction" if found.flat else "")
        )


def check_formats(found: Found) -> None:
    """Mixed formats, and formats that tell the classes apart (a shortcut the model can learn:
    clients send whatever format they have). Files ExampleGen will skip."""
    total: Counter = Counter()
    for counter in found.formats.values():
        total.update(counter)
    if len(total) > 1:
        shares = {
            c: {f: n / max(sum(cnt.values()), 1) for f, n in cnt.items()}
            for c, cnt in found.formats.items()
        }
        gap = max(
            abs(shares[a].get(f, 0) - shares[b].get(f, 0))
            for f in total
            for a in shares
            for b in shares
        )
        text = ", ".join(f"{f} {n}" for f, n in sorted(total.items(), key=_by_count))
        if gap > FORMAT_GAP:
            per_class = "; ".join(
                f"{_names([c])}: " + ", ".join(f"{f} {s:.0%}" for f, s in sorted(shares[c].items()))
                for c in found.labels
            )
            text += f"; the format tells the classes apart ({per_class}): a model can learn it "
            text += "instead of the pictures, and clients send any format; convert them alike"
        found.warnings.append(f"mixed formats: {text}")
    bad = {r: n for r, n in found.skipped.items() if not r.startswith("file name")}
    if bad:
        listed = ", ".join(
            f"{r} ({n}, e.g. {found.skipped_example[r]!a})"
            for r, n in sorted(bad.items(), key=_by_count)
        )
        found.warnings.append(
            f"{sum(bad.values())} file(s) ExampleGen will skip: {listed}; more than "
            "example_gen.max_bad_fraction (0.01) of a split fails the run"
        )


def _names(names: list[str]) -> str:
    """Class names for a message: what cannot be shown as it is, escaped (image_check.shown)."""
    from pipeline_components.example_gen.image_check import shown

    return ", ".join(shown(n) for n in names)


def _by_count(item: tuple[str, int]) -> tuple[int, str]:
    return -item[1], item[0]


def check_duplicates(found: Found, sizes: dict[int, list[tuple[str, str]]]) -> None:
    """Identical images (same sha256) in two splits: train/test leakage. Only files whose size
    occurs in two splits are read."""
    from apache_beam.io.filesystems import FileSystems

    from pipeline_components.example_gen import convert, image_check

    by_hash: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for group in sizes.values():
        if len({split for split, _ in group}) < 2:
            continue
        for split, relpath in group:
            path = FileSystems.join(found.root, *relpath.split("/"))
            by_hash[image_check.sha256_hex(convert.read_file(path))].append((split, relpath))
    leaked = [g for g in by_hash.values() if len({s for s, _ in g}) > 1]
    if leaked:
        first = " = ".join(sorted(r for _, r in leaked[0]))
        found.warnings.append(
            f"{len(leaked)} image(s) are in more than one split, byte for byte (e.g. {first!a}): "
            "test accuracy would count images the model trained on; ExampleGen drops the "
            "train/validation copies (example_gen.on_duplicates: drop)"
        )


# ---------------------------------------------------------------------------- the report


def head_line(labels: list[str]) -> str:
    n = len(labels)
    if n == 2:
        return "2 classes: a sigmoid head (one output unit, binary cross-entropy)"
    return f"{n} classes: a softmax head ({n} outputs, sparse categorical cross-entropy)"


def count_table(found: Found) -> list[str]:
    from pipeline_components.example_gen.image_check import shown

    rows = [["class", *SPLITS]]
    rows += [[shown(c), *(str(found.counts[c][s]) for s in SPLITS)] for c in found.labels]
    rows.append(["total", *(str(sum(found.counts[c][s] for c in found.labels)) for s in SPLITS)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            v.ljust(w) if i == 0 else v.rjust(w)
            for i, (v, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]


def layout_line(found: Found, test_fraction: float, validation_fraction: float) -> str:
    root = found.given.rstrip("/")
    if found.flat:
        return (
            f"{root}/<class>/<image> (no split folders): splits by a stable hash of each "
            f"path, test {test_fraction:g}, validation {validation_fraction:g}, the rest train"
        )
    return f"{root}/<split>/<class>/<image>, split folders: {', '.join(found.folders)}"


def model_name(root: str) -> str:
    name = MODEL_NAME.sub("_", posixpath.basename(root.rstrip("/"))).strip("_.-")
    return name[:128] if name else "model"


def config_text(found: Found, args: argparse.Namespace) -> str:
    """The commented pipeline.yaml."""
    from pipeline_components.core.data_schema import quote

    name = model_name(found.root)
    lines = [
        f"# pipeline.yaml for {found.given}, written by `transfer-pipeline init` "
        f"({dt.date.today().isoformat()}).",
        "# Every key, its default and range: docs/configuration.md (a key left out keeps its "
        "default).",
        "#",
        f"# Data: {layout_line(found, args.test_fraction, args.validation_fraction)}",
        *(f"#   {row}" for row in count_table(found)),
        f"# {head_line(found.labels)}.",
    ]
    notes = [f"will fail: {p}" for p in found.problems] + found.warnings
    if notes:
        lines += ["# Look at:"]
        lines += [wrap(n, "#   - ", "#     ") for n in notes]
    lines += [
        f"pipeline_name: {quote(name)}",
        "pipeline_root: ./pipeline_root   # runs, their records and reports",
        f"data_root: {quote(args.data_root)}",
        "serving_dir: ./serving_models    # the Pusher writes <serving_dir>/<model_name>/<n>/",
        f"model_name: {quote(name)}",
    ]
    if found.flat:
        lines += [
            "example_gen:",
            f"  test_fraction: {args.test_fraction:g}         # a flat folder: this share is test",
            f"  validation_fraction: {args.validation_fraction:g}   # and this share validation",
        ]
    elif "validation" not in found.folders:
        lines += [
            "example_gen:",
            f"  validation_fraction: {args.validation_fraction:g}   # of train, carved into "
            "validation",
        ]
    lines += TRAINER_LINES
    return "\n".join(lines) + "\n"


TRAINER_LINES = [
    "trainer:",
    "  backbone: vgg19",
    "  weights: imagenet         # downloaded once; none: random weights, offline (learns little)",
    "  image_size: [224, 224]",
    "  head: flatten             # or global_average (fewer parameters)",
    "  epochs: 30",
    "  steps_per_epoch: null     # one pass over train per epoch",
    "  batch_size: 32",
    "  early_stopping_patience: 5   # stop after 5 epochs without a better val_accuracy",
    "  augmentation: null        # off: the frozen backbone runs once (cached features): fast",
    "                            # on CPU; {rotation_range: 20, horizontal_flip: true} augments",
    "evaluator:",
    "  min_accuracy: 0.9         # the gate: a model under this test accuracy is not pushed",
]


def report(found: Found, args: argparse.Namespace) -> str:
    lines = [
        wrap(layout_line(found, args.test_fraction, args.validation_fraction), "data: "),
        *count_table(found),
        head_line(found.labels),
    ]
    lines += [wrap(f"{p} (ExampleGen will refuse this)", "problem: ") for p in found.problems]
    lines += [wrap(w, "warning: ") for w in found.warnings]
    return "\n".join(lines)


def wrap(text: str, first: str, rest: str = "  ") -> str:
    """One note, wrapped at 99 columns (long paths stay whole)."""
    return textwrap.fill(
        text,
        99,
        initial_indent=first,
        subsequent_indent=rest,
        break_long_words=False,
        break_on_hyphens=False,
    )


# ---------------------------------------------------------------------------- the command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="transfer-pipeline init",
        description="Look at a folder of images (DATA_ROOT/<split>/<class>/<image>, or a flat "
        "DATA_ROOT/<class>/<image>) and write a commented pipeline.yaml for it: classes, counts, "
        "the head, warnings, and the next command.",
    )
    p.add_argument("data_root", metavar="DATA_ROOT", help="the image folder (local, gs://, s3://)")
    p.add_argument("--output", default=DEFAULT_OUTPUT, metavar="FILE", help="pipeline.yaml")
    p.add_argument("--force", action="store_true", help="replace FILE when it exists")
    p.add_argument(
        "--test-fraction",
        type=float,
        default=DEFAULT_TEST_FRACTION,
        help="a flat folder: the share of images that is test (default: %(default)s)",
    )
    p.add_argument(
        "--validation-fraction",
        type=float,
        default=DEFAULT_VALIDATION_FRACTION,
        help="the share carved into validation when there is no validation/ folder "
        "(default: %(default)s)",
    )
    logs.add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from pipeline_components.core import config as config_lib
    from pipeline_components.core import fsutil, registry

    p = build_parser()
    args = p.parse_args(argv)
    if not 0 < args.test_fraction < 1 or not 0 < args.validation_fraction < 1:
        p.error("--test-fraction and --validation-fraction must be in (0, 1)")
    if args.test_fraction + args.validation_fraction >= 1:
        p.error("--test-fraction + --validation-fraction must be < 1: train needs a share")
    if os.path.lexists(args.output) and not args.force:
        raise PipelineError(f"{args.output} exists; pass --force to replace it")
    found = scan(args.data_root, args.test_fraction, args.validation_fraction)
    text = config_text(found, args)
    registry.config_from_dict(config_lib.safe_load(text), source=args.output)  # it loads
    print(report(found, args))
    fsutil.write_atomic(args.output, text)
    print(f"wrote {args.output}")
    next_command = f"transfer-pipeline run --config {args.output}"
    if found.problems:
        print(f"next: fix the problems above, then {next_command}")
    else:
        print(f"next: {next_command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
