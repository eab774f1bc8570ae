"""Run the demo pipeline on tiny data with two checkouts of this repo and diff what a user sees:
run.json (minus times, ids, paths and code fingerprints) and report.html's text.

    python tests/demo_diff.py --before /work/main --after . [--work /tmp/demo-diff]

Each tree runs `python -m pipeline_components.cli run` with PYTHONPATH=<tree> on the same
generated data (32x32 shapes, a few images per class, one epoch per phase, the gate at 0 so that
every component runs: the InfraValidator, the Pusher and the BulkInferrer too). Prints the
differences (none: `run.json and report.html: no differences`) and exits 1 when there are any.
Not a pytest test (two pipeline runs take minutes); the lead runs it when merging a refactor.
"""

from __future__ import annotations

import argparse
import difflib
import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
from typing import Any

import yaml

# keys whose values are times, ids, speeds or code fingerprints: they differ on every run
VOLATILE = re.compile(
    r"(^|_)(started|finished|seconds|time|at|run_id|execution_id|images_per_sec|latency_ms|"
    r"load_seconds|duration_s|pid|host|attempts|code|code_version|code_fingerprint|files)$"
)
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})?")
RUN_ID = re.compile(r"\b\d{8}-\d{6}-[0-9a-f]{4}\b")
# sha256 digests: cache keys and every fingerprint that covers the SavedModel change from run to
# run on the same code (TensorFlow writes a SavedModel differently each time)
DIGEST = re.compile(r"\b[0-9a-f]{64}\b")
NUMBER_WITH_UNIT = re.compile(r"\b\d+(\.\d+)? ?(s|ms|images/s)\b")
CODE = re.compile(r"[0-9a-f]{12}")  # a code fingerprint's head in the lineage table
TIME_CELL = re.compile(r"\d+\.\d")  # the run table's seconds, the images/s cell


def config(out: str, data: str) -> dict:
    return {
        "pipeline_name": "shapes-demo",
        "pipeline_root": os.path.join(out, "pipeline_root"),
        "data_root": data,
        "serving_dir": os.path.join(out, "serving_models"),
        "model_name": "shapes",
        "example_gen": {"num_shards": 2, "beam_args": ["--runner=DirectRunner"]},
        "trainer": {
            "weights": "none",
            "image_size": [32, 32],
            "head": "global_average",
            "batch_size": 8,
            "epochs": 1,
            "steps_per_epoch": None,
            "optimizer": "adam",
            "fine_tune_from": "block5_conv1",
            "fine_tune_epochs": 1,
            "augmentation": None,
            "seed": 42,
        },
        "evaluator": {"min_accuracy": 0.0, "max_regression": 1.0},
        "infra_validator": {"num_examples": 4},
        "pusher": {"keep_versions": 3},
        "batch_predict": {"input": os.path.join(data, "test"), "num_shards": 1},
    }


def run(label: str, tree: str, work: str, data: str, reuse: bool) -> tuple[dict, str, str]:
    out = os.path.join(work, label)
    cfg = config(out, data)
    if not (reuse and os.path.isdir(os.path.join(cfg["pipeline_root"], "runs"))):
        shutil.rmtree(out, ignore_errors=True)  # a fresh pipeline_root: nothing cached
        os.makedirs(out)
        _run_pipeline(tree, out, cfg)
    runs = os.path.join(cfg["pipeline_root"], "runs")
    newest = sorted(os.listdir(runs))[-1]
    with open(os.path.join(runs, newest, "run.json")) as f:
        record = json.load(f)
    with open(record["report"]) as f:
        report = f.read()
    return record, report, out


def _run_pipeline(tree: str, out: str, cfg: dict) -> None:
    path = os.path.join(out, "pipeline.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), LOGLEVEL="WARNING")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline_components.cli", "run", "--config", path],
        cwd=out,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def normalize(value: Any, out: str, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: normalize(v, out, k) for k, v in sorted(value.items()) if not VOLATILE.search(k)}
    if isinstance(value, list):
        return [normalize(v, out, key) for v in value]
    if isinstance(value, str):
        value = value.replace(out, "<OUT>")
        value = DIGEST.sub("<SHA256>", TIMESTAMP.sub("<TIME>", value))
        return NUMBER_WITH_UNIT.sub("<N \\2>", RUN_ID.sub("<RUN>", value))
    return value


class _Text(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.skip = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.skip = tag in ("style", "script")
        if tag == "img":  # the figure, not its bytes (PNG encoders may embed times)
            self.parts.append(f"[img {dict(attrs).get('alt', '')}]")

    def handle_endtag(self, tag: str) -> None:
        self.skip = False

    def handle_data(self, data: str) -> None:
        if not self.skip and data.strip():
            self.parts.append(data.strip())


def report_text(report: str, out: str) -> list[str]:
    parser = _Text()
    parser.feed(report)
    lines = []
    for part in parser.parts:
        part = RUN_ID.sub("<RUN>", TIMESTAMP.sub("<TIME>", part.replace(out, "<OUT>")))
        part = NUMBER_WITH_UNIT.sub("<N \\2>", part)
        if TIME_CELL.fullmatch(part):
            part = "<N>"
        lines.append("<CODE>" if CODE.fullmatch(part) else part)
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", required=True, help="a checkout (the old code)")
    p.add_argument("--after", required=True, help="a checkout (the new code)")
    p.add_argument("--work", default="/tmp/demo-diff", help="where both runs write")
    p.add_argument(
        "--reuse-before", action="store_true", help="keep an earlier run of --before in --work"
    )
    args = p.parse_args(argv)
    data = os.path.join(args.work, "data")
    if not os.path.isdir(data):
        env = dict(os.environ, PYTHONPATH=os.path.abspath(args.before))
        gen = "from pipeline_components.tools import sample_data as s; import sys; "
        gen += "s.generate(sys.argv[1], ('circles', 'stripes'), (8, 4, 4), size=(32, 32))"
        subprocess.run([sys.executable, "-c", gen, data], env=env, check=True)
    (rec_a, rep_a, out_a), (rec_b, rep_b, out_b) = (
        run("before", args.before, args.work, data, args.reuse_before),
        run("after", args.after, args.work, data, False),
    )
    a = json.dumps(normalize(rec_a, out_a), indent=1, sort_keys=True).splitlines()
    b = json.dumps(normalize(rec_b, out_b), indent=1, sort_keys=True).splitlines()
    diff = list(difflib.unified_diff(a, b, "before/run.json", "after/run.json", lineterm=""))
    diff += difflib.unified_diff(
        report_text(rep_a, out_a),
        report_text(rep_b, out_b),
        "before/report.html",
        "after/report.html",
        lineterm="",
    )
    print("\n".join(diff) if diff else "run.json and report.html: no differences")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
