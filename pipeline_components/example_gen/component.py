"""ExampleGen's spec: image folders under `data_root` -> Examples (executor.py runs the Beam job).

transfer-pipeline example-gen --data-root D --output O [--num-shards 4]
    [--max-bad-fraction 0.01] [--validation-fraction 0.1] [--on-duplicates drop]
    [--no-exif-transpose] [-- BEAM_ARGS]
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from typing import Any, ClassVar

from pipeline_components.core import artifacts
from pipeline_components.core.component import Component, ExecutionContext
from pipeline_components.core.config import PipelineConfig, option, section_from_dict
from pipeline_components.core.errors import PipelineError
from pipeline_components.core.reporting import e

RESIZE_REMOVED = (
    "stored images are the original files, so the Evaluator and the InfraValidator score the "
    "pixels clients send (a downscaled re-encode was a train/serve skew no gate could see); "
    "delete the key (trainer.image_size sets the training size)"
)


@dataclasses.dataclass
class ExampleGenConfig:
    num_shards: int = option(4, ge=1, doc="TFRecord files per split")
    max_bad_fraction: float = option(0.01, ge=0, le=1, doc="unusable images a split may hold")
    validation_fraction: float = option(
        0.1, gt=0, lt=1, doc="carved from train by a stable hash when validation/ is absent"
    )
    beam_args: list[str] = option(factory=lambda: ["--runner=DirectRunner"], key=False)
    max_image_pixels: int = option(
        40_000_000, ge=1, le=2**40, doc="skip larger images (decompression bombs)"
    )
    on_duplicates: str = option(
        "drop",
        choices=("drop", "warn", "fail"),
        doc="an image in two splits: drop the train/validation copy, only warn, or fail",
    )
    multi_processing_min_files: int = option(
        10_000,
        ge=0,
        le=10**9,
        key=False,
        doc="with DirectRunner and no --direct_running_mode/--direct_num_workers in beam_args: "
        "multi_threading on every core below this many files (and on 2 cores), "
        "multi_processing from it on",
    )
    exif_transpose: bool = option(
        True,
        doc="turn a JPEG as its EXIF orientation says (a phone photo taken upright) wherever it "
        "is decoded: in training and in the exported model's serving_default alike; the stored "
        "bytes stay the file's own",
    )
    removed_options: ClassVar[dict[str, str]] = {"resize_max_side": RESIZE_REMOVED}


class ExampleGen(Component):
    name = "ExampleGen"
    description = "image folders -> TFRecords (Apache Beam)"
    command = "example-gen"
    config_section = "example_gen"
    config_class = ExampleGenConfig
    outputs = {"examples": artifacts.EXAMPLES}

    def external_inputs(self, ctx: ExecutionContext) -> dict[str, Any]:
        from pipeline_components.example_gen import executor

        data_root = ctx.pipeline.data_root
        beam_args = ctx.config.beam_args if ctx.config is not None else None
        fingerprint = executor.data_fingerprint(data_root, beam_args)
        return {"data_root": data_root, "data": fingerprint}

    def run(self, ctx: ExecutionContext) -> dict:
        from pipeline_components.example_gen import executor

        cfg: ExampleGenConfig = ctx.config
        stats = executor.run_example_gen(
            ctx.pipeline.data_root,
            ctx.output_dir,
            num_shards=cfg.num_shards,
            max_bad_fraction=cfg.max_bad_fraction,
            validation_fraction=cfg.validation_fraction,
            beam_args=cfg.beam_args or None,
            max_image_pixels=cfg.max_image_pixels,
            on_duplicates=cfg.on_duplicates,
            multi_processing_min_files=cfg.multi_processing_min_files,
            exif_transpose=cfg.exif_transpose,
        )
        return {
            "fingerprint": stats["fingerprint"],
            "labels": stats["labels"],
            "splits": {s: v["num_examples"] for s, v in stats["splits"].items()},
            "skipped": len(stats.get("skipped", [])),
            "duplicates": len(stats.get("duplicates", [])),
            "dropped_duplicates": len(stats.get("dropped_duplicates", [])),
            "exif_transpose": stats["exif_transpose"],
        }

    def summary(self, entry: dict) -> str:
        r = entry.get("result") or {}
        splits = " ".join(f"{s}={n}" for s, n in r.get("splits", {}).items())
        return f"{splits} classes={len(r.get('labels', []))} skipped={r.get('skipped', 0)}"

    def report_html(self, entry: dict, record: dict) -> str:
        r = entry.get("result") or {}
        if not r:
            return ""
        splits = "".join(
            f"<tr><td>{e(s)}</td><td class=num>{e(n)}</td></tr>" for s, n in r["splits"].items()
        )
        warn = ""
        if r.get("dropped_duplicates"):
            warn = (
                f"<p><b>Note:</b> {e(r['dropped_duplicates'])} train/validation cop(ies) of "
                f"{e(r['duplicates'])} image(s) also in a more held-out split were dropped "
                "(train/test leakage); see stats.json dropped_duplicates.</p>"
            )
        elif r.get("duplicates"):
            warn = (
                f"<p><b>Warning:</b> {e(r['duplicates'])} identical image(s) appear in more "
                "than one split (train/test leakage); see stats.json.</p>"
            )
        return (
            f"<h2>Data</h2><p>classes: {e(', '.join(r.get('labels', [])))}; "
            f"skipped files: {e(r.get('skipped', 0))}</p>"
            f"<table><tr><th>split</th><th>examples</th></tr>{splits}</table>{warn}"
        )

    def main(self, argv: list[str]) -> int:
        args, beam_args = parse_args(argv)
        config = section_from_dict(
            ExampleGenConfig,
            {
                "num_shards": args.num_shards,
                "max_bad_fraction": args.max_bad_fraction,
                "validation_fraction": args.validation_fraction,
                "beam_args": beam_args,
                "max_image_pixels": args.max_image_pixels,
                "on_duplicates": args.on_duplicates,
                "multi_processing_min_files": args.multi_processing_min_files,
                "exif_transpose": args.exif_transpose,
            },
            self.config_section or "",
            source="command line",
        )
        pipeline = PipelineConfig(data_root=args.data_root, sections={"example_gen": config})
        self.run_standalone(ExecutionContext(pipeline, config, {}, args.output))
        return 0


def _reject_own_flag_typo(arg: str, own_flags: list[str]) -> None:
    """Beam options are snake_case; a kebab-case or near-miss flag is a typo of one of ours."""
    name = arg.split("=")[0]
    if not name.startswith("--"):
        return
    if name == "--resize-max-side":
        raise PipelineError(f"--resize-max-side was removed: {RESIZE_REMOVED}")
    close = difflib.get_close_matches(name, own_flags, n=1, cutoff=0.75)
    if close or "-" in name[2:]:
        hint = f"did you mean {close[0]}? " if close else ""
        raise PipelineError(f"unknown option {name} ({hint}Beam options go after --)")


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Own flags before `--`, Beam's after it (unknown snake_case flags before it go to Beam too,
    as in Beam's wordcount)."""
    argv = list(argv)
    beam_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    defaults = ExampleGenConfig()
    p = argparse.ArgumentParser(
        prog="transfer-pipeline example-gen",
        description="Image folders <data-root>/<split>/<class>/<image> -> TFRecord shards.",
        epilog="Beam options go after --, e.g. -- --direct_running_mode=multi_processing "
        "--direct_num_workers=2",
    )
    p.add_argument(
        "--data-root", required=True, help="root with train/, test/, optional validation/"
    )
    p.add_argument("--output", required=True, help="output directory (replaced atomically)")
    p.add_argument(
        "--num-shards", type=int, default=defaults.num_shards, help="TFRecord files per split"
    )
    p.add_argument(
        "--max-bad-fraction",
        type=float,
        default=defaults.max_bad_fraction,
        help="fail when more than this share of a split's files are not usable images",
    )
    p.add_argument(
        "--validation-fraction",
        type=float,
        default=defaults.validation_fraction,
        help="share of train carved into validation when there is no validation/ folder",
    )
    p.add_argument(
        "--max-image-pixels",
        type=int,
        default=defaults.max_image_pixels,
        help="skip images whose header claims more pixels than this (decompression bombs)",
    )
    p.add_argument(
        "--on-duplicates",
        choices=("drop", "warn", "fail"),
        default=defaults.on_duplicates,
        help="an identical image in two splits (train/test leakage): drop the train/validation "
        "copy (default; listed in stats.json), only warn, or fail",
    )
    p.add_argument(
        "--multi-processing-min-files",
        type=int,
        default=defaults.multi_processing_min_files,
        help="without DirectRunner options after --: multi_threading on every core below this "
        "many files, multi_processing from it on (the choice is logged)",
    )
    p.add_argument(
        "--exif-transpose",
        action=argparse.BooleanOptionalAction,
        default=defaults.exif_transpose,
        help="apply a JPEG's EXIF orientation where images are decoded (training, serving); "
        "recorded in stats.json",
    )
    args, unknown = p.parse_known_args(own)
    for arg in unknown:
        _reject_own_flag_typo(arg, [o for a in p._actions for o in a.option_strings])
    return args, unknown + beam_args


COMPONENT = ExampleGen()
