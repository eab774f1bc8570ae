"""`transfer-pipeline run --config pipeline.yaml`: ExampleGen -> Trainer -> Evaluator ->
InfraValidator -> Pusher, cached like TFX, with a lineage record and a report per run.

Layout under `pipeline_root`:

    <Component>/<n>/          the execution's output artifact (n = 1, 2, ...)
    <Component>/<n>.json      the execution record: cache key, status, run id, inputs, result
    runs/<run_id>/run.json    the run's lineage record; report.html; error.log on failure

A component whose cache key (its config, its input fingerprints, the code version) matches a
completed execution reuses that output instead of running (`--force` disables this). A Trainer
execution with the same key that did not complete (killed, preempted) is resumed in place from
its checkpoints. `--resume RUN_ID` continues a failed run's record from its first incomplete
component. The Pusher always runs: it pushes nothing when not blessed or when the model is
already the newest served version, so a re-run on unchanged data pushes nothing.

Exit codes: 0 run completed (model pushed, or rightly not pushed); 1 a component or the config
failed (one line on stderr, details in run.json and error.log); 2 bad command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import re
import time
import traceback
import uuid
from collections.abc import Callable

from pipeline_components import __version__, fsutil
from pipeline_components import config as config_lib
from pipeline_components.config import PipelineConfig
from pipeline_components.errors import PipelineError

log = logging.getLogger(__name__)

COMPONENTS = ("ExampleGen", "Trainer", "Evaluator", "InfraValidator", "Pusher")
RESUMABLE = ("Trainer",)  # executors that continue from their own checkpoints


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def data_fingerprint(data_root: str, beam_args: list[str] | None = None) -> dict:
    """(path, size, mtime) of every file under <data_root>/<split>/<class>/: one listing call per
    scheme via Beam's FileSystems (cheap on gs://), not a read of every image. `beam_args` carry
    what the file system needs (s3:// cannot list without them)."""
    from apache_beam.io.filesystems import FileSystems

    from pipeline_components.example_gen import set_filesystem_options

    set_filesystem_options(beam_args)
    pattern = fsutil.join(data_root, "*", "*", "*")
    try:
        files = FileSystems.match([pattern])[0].metadata_list
    except Exception as e:
        raise PipelineError(
            f"cannot list data_root {data_root}: {str(e).splitlines()[0]}"
        ) from None
    listing = sorted((m.path, m.size_in_bytes, m.last_updated_in_seconds) for m in files)
    return {"num_files": len(listing), "sha256": digest(listing)}


# ------------------------------------------------------------------------ executions


def _execution_ids(component_dir: str) -> list[int]:
    if not fsutil.isdir(component_dir):
        return []
    ids = set()
    for name in fsutil.listdir(component_dir):
        m = re.fullmatch(r"(\d+)(\.json)?", name)
        if m:
            ids.add(int(m.group(1)))
    return sorted(ids)


def _record_path(component_dir: str, execution_id: int) -> str:
    return fsutil.join(component_dir, f"{execution_id}.json")


def find_execution(component_dir: str, key: str, statuses: tuple[str, ...]) -> dict | None:
    """The newest execution record with this cache key and one of these statuses."""
    for execution_id in reversed(_execution_ids(component_dir)):
        path = _record_path(component_dir, execution_id)
        if not fsutil.exists(path):
            continue
        rec = fsutil.read_json(path, "execution record")
        complete = rec.get("status") != "completed" or fsutil.exists(rec["output_dir"])
        if rec.get("cache_key") == key and rec.get("status") in statuses and complete:
            return rec
    return None


@dataclasses.dataclass
class Step:
    """One component in one run: what it reads (for the key) and how it runs."""

    name: str
    key_inputs: dict
    execute: Callable[[str], dict]  # output_dir -> result
    cacheable: bool = True


class Run:
    def __init__(self, cfg: PipelineConfig, force: bool, resume: str | None, config_path: str):
        self.cfg, self.force = cfg, force
        self.root = cfg.pipeline_root
        self.run_id = resume or new_run_id()
        self.run_dir = fsutil.join(self.root, "runs", self.run_id)
        self.record_path = fsutil.join(self.run_dir, "run.json")
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
                "config_path": config_path,
                "config": config_lib.to_dict(cfg),
                "components": {},
            }
        fsutil.makedirs(self.run_dir)
        self.save()

    def save(self) -> None:
        fsutil.write_json(self.record_path, self.record)

    def component(self, step: Step) -> dict:
        """Run or reuse one component; returns its entry in run.json."""
        component_dir = fsutil.join(self.root, step.name)
        key = digest({"component": step.name, "code": __version__, **step.key_inputs})
        previous = self.record["components"].get(step.name)
        if (
            previous
            and previous.get("status") in ("completed", "cached")
            and (previous.get("cache_key") == key)
        ):
            log.info("%s: reused from this run's earlier attempt", step.name)
            return previous
        if step.cacheable and not self.force:
            hit = find_execution(component_dir, key, ("completed",))
            if hit:
                entry = {**hit, "status": "cached", "cached": True, "duration_s": 0.0}
                entry["cached_from_run"] = hit.get("run_id")
                self.record["components"][step.name] = entry
                self.save()
                log.info("%s: cached (execution %s)", step.name, hit["execution_id"])
                return entry
        resumable = None
        if step.name in RESUMABLE:
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
            "status": "running",
            "cached": False,
            "run_id": self.run_id,
            "inputs": step.key_inputs,
            "output_dir": fsutil.join(component_dir, str(execution_id)),
            "started": now(),
        }
        self._write_execution(component_dir, entry)
        t0 = time.monotonic()
        try:
            entry["result"] = step.execute(entry["output_dir"])
            entry["status"] = "completed"
        except BaseException as e:
            entry["status"] = "failed"
            entry["error"] = _one_line(e)
            raise
        finally:
            entry["finished"] = now()
            entry["duration_s"] = round(time.monotonic() - t0, 2)
            self._write_execution(component_dir, entry)
        return entry

    def _claim_execution_id(self, component_dir: str) -> int:
        fsutil.makedirs(component_dir)
        execution_id = max(_execution_ids(component_dir), default=0) + 1
        while fsutil.exists(_record_path(component_dir, execution_id)):
            execution_id += 1
        return execution_id

    def _write_execution(self, component_dir: str, entry: dict) -> None:
        fsutil.write_json(_record_path(component_dir, entry["execution_id"]), entry)
        self.record["components"][entry["component"]] = entry
        self.save()

    def skip(self, name: str, reason: str) -> dict:
        entry = {"component": name, "status": "skipped", "cached": False, "reason": reason}
        self.record["components"][name] = entry
        self.save()
        return entry


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, PipelineError):
        return text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# --------------------------------------------------------------------------- the DAG


def run_pipeline(
    cfg: PipelineConfig, force: bool = False, resume: str | None = None, config_path: str = ""
) -> dict:
    """Execute the pipeline; returns the run record (also in runs/<run_id>/run.json)."""
    from pipeline_components import evaluator, example_gen, infra_validator, pusher, trainer

    run = Run(cfg, force, resume, config_path)
    log.info("run %s of pipeline %s (record: %s)", run.run_id, cfg.pipeline_name, run.record_path)
    eg_cfg = dataclasses.asdict(cfg.example_gen)
    beam_args = eg_cfg.pop("beam_args")  # how it runs, not what it computes: not in the key
    try:
        eg = run.component(
            Step(
                "ExampleGen",
                {
                    "data_root": cfg.data_root,
                    "data": data_fingerprint(cfg.data_root, beam_args),
                    "config": eg_cfg,
                },
                lambda out: _example_gen_summary(
                    example_gen.run_example_gen(cfg.data_root, out, beam_args=beam_args, **eg_cfg)
                ),
            )
        )
        examples_dir = eg["output_dir"]
        tr = run.component(
            Step(
                "Trainer",
                {
                    "examples": eg["result"]["fingerprint"],
                    "config": config_lib.to_dict(cfg.trainer),
                },
                lambda out: trainer.run_trainer(examples_dir, out, cfg.trainer),
            )
        )
        model_dir = fsutil.join(tr["output_dir"], "saved_model")
        model_fp = fsutil.tree_fingerprint(model_dir)
        baseline = evaluator.resolve_baseline(None, cfg.serving_dir, cfg.model_name, model_fp)
        ev = run.component(
            Step(
                "Evaluator",
                {
                    "model": model_fp,
                    "examples": eg["result"]["fingerprint"],
                    "baseline": {"path": baseline, "fingerprint": _fp(baseline)},
                    "config": dataclasses.asdict(cfg.evaluator),
                },
                lambda out: evaluator.run_evaluator(
                    model_dir, examples_dir, out, cfg.evaluator, baseline=baseline
                ),
            )
        )
        blessing_path = fsutil.join(ev["output_dir"], evaluator.BLESSING_FILE)
        infra_path = None
        if ev["result"]["blessed"]:
            iv = run.component(
                Step(
                    "InfraValidator",
                    {
                        "model": model_fp,
                        "evaluation": ev["execution_id"],
                        "config": dataclasses.asdict(cfg.infra_validator),
                    },
                    lambda out: infra_validator.run_infra_validator(
                        model_dir,
                        examples_dir,
                        ev["output_dir"],
                        out,
                        cfg.model_name,
                        cfg.infra_validator,
                    ),
                )
            )
            infra_path = fsutil.join(iv["output_dir"], infra_validator.INFRA_BLESSING_FILE)
        else:
            run.skip("InfraValidator", "model not blessed by the Evaluator")
        run.component(
            Step(
                "Pusher",
                {"model": model_fp, "serving_dir": cfg.serving_dir, "model_name": cfg.model_name},
                lambda out: pusher.run_pusher(
                    model_dir,
                    blessing_path,
                    cfg.serving_dir,
                    cfg.model_name,
                    cfg.pusher.keep_versions,
                    out,
                    infra_blessing_path=infra_path,
                ),
                cacheable=False,
            )
        )
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
            log_path = fsutil.join(run.run_dir, "error.log")
            fsutil.write_atomic(log_path, traceback.format_exc())
            run.record["error"] += f" (traceback in {log_path})"
        raise RunFailed(run.record) from e
    finally:
        _finish(run)
    return run.record


class RunFailed(PipelineError):
    """A component failed; `.record` is the run record (already saved with its report)."""

    def __init__(self, record: dict):
        super().__init__(record["error"])
        self.record = record


def _fp(path: str | None) -> str | None:
    return fsutil.tree_fingerprint(path) if path else None


def _example_gen_summary(stats: dict) -> dict:
    return {
        "fingerprint": stats["fingerprint"],
        "labels": stats["labels"],
        "splits": {s: v["num_examples"] for s, v in stats["splits"].items()},
        "skipped": len(stats.get("skipped", [])),
        "duplicates": len(stats.get("duplicates", [])),
    }


def _finish(run: Run) -> None:
    from pipeline_components import report

    rec = run.record
    rec["finished"] = now()
    comps = rec["components"]
    if "Evaluator" in comps and comps["Evaluator"].get("result"):
        rec["blessing"] = comps["Evaluator"]["result"]
        metrics_path = fsutil.join(comps["Evaluator"]["output_dir"], "metrics.json")
        if fsutil.exists(metrics_path):
            m = fsutil.read_json(metrics_path)
            rec["metrics"] = {k: m.get(k) for k in ("accuracy", "loss", "auc", "num_examples")}
    if comps.get("InfraValidator", {}).get("result"):
        rec["infra_blessing"] = comps["InfraValidator"]["result"]
    if comps.get("Pusher", {}).get("result"):
        rec["push"] = comps["Pusher"]["result"]
    try:
        rec["report"] = report.write_report(rec, fsutil.join(run.run_dir, "report.html"))
    except Exception as e:  # a report must never hide the run's own outcome
        log.warning("could not write report.html: %s", _one_line(e))
    run.save()


def summary_table(record: dict) -> str:
    rows = [("component", "status", "time", "result")]
    for name in COMPONENTS:
        c = record["components"].get(name)
        if not c:
            rows.append((name, "not run", "", ""))
            continue
        took = f"{c.get('duration_s', 0):.1f}s" if c.get("status") != "skipped" else ""
        rows.append((name, c["status"], took, _result_text(name, c)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]
    lines.insert(1, "-" * min(100, max(len(line) for line in lines)))
    head = f"run {record['run_id']}: {record['status'].upper()}"
    if record.get("error"):
        head += f" — {record['error']}"
    return "\n".join([head, *lines])


def _result_text(name: str, c: dict) -> str:
    r = c.get("result") or {}
    if c.get("status") == "failed":
        return c.get("error", "")
    if c.get("status") == "skipped":
        return c.get("reason", "")
    if name == "ExampleGen":
        splits = " ".join(f"{s}={n}" for s, n in r.get("splits", {}).items())
        return f"{splits} classes={len(r.get('labels', []))} skipped={r.get('skipped', 0)}"
    if name == "Trainer":
        return _trainer_text(r)
    if name == "Evaluator":
        verdict = "BLESSED" if r.get("blessed") else "not blessed"
        base = r.get("baseline_accuracy")
        extra = f", baseline {base:.4f}" if base is not None else ""
        return f"accuracy {r.get('accuracy', 0):.4f} (min {r.get('threshold')}{extra}) {verdict}"
    if name == "InfraValidator":
        return ("blessed: " if r.get("blessed") else "NOT blessed: ") + "; ".join(
            r.get("reasons", [])
        )
    if name == "Pusher":
        if r.get("pushed"):
            return f"pushed version {r['version']} -> {r['path']}"
        return f"not pushed: {r.get('reason', '')}"
    return ""


def _trainer_text(r: dict) -> str:
    """The exported (best) epoch's validation accuracy, not the last epoch's."""
    parts = []
    best = r.get("best") or {}
    if "val_accuracy" in best:
        parts.append(f"val_accuracy {best['val_accuracy']:.4f} (best epoch {r.get('best_epoch')})")
    if "epochs_run" in r:
        parts.append(f"{r['epochs_run']} epochs")
    if r.get("cached_features"):
        parts.append("cached features")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="transfer-pipeline run",
        description="Run ExampleGen -> Trainer -> Evaluator -> InfraValidator -> Pusher.",
    )
    p.add_argument("--config", required=True, help="pipeline.yaml")
    p.add_argument("--force", action="store_true", help="ignore the cache, run every component")
    p.add_argument("--resume", metavar="RUN_ID", help="continue a failed run's record")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. trainer.epochs=2")
    args = p.parse_args(argv)
    cfg = config_lib.load(args.config, args.overrides)
    try:
        record = run_pipeline(cfg, args.force, args.resume, args.config)
    except RunFailed as e:
        print(summary_table(e.record))
        print(
            f"run record: {fsutil.join(cfg.pipeline_root, 'runs', e.record['run_id'], 'run.json')}"
        )
        raise
    print(summary_table(record))
    if record.get("report"):
        print(f"report: {record['report']}")
    return 0
