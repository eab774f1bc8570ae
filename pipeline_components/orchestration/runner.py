"""`transfer-pipeline run --config pipeline.yaml`: every registered component in pipeline order
(ExampleGen -> Trainer -> Evaluator -> InfraValidator -> Pusher, plus any added through
core/registry.py), cached like TFX, with a lineage record and a report per run.

Layout under `pipeline_root` (core/artifacts.py):

    <Component>/<n>/          the execution's output artifact (n = 1, 2, ...)
    <Component>/<n>.json      the execution record: cache key, status, run id, inputs, result
    runs/<run_id>/run.json    the run's lineage record; report.html; error.log on failure

A component whose cache key (its config section, its input artifacts' fingerprints, its external
inputs, its code fingerprint: core/codeprint.py) matches a completed execution reuses that
output instead of running (`--force` disables this). A resumable component's execution with the
same key that did not complete (killed, preempted) is resumed in place, never under `--force`
and never while the process that started it is alive. `--resume RUN_ID` continues a failed
run's record from its first incomplete component. A component that is not cacheable (the
Pusher) always runs. One run at a time: the run holds `<pipeline_root>/lock.json`
(core/locking.py) and a second one fails naming the holder.

A run first removes what dead runs left (orchestration/gc.py: temporaries, records left
running, an interrupted push), reported in run.json `cleanup`.

Exit codes: 0 run completed (model pushed, or rightly not pushed); 1 a component or the config
failed (one line on stderr, details in run.json and error.log); 2 bad command line.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import signal
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from pipeline_components import __version__
from pipeline_components.core import artifacts, commandline, fsutil, locking, logs, registry
from pipeline_components.core import config as config_lib
from pipeline_components.core.artifacts import Artifact
from pipeline_components.core.component import Component, ExecutionContext, output_uri
from pipeline_components.core.config import PipelineConfig
from pipeline_components.core.errors import PipelineError
from pipeline_components.orchestration import monitoring, report
from pipeline_components.orchestration.executions import (
    execution_ids,
    find_execution,
    now,
    owner,
    record_path,
)
from pipeline_components.orchestration.summary import has_result, summary_table

log = logging.getLogger(__name__)


def new_run_id() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@dataclasses.dataclass
class Step:
    """One component in one run: what it reads (for the key) and how it runs."""

    name: str
    key_inputs: dict
    execute: Callable[[str], dict]  # output_dir -> result
    cacheable: bool = True
    resumable: bool = False
    code: str = __version__  # the component's code fingerprint (core/codeprint.py)
    position: tuple[int, int] = (1, 1)  # (index from 1, number of components): `[7/11]`


def progress(position: tuple[int, int], name: str, what: str, status: str, **fields: Any) -> None:
    """`[7/11] Trainer started`, `... finished in 42.1s`, `... cached`, `... skipped: why`: one
    progress event (core/logs.py) per change of a component's state."""
    index, total = position
    logs.progress(
        log,
        f"[{index}/{total}] {name} {what}",
        event="component",
        component=name,
        index=index,
        total=total,
        status=status,
        **fields,
    )


def ended(step: Step, entry: dict) -> None:
    """`[7/11] Trainer finished in 42.1s` or `... failed after 3.2s: why`."""
    seconds = entry["duration_s"]
    if entry["status"] == "completed":
        what = f"finished in {seconds:.1f}s"
    else:
        what = f"failed after {seconds:.1f}s: {entry.get('error') or 'interrupted'}"
    progress(step.position, step.name, what, entry["status"], duration_s=seconds)


class Run:
    def __init__(
        self,
        cfg: PipelineConfig,
        force: bool,
        resume: str | None,
        config_path: str,
        run_id: str | None = None,
        lock: locking.PipelineLock | None = None,
    ):
        self.cfg, self.force, self.lock = cfg, force, lock
        self.root = cfg.pipeline_root
        self.run_id = resume or run_id or new_run_id()
        self.run_dir = artifacts.run_dir(self.root, self.run_id)
        self.record_path = fsutil.join(self.run_dir, artifacts.RUN_RECORD)
        if resume:
            if not fsutil.exists(self.record_path):
                raise PipelineError(f"no run {resume} to resume ({self.record_path} not found)")
            self.record = fsutil.read_json(self.record_path, "run record")
            self.record.update(status="running", resumed=now(), error=None)
        else:
            self.record = {
                "run_id": self.run_id,
                "pipeline_name": cfg.pipeline_name,
                "status": "running",
                "started": now(),
                "code_version": __version__,
                "code": {},
                "config_path": config_path,
                "config": config_lib.to_dict(cfg),
                "components": {},
            }
        if lock is not None:
            self.record["lock"] = lock.holder()
            if lock.took_over:
                self.record["lock"]["took_over_from"] = lock.took_over
        fsutil.makedirs(self.run_dir)
        self.save()

    def save(self) -> None:
        fsutil.write_json(self.record_path, self.record)

    def component(self, step: Step) -> dict:
        """Run or reuse one component; returns its entry in run.json."""
        if self.lock is not None:
            self.lock.check()  # a holder that hung past its lease must not write on
        component_dir = artifacts.component_dir(self.root, step.name)
        key = digest({"component": step.name, "code": step.code, **step.key_inputs})
        self.record.setdefault("code", {})[step.name] = step.code
        previous = self.record["components"].get(step.name)
        if (
            previous
            and previous.get("status") in ("completed", "cached")
            and (previous.get("cache_key") == key)
        ):
            progress(step.position, step.name, "reused from this run's earlier attempt", "cached")
            return previous
        hit = self._cached(step, component_dir, key)
        if hit is not None:
            return hit
        resumable = None
        if step.resumable and not self.force:
            resumable = find_execution(component_dir, key, ("running", "failed"))
        if resumable:
            execution_id = resumable["execution_id"]
            log.info("%s: resuming incomplete execution %s", step.name, execution_id)
        else:
            execution_id = self._claim_execution_id(component_dir)
        entry = {
            "component": step.name,
            "execution_id": execution_id,
            "cache_key": key,
            "code_fingerprint": step.code,
            "status": "running",
            "cached": False,
            "run_id": self.run_id,
            "inputs": step.key_inputs,
            "output_dir": artifacts.execution_dir(self.root, step.name, execution_id),
            "started": now(),
            "owner": owner(),
        }
        self._write_execution(component_dir, entry)
        progress(step.position, step.name, "started", "running", execution_id=execution_id)
        t0 = time.monotonic()
        try:
            entry["result"] = step.execute(entry["output_dir"])
            entry["status"] = "completed"
        except BaseException as e:
            entry["status"] = "failed"
            entry["error"] = _one_line(e)
            found = getattr(e, "result", None)  # PipelineError(result=): what it found
            if found is not None:
                entry["result"] = found
            raise
        finally:
            entry["finished"] = now()
            entry["duration_s"] = round(time.monotonic() - t0, 2)
            self._write_execution(component_dir, entry)
            ended(step, entry)
        return entry

    def _cached(self, step: Step, component_dir: str, key: str) -> dict | None:
        """The entry of a completed execution with this key, reused (None: run it)."""
        if not step.cacheable or self.force:
            return None
        hit = find_execution(component_dir, key, ("completed",))
        if not hit:
            return None
        entry = {**hit, "status": "cached", "cached": True, "duration_s": 0.0}
        entry["cached_from_run"] = hit.get("run_id")
        self.record["components"][step.name] = entry
        self.save()
        what = f"cached (execution {hit['execution_id']} of run {hit.get('run_id')})"
        progress(step.position, step.name, what, "cached", execution_id=hit["execution_id"])
        return entry

    def _claim_execution_id(self, component_dir: str) -> int:
        """The next free execution id, claimed by creating its record exclusively (two
        claimers never get the same id, even without the pipeline_root lock)."""
        fsutil.makedirs(component_dir)
        execution_id = max(execution_ids(component_dir), default=0) + 1
        while not locking.create_exclusive(record_path(component_dir, execution_id), "{}\n"):
            execution_id += 1
        return execution_id

    def _write_execution(self, component_dir: str, entry: dict) -> None:
        fsutil.write_json(record_path(component_dir, entry["execution_id"]), entry)
        self.record["components"][entry["component"]] = entry
        self.save()

    def skip(self, name: str, reason: str, position: tuple[int, int] = (1, 1)) -> dict:
        entry = {"component": name, "status": "skipped", "cached": False, "reason": reason}
        self.record["components"][name] = entry
        self.save()
        progress(position, name, f"skipped: {reason}", "skipped", reason=reason)
        return entry


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, PipelineError):
        return text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# --------------------------------------------------------------------------- the DAG


class Pipeline:
    """Runs the registered components in pipeline order over one Run, handing each the
    artifacts its inputs name."""

    def __init__(self, cfg: PipelineConfig, run: Run):
        self.cfg, self.run = cfg, run
        self.artifacts: dict[str, Artifact] = {}  # artifact type name -> this run's artifact
        self.skipped: dict[str, str] = {}  # artifact type name -> why it was not produced

    def execute(self) -> None:
        order = registry.pipeline_order()
        for component in order:  # fail in seconds, not after the components before it
            if component.config_section:
                component.preflight(component.section_of(self.cfg))
        for index, component in enumerate(order, 1):
            self.step(component, (index, len(order)))

    def step(self, component: Component, position: tuple[int, int] = (1, 1)) -> None:
        inputs, missing = self._inputs(component)
        if missing:
            self.run.skip(component.name, missing, position)
            self._mark_skipped(component, f"{component.name} was skipped")
            return
        config = component.section_of(self.cfg)
        ctx = ExecutionContext(self.cfg, config, inputs, "", run_id=self.run.run_id)
        reason = component.skip_reason(ctx)
        if reason:
            self.run.skip(component.name, reason, position)
            self._mark_skipped(component, f"{component.name} was skipped")
            return
        ctx.external = component.external_inputs(ctx)
        key_inputs = {
            "config": component.key_config(config),
            "inputs": {name: a.fingerprint() for name, a in inputs.items() if a is not None},
            **ctx.external,
        }

        def execute(output_dir: str) -> dict:
            ctx.output_dir = output_dir
            return component.run(ctx)

        code = component.code_fingerprint()["sha256"]
        entry = self.run.component(
            Step(
                component.name,
                key_inputs,
                execute,
                component.cacheable,
                component.resumable,
                code,
                position,
            )
        )
        for name, artifact_type in component.outputs.items():
            uri = output_uri(artifact_type, entry["output_dir"])
            self.artifacts[artifact_type.name] = Artifact(
                artifact_type, uri, component.name, entry["execution_id"]
            )
            entry.setdefault("outputs", {})[name] = uri
        self.run.save()

    def _inputs(self, component: Component) -> tuple[dict[str, Artifact | None], str]:
        inputs: dict[str, Artifact | None] = {}
        for name, spec in component.inputs.items():
            artifact = self.artifacts.get(spec.type.name)
            if artifact is None and not spec.optional:
                why = self.skipped.get(spec.type.name, "no component produces it")
                return {}, f"no {spec.type.name} input ({why})"
            inputs[name] = artifact
        return inputs, ""

    def _mark_skipped(self, component: Component, why: str) -> None:
        for artifact_type in component.outputs.values():
            self.skipped[artifact_type.name] = why


def run_pipeline(
    cfg: PipelineConfig, force: bool = False, resume: str | None = None, config_path: str = ""
) -> dict:
    """Execute the pipeline; returns the run record (also in runs/<run_id>/run.json).
    Holds the pipeline_root's lock throughout (locking.PipelineLocked when a live run has it)."""
    run_id = resume or new_run_id()
    with locking.hold(cfg.pipeline_root, run_id, "transfer-pipeline run") as lock:
        return _run_locked(cfg, force, resume, config_path, run_id, lock)


def _run_locked(
    cfg: PipelineConfig,
    force: bool,
    resume: str | None,
    config_path: str,
    run_id: str,
    lock: locking.PipelineLock,
) -> dict:
    cleanup = _collect_garbage(cfg, run_id)
    run = Run(cfg, force, resume, config_path, run_id, lock)
    if cleanup:
        run.record["cleanup"] = cleanup
        run.save()
    log.info("run %s of pipeline %s (record: %s)", run.run_id, cfg.pipeline_name, run.record_path)
    try:
        Pipeline(cfg, run).execute()
        run.record["status"] = "completed"
    except BaseException as e:
        run.record["status"] = "failed"
        failed = [n for n, c in run.record["components"].items() if c.get("status") == "failed"]
        where = f"{failed[-1]} failed: " if failed else ""
        run.record["error"] = where + _one_line(e)
        if isinstance(e, KeyboardInterrupt):
            run.record["error"] = "interrupted"
            raise
        if not isinstance(e, PipelineError):
            log_path = fsutil.join(run.run_dir, artifacts.ERROR_LOG)
            fsutil.write_atomic(log_path, traceback.format_exc())
            run.record["error"] += f" (traceback in {log_path})"
        raise RunFailed(run.record) from e
    finally:
        _finish(run)
        monitoring.publish_run(cfg, run.record)  # issue 32: never raises, bounded in time
    return run.record


def _collect_garbage(cfg: PipelineConfig, run_id: str) -> dict | None:
    """What dead runs left, removed now that this run holds the root (orchestration/gc.py);
    None when there was nothing. A failure here is logged, never fails the run."""
    from pipeline_components.orchestration import gc

    try:
        report = gc.collect(cfg, run_id, recent=gc.RECENT)
    except Exception as e:
        log.warning("could not clean up after earlier runs: %s", _one_line(e))
        return {"error": _one_line(e)}
    if not gc.found_anything(report):
        return None
    for line in gc.describe(report):
        log.info("%s", line)
    return report


class RunFailed(PipelineError):
    """A component failed; `.record` is the run record (already saved with its report)."""

    def __init__(self, record: dict):
        super().__init__(record["error"])
        self.record = record


def _finish(run: Run) -> None:
    rec = run.record
    rec["finished"] = now()
    if rec.get("code"):
        rec["code_fingerprint"] = digest(rec["code"])
    for component in registry.pipeline_order():
        entry = rec["components"].get(component.name)
        if entry and has_result(entry):
            rec.update(component.record_fields(entry))
    try:
        path = fsutil.join(run.run_dir, artifacts.REPORT_FILE)
        rec["report"] = report.write_report(rec, path)
    except Exception as e:  # a report must never hide the run's own outcome
        log.warning("could not write report.html: %s", _one_line(e))
    run.save()


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt would be (so everything that cleans up
    after Ctrl-C does after it too), as a subclass on purpose: CPython remembers a plain
    KeyboardInterrupt that passes through code run by a nested PyRun_* call (an extension
    module's initialisation can do that: the signal lands wherever the main thread is), and
    `python -m` then ends the process by SIGINT (status -2) instead of the 130 main() returns.
    It checks for the exact type, so a subclass is never remembered."""


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a node drain, `kubectl delete pod`) stops the run like Ctrl-C: records are
    closed and the pipeline_root lock is released, so the Job's retry can take the root at
    once instead of waiting for the lease to expire."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise Terminated(f"received {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parser() -> argparse.ArgumentParser:
    p = commandline.new_parser(
        "run",
        "Run every pipeline component in order (cached): "
        + " -> ".join(c.name for c in registry.pipeline_order()),
    )
    commandline.add_config_arguments(p, None, required=True)
    p.add_argument("--force", action="store_true", help="ignore the cache, run every component")
    p.add_argument("--resume", metavar="RUN_ID", help="continue a failed run's record")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_intermixed_args(argv)
    cfg, _ = commandline.load_config(args.config, args.overrides, None)
    try:
        with _sigterm_interrupts():
            record = run_pipeline(cfg, args.force, args.resume, args.config)
    except RunFailed as e:
        print(summary_table(e.record))
        run_dir = artifacts.run_dir(cfg.pipeline_root, e.record["run_id"])
        print(f"run record: {fsutil.join(run_dir, artifacts.RUN_RECORD)}")
        raise
    print(summary_table(record))
    if record.get("report"):
        print(f"report: {record['report']}")
    return 0
