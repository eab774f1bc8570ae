"""The InfraValidator's executor: prove the candidate SavedModel loads and answers in a real
model server.

Starts the TF-Serving-compatible server (`transfer-pipeline serve`) in a separate process on a
free loopback port, waits for the model to be AVAILABLE, sends real test images through the
gRPC client, and checks the answers equal the Evaluator's predictions for the same images.
Writes `infra_blessing.json`; a model that fails to load or answer is not pushed.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from pipeline_components.core import artifacts, children, examples, fsutil
from pipeline_components.core.errors import PipelineError
from pipeline_components.infra_validator.config import InfraValidatorConfig

log = logging.getLogger(__name__)

INFRA_BLESSING_FILE = artifacts.INFRA_BLESSING_FILE


def first_test_examples(examples_dir: str, n: int) -> list[tuple[str, bytes]]:
    """(filename, encoded bytes) of the first n records of the test split."""
    import tensorflow as tf

    files = examples.split_files(examples_dir, "test")
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP").take(n).map(examples.parse)
    return [(r[examples.FILENAME].numpy().decode(), r[examples.ENCODED].numpy()) for r in ds]


def expected_probabilities(predictions_csv: str) -> dict[str, np.ndarray]:
    rows = csv.DictReader(io.StringIO(fsutil.read_text(predictions_csv)))
    columns = [c for c in rows.fieldnames or [] if c.startswith("p_")]
    return {r["filename"]: np.array([float(r[c]) for c in columns]) for r in rows}


def stage_candidate(model_dir: str, model_name: str, workdir: str) -> str:
    """A model base path holding the candidate as version 1 (a symlink locally, a copy from
    object stores), laid out as TF Serving expects."""
    base = os.path.join(workdir, "models", model_name)
    os.makedirs(base)
    if fsutil.is_remote(model_dir):
        fsutil.copy_tree(model_dir, os.path.join(base, "1"))
    else:
        os.symlink(os.path.abspath(model_dir), os.path.join(base, "1"))
    return base


@contextlib.contextmanager
def serve_in_subprocess(
    model_base_path: str, model_name: str, timeout: float, workdir: str
) -> Iterator[str]:
    """Run `transfer-pipeline serve` on a model base path in a subprocess on a free loopback
    port; yield 'host:port' once bound. The server is always stopped (SIGTERM to its process
    group) on exit, and dies with this process if it is killed (core/children.py)."""
    port_file = os.path.join(workdir, "port")
    log_path = os.path.join(workdir, "server.log")
    cmd = [sys.executable, "-m", "pipeline_components.cli", "serve"]
    cmd += ["--model-base-path", model_base_path, "--model-name", model_name]
    cmd += ["--host", "127.0.0.1", "--port", "0", "--port-file", port_file]
    cmd += ["--rest-api-port", "0"]  # gRPC only: the REST default (8501) may be taken
    with open(log_path, "wb") as server_log:  # it dies with this process (core/children.py)
        proc = subprocess.Popen(
            cmd, stdout=server_log, stderr=subprocess.STDOUT, **children.popen_options()
        )
    try:
        deadline = time.monotonic() + timeout
        while not os.path.exists(port_file):
            if proc.poll() is not None:
                raise PipelineError(
                    f"model server exited with code {proc.returncode} before serving: "
                    f"{_last_line(log_path)}"
                )
            if time.monotonic() > deadline:
                raise PipelineError(f"model server did not start within {timeout:g} s")
            time.sleep(0.1)
        with open(port_file) as f:
            yield f"127.0.0.1:{int(f.read().strip())}"
    finally:
        children.stop(proc, grace_s=30)


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
        return lines[-1] if lines else "(no output)"
    except OSError:
        return "(no output)"


def validate(
    model_dir: str,
    examples_dir: str,
    predictions_csv: str,
    model_name: str,
    config: InfraValidatorConfig,
    workdir_parent: str | None = None,
) -> dict:
    """Returns the infra blessing dict (blessed, reasons, timings); never raises for a model
    that fails to serve — that is a verdict, not an error. The server's files (port, log, the
    staged base path) go to a temporary folder in `workdir_parent` (default: the system's)."""
    from serving.client import PredictionClient, ServingError

    samples = first_test_examples(examples_dir, config.num_examples)
    expected = expected_probabilities(predictions_csv)
    missing = [name for name, _ in samples if name not in expected]
    if missing:
        raise PipelineError(f"{predictions_csv} has no prediction for {missing[0]}")
    result: dict[str, Any] = {
        "blessed": False,
        "reasons": [],
        "num_examples": len(samples),
        "model": model_dir,
    }
    started, timeout = time.monotonic(), config.timeout_seconds
    with tempfile.TemporaryDirectory(prefix="infra-", dir=workdir_parent) as workdir:
        try:
            base = stage_candidate(model_dir, model_name, workdir)
            server = serve_in_subprocess(base, model_name, timeout, workdir)
            with server as target, PredictionClient(target, model_name, timeout=timeout) as client:
                client.wait_until_available(timeout=timeout)
                result["load_seconds"] = round(time.monotonic() - started, 3)
                t0 = time.monotonic()
                raw = client.predict_raw({"images": [data for _, data in samples]})
                result["latency_ms"] = round(1000 * (time.monotonic() - t0), 1)
                got = np.asarray(raw.outputs["probabilities"])
        except (PipelineError, ServingError) as e:
            result["reasons"].append(f"model failed to serve: {e}")
            return result
    want = np.stack([expected[name] for name, _ in samples])
    if got.shape != want.shape:
        result["reasons"].append(
            f"served probabilities have shape {got.shape}, expected {want.shape}"
        )
        return result
    diff = float(np.abs(got - want).max())
    result["max_abs_diff"] = diff
    if diff > config.tolerance:
        worst = samples[int(np.abs(got - want).max(axis=1).argmax())][0]
        result["reasons"].append(
            f"served predictions differ from the Evaluator's by {diff:.2e} > {config.tolerance:g} "
            f"(worst: {worst})"
        )
        return result
    result["blessed"] = True
    result["reasons"].append(
        f"loaded in {result['load_seconds']:.1f} s and answered {len(samples)} test images over "
        f"gRPC matching the Evaluator (max |diff| {diff:.1e})"
    )
    return result


def run_infra_validator(
    model_dir: str,
    examples_dir: str,
    evaluation_dir: str,
    output_dir: str,
    config: InfraValidatorConfig | None = None,
    *,
    model_name: str,
) -> dict:
    """Validate in a real server; writes infra_blessing.json into output_dir atomically."""
    config = config or InfraValidatorConfig()
    predictions = fsutil.join(evaluation_dir, artifacts.PREDICTIONS_FILE)
    with fsutil.atomic_dir(output_dir) as tmp:
        # the server's working files inside the output's temporary folder (removed before it
        # is renamed into place): a killed run leaves them where `gc` finds them
        local = None if fsutil.is_remote(tmp) else tmp
        result = validate(model_dir, examples_dir, predictions, model_name, config, local)
        fsutil.write_json(fsutil.join(tmp, INFRA_BLESSING_FILE), result)
    log.info("InfraValidator: %s", "; ".join(result["reasons"]))
    return result
