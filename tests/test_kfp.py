"""`transfer-pipeline compile-kfp` and `transfer-pipeline step`: the Kubeflow Pipelines v2 spec.

The compiled spec is read back with KFP's own protos (PipelineSpec, PlatformSpec) and checked
for its graph, its condition, its resources and its parameters; tests/kfp_local.py executes it as
the KFP driver and launcher would (placeholders substituted, conditions evaluated, retries),
against real components on tiny data and against toy components registered in this process.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import tempfile
import traceback
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp_local import LocalRun, NotEmulated, evaluate_condition, go_format_float, load
from test_pipeline import TRAINER, newest_record, run_cli

from pipeline_components import cli
from pipeline_components.core import config, fsutil, registry
from pipeline_components.core.artifacts import ArtifactType, read_blessed
from pipeline_components.core.component import Component, ExecutionContext, Input
from pipeline_components.core.config import option
from pipeline_components.core.errors import PipelineError
from pipeline_components.orchestration import kfp as kfp_compiler
from pipeline_components.orchestration import kfp_settings
from pipeline_components.orchestration import step as step_lib

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "registry.example.com/ml/transfer-pipeline:0.1.0"
BUILTIN = tuple(c.name for c in registry.pipeline_order())  # before any test registers a toy
# the five that train, judge and push the model (the rest validate the data before training)
MODEL_STEPS = ("ExampleGen", "Trainer", "Evaluator", "InfraValidator", "Pusher")
# Paths as on the cluster (k8s/base/pipeline.yaml), on the claims the base kustomization makes.
CLUSTER = [
    "pipeline_root=/pipeline_root",
    "data_root=/data/cats_dogs",
    "serving_dir=/serving_models",
    "kfp.volumes={pipeline-data: /data, pipeline-root: /pipeline_root, "
    "serving-models: /serving_models}",
]


def compile_cli(config_path, output, *overrides, image=IMAGE):
    argv = ["compile-kfp", "--config", str(config_path), "--output", str(output)]
    argv += ["--image", image] if image else []
    return cli.main([*argv, *overrides])


def compiled(tmp_path, config_path, *overrides, image=IMAGE):
    out = tmp_path / "pipeline.kfp.yaml"
    assert compile_cli(config_path, out, *overrides, image=image) == 0
    return (*load(out), out)


def walk(spec, component=None, conditions=()):
    """{task name: (conditions on the way, task spec, component spec)} over nested DAGs."""
    component = component or spec.root
    found = {}
    for name, task in component.dag.tasks.items():
        child = spec.components[task.component_ref.name]
        here = (
            (*conditions, task.trigger_policy.condition)
            if task.trigger_policy.condition
            else conditions
        )
        found[name] = (here, task, child)
        if child.HasField("dag"):
            found.update(walk(spec, child, here))
    return found


def executors(spec) -> dict:
    return json_format.MessageToDict(spec.deployment_spec)["executors"]


def k8s_executors(platform) -> dict:
    k8s = json_format.MessageToDict(platform.platforms["kubernetes"])
    return k8s["deploymentSpec"]["executors"]


def flag_values(args: list[str], flag: str) -> list[list[str]]:
    """The values after each occurrence of `flag` (two for --param/--input/--output-param)."""
    width = 2 if flag in ("--param", "--input", "--output-param") else 1
    return [args[i + 1 : i + 1 + width] for i, a in enumerate(args) if a == flag]


# --------------------------------------------------------------------------- the spec


@pytest.mark.parametrize("name", ["demo.yaml", "pipeline.yaml"])
def test_demo_and_notebook_configs_compile_to_one_step_per_component(tmp_path, capsys, name):
    source = ROOT / "configs" / name
    cfg = registry.load_config(str(source), CLUSTER)
    spec, platform, path = compiled(tmp_path, source, *CLUSTER)
    out = capsys.readouterr().out
    assert f"wrote {path}: {len(BUILTIN)} steps in {IMAGE}" in out

    tasks = walk(spec)
    steps = {n: t for n, t in tasks.items() if t[2].executor_label and not n.startswith("skip")}
    assert sorted(steps) == sorted(kfp_compiler.kebab(n) for n in BUILTIN)
    assert {t[1].task_info.name for t in steps.values()} == set(BUILTIN)  # display names
    # each task runs its component through the project's own CLI, in the given image
    execs = executors(spec)
    for name_, (_, task, comp) in tasks.items():
        if not comp.executor_label:
            continue
        container = execs[comp.executor_label]["container"]
        assert container["image"] == IMAGE and container["command"] == ["transfer-pipeline"]
        assert container["args"][0] == "step"
        assert not task.caching_options.enable_cache, name_
        assert task.retry_policy.max_retry_count == cfg.sections["kfp"].retries
        assert (
            task.retry_policy.backoff_duration.seconds == cfg.sections["kfp"].retry_backoff_seconds
        )
    components = {
        execs[c.executor_label]["container"]["args"][1]: n for n, (_, _, c) in steps.items()
    }
    assert sorted(components) == sorted(BUILTIN)

    # order: each step after the producers of what it reads
    def upstream(task_name):
        _, task, _ = tasks[task_name]
        return {
            p.task_output_parameter.producer_task
            for p in task.inputs.parameters.values()
            if p.WhichOneof("kind") == "task_output_parameter"
        }

    # the backbone pass (FeatureGen) and the search (Tuner) feed the Trainer
    assert upstream("feature-gen") == {"example-gen"}
    assert upstream("tuner") == {"example-gen", "feature-gen"}
    assert upstream("trainer") == {"example-gen", "feature-gen", "tuner"}
    # a failing data validation stops the DAG before training: an ordering edge without data
    assert "example-validator" in tasks["trainer"][1].dependent_tasks
    assert upstream("evaluator") == {"trainer", "example-gen"}
    assert upstream("pusher") == {"infra-validator"}  # and the branch's inputs (below)

    # InfraValidator and Pusher run only when the Evaluator blessed the model
    blessed = "inputs.parameter_values['pipelinechannel--evaluator-blessing_verdict'] == true"
    for gated in ("infra-validator", "pusher"):
        assert tasks[gated][0] == (blessed,)
    for ungated in ("example-gen", "feature-gen", "tuner", "trainer", "evaluator"):
        assert tasks[ungated][0] == ()
    (branches,) = [n for n in spec.root.dag.tasks if n.startswith("condition-branches")]
    feed = (
        spec.root.dag.tasks[branches]
        .inputs.parameters["pipelinechannel--evaluator-blessing_verdict"]
        .task_output_parameter
    )
    assert (feed.producer_task, feed.output_parameter_key) == ("evaluator", "blessing_verdict")
    (skip,) = [n for n in tasks if n.startswith("skip")]
    assert tasks[skip][0] == (f"!({blessed})",)
    skip_args = execs[tasks[skip][2].executor_label]["container"]["args"]
    assert skip_args[1:3] == ["InfraValidator", "Pusher"]

    # only the backbone's steps ask for a GPU (the Trainer, FeatureGen's pass), on the GPU
    # pool, with shared memory
    k8s = k8s_executors(platform)
    for component, task_name in components.items():
        label = tasks[task_name][2].executor_label
        resources = execs[label]["container"].get("resources", {})
        settings = k8s[label]
        gpu = component in ("Trainer", "FeatureGen")
        assert ("accelerator" in resources) == gpu, component
        assert ("nodeSelector" in settings) == gpu and ("tolerations" in settings) == gpu
        if gpu:
            assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert resources["accelerator"]["resourceCount"] == "1"
            assert settings["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
            assert settings["tolerations"] == [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ]
        res = cfg.sections["kfp"].resources_for(component, gpu)
        assert resources["resourceMemoryRequest"] == f"{round(res.memory_gib * 1024)}Mi"
        assert resources["resourceMemoryLimit"] == resources["resourceMemoryRequest"]
        assert resources["resourceCpuRequest"] == f"{round(res.cpu * 1000)}m"
        (shm,) = settings["emptyDirMounts"]
        assert shm["mountPath"] == "/dev/shm" and shm["medium"] == "Memory"
        assert shm["sizeLimit"] == f"{round(res.shm_gib * 1024)}Mi"
        assert settings["activeDeadlineSeconds"] == str(round(res.timeout_hours * 3600))
        # every task mounts every claim where the config's paths live
        mounts = {m["constant"]: m["mountPath"] for m in settings["pvcMount"]}
        assert mounts == cfg.sections["kfp"].volumes

    # pipeline parameters: the config's values as defaults
    params = spec.root.input_definitions.parameters
    defaults = {n: json_format.MessageToDict(p.default_value) for n, p in params.items()}
    assert defaults["data_root"] == cfg.data_root and defaults["model_name"] == cfg.model_name
    assert defaults["trainer_epochs"] == cfg.sections["trainer"].epochs
    assert defaults["evaluator_min_accuracy"] == cfg.sections["evaluator"].min_accuracy
    assert (
        defaults["trainer_image_size"]
        == yaml.safe_dump(cfg.sections["trainer"].image_size, default_flow_style=True).strip()
    )
    assert params["trainer_epochs"].parameter_type == params["pusher_keep_versions"].parameter_type
    # the pushed version is a pipeline output (through dsl.OneOf: 0 when nothing ran)
    outputs = spec.root.output_definitions.parameters
    assert "pusher_version" in outputs and "evaluator_blessing_verdict" in outputs

    # the config each task starts from is the compiled one (its kfp: section left out)
    trainer_args = execs[tasks["trainer"][2].executor_label]["container"]["args"]
    (text,) = flag_values(trainer_args, "--config-text")[0]
    carried = registry.config_from_dict(yaml.safe_load(text))
    expected = config.to_dict(cfg)
    got = config.to_dict(carried)
    del expected["kfp"], got["kfp"]
    assert got == expected
    # every pipeline parameter reaches every task under its config key
    keys = {k for k, _ in flag_values(trainer_args, "--param")}
    assert {"data_root", "trainer.epochs", "evaluator.min_accuracy"} <= keys


def test_every_task_declares_a_metrics_artifact_and_the_gate_a_report(tmp_path):
    """What the KFP UI shows: each component task's Metrics, the Evaluator's report (HTML),
    written through the launcher's artifact paths and executor input."""
    spec, _, _ = compiled(tmp_path, ROOT / "configs" / "demo.yaml", *CLUSTER)
    execs = executors(spec)
    declared = {}
    for name, (_, _, comp) in walk(spec).items():
        if not comp.executor_label or name.startswith("skip"):
            continue
        outputs = comp.output_definitions.artifacts
        declared[name] = {k: a.artifact_type.schema_title for k, a in outputs.items()}
        args = execs[comp.executor_label]["container"]["args"]
        assert flag_values(args, "--metrics-artifact") == [
            ["{{$.outputs.artifacts['metrics'].path}}"]
        ]
        assert flag_values(args, "--executor-input") == [["{{$}}"]]
        html = flag_values(args, "--html-artifact")
        assert html == ([["{{$.outputs.artifacts['report'].path}}"]] if "report" in outputs else [])
    assert declared.pop("evaluator") == {"metrics": "system.Metrics", "report": "system.HTML"}
    assert sorted(declared) == sorted(kfp_compiler.kebab(n) for n in BUILTIN if n != "Evaluator")
    assert all(d == {"metrics": "system.Metrics"} for d in declared.values())


def test_spec_settings_follow_the_kfp_section(tmp_path):
    """Per-step resources, the GPU pool's labels and the retry policy come from `kfp:`."""
    spec, platform, _ = compiled(
        tmp_path,
        ROOT / "configs" / "demo.yaml",
        *CLUSTER,
        "kfp.resources={default: {cpu: 0.5, memory_gib: 2}, Evaluator: {cpu: 3, memory_gib: 6, "
        "cpu_limit: 4}, gpu: {cpu: 8, memory_gib: 30, shm_gib: 8}}",
        "kfp.gpu={count: 2, node_selector: {cloud.google.com/gke-nodepool: gpu-pool}, "
        "toleration_key: null}",
        "kfp.retries=1",
    )
    tasks, execs, k8s = walk(spec), executors(spec), k8s_executors(platform)

    def resources(task):
        return execs[tasks[task][2].executor_label]["container"]["resources"]

    assert resources("evaluator")["resourceCpuRequest"] == "3000m"
    assert resources("evaluator")["resourceCpuLimit"] == "4000m"
    assert resources("pusher")["resourceMemoryRequest"] == "2048Mi"
    assert resources("trainer")["resourceMemoryRequest"] == "30720Mi"
    assert resources("trainer")["accelerator"]["resourceCount"] == "2"
    trainer = k8s[tasks["trainer"][2].executor_label]
    assert trainer["nodeSelector"]["labels"] == {"cloud.google.com/gke-nodepool": "gpu-pool"}
    assert "tolerations" not in trainer
    assert "emptyDirMounts" not in k8s[tasks["pusher"][2].executor_label]  # shm_gib 0 default
    assert all(
        t.retry_policy.max_retry_count == 1 for _, t, c in tasks.values() if c.executor_label
    )


# ------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "overrides, image, message",
    [
        (["kfp.imagee=x"], IMAGE, "unknown key 'kfp.imagee'"),
        (["trainer.epoch=2"], IMAGE, "unknown key 'trainer.epoch'"),
        ([], None, "no image: pass --image IMAGE or set kfp.image in pipeline.yaml"),
        ([], "Not An Image!", "image 'Not An Image!' is not a container image reference"),
        (["pipeline_root=./pipeline_root"], IMAGE, "pipeline_root=./pipeline_root: unreachable"),
        (["pipeline_root=/elsewhere/root"], IMAGE, "pipeline_root=/elsewhere/root: unreachable"),
        (["serving_dir=s3://bucket/models"], IMAGE, "serving_dir=s3://bucket/models: unreachable"),
        (["kfp.resources={Traner: {cpu: 1}}"], IMAGE, "kfp.resources: must be keyed by one of"),
        (["kfp.volumes={Data: /data}"], IMAGE, "kfp.volumes: must be PersistentVolumeClaim"),
        (["pipeline_name=Cats_Dogs"], IMAGE, "pipeline_name='Cats_Dogs': KFP needs lowercase"),
    ],
)
def test_compile_errors_are_one_line(tmp_path, capsys, overrides, image, message):
    source = ROOT / "configs" / "pipeline.yaml"
    out = tmp_path / "spec.yaml"
    code = compile_cli(source, out, *CLUSTER, *overrides, image=image)
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("transfer-pipeline compile-kfp: error: ") and err.count("\n") == 1
    assert message in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_gcs_paths_need_no_volume_and_set_the_kfp_pipeline_root(tmp_path):
    spec, platform, _ = compiled(
        tmp_path,
        ROOT / "k8s" / "overlays" / "gke" / "pipeline.yaml",
    )
    assert spec.default_pipeline_root == "gs://my-bucket/transfer-pipeline/pipeline_root/kfp"
    assert all("pvcMount" not in e for e in k8s_executors(platform).values())


def test_launcher_number_format():
    """The launcher's strconv.FormatFloat(v, 'f', -1, 64), which the executor below copies."""
    assert [go_format_float(v) for v in (2.0, 0.85, 5e-05, 1e-9, 40000000.0, 1e21)] == [
        "2",
        "0.85",
        "0.00005",
        "0.000000001",
        "40000000",
        "1000000000000000000000",
    ]
    values = {"v": True, "n": 2.0, "s": "x"}
    assert evaluate_condition("inputs.parameter_values['v'] == true", values)
    assert not evaluate_condition("!(inputs.parameter_values['v'] == true)", values)
    assert evaluate_condition(
        "inputs.parameter_values['n'] == 2 && inputs.parameter_values['s'] != 'y'", values
    )
    with pytest.raises(NotEmulated):
        evaluate_condition("int(inputs.parameter_values['n']) > 1", values)


# ---------------------------------------------------------------- toy components


NUMBERS = ArtifactType("ToyNumbers", "numbers.json", description="a list of numbers")
TOY_VERDICT = ArtifactType("ToyVerdict", "verdict.json", verdict=read_blessed)
PUBLISHED = ArtifactType("ToyPublished", "published.json")


@dataclasses.dataclass
class SourceConfig:
    count: int = option(4, ge=1, le=1000)
    offset: float | None = option(None, ge=0, le=100)  # nullable: a YAML-text parameter


@dataclasses.dataclass
class JudgeConfig:
    threshold: float = option(2.0, ge=0, le=1000)


class Source(Component):
    name = "ToySource"
    command = "toy-source"
    config_section = "toy_source"
    config_class = SourceConfig
    outputs = {"numbers": NUMBERS}
    calls: list[str] = []
    fail_with: BaseException | None = None

    def run(self, ctx: ExecutionContext) -> dict:
        type(self).calls.append(ctx.run_id or "")
        if type(self).fail_with is not None:
            raise type(self).fail_with
        numbers = [i + (ctx.config.offset or 0) for i in range(1, ctx.config.count + 1)]
        fsutil.makedirs(ctx.output_dir)
        fsutil.write_json(ctx.output_uri(self, "numbers"), numbers)
        return {"count": len(numbers)}


class Judge(Component):
    name = "ToyJudge"
    command = "toy-judge"
    config_section = "toy_judge"
    config_class = JudgeConfig
    inputs = {"numbers": Input(NUMBERS)}
    outputs = {"verdict": TOY_VERDICT}

    def run(self, ctx: ExecutionContext) -> dict:
        numbers = fsutil.read_json(ctx.input_uri("numbers"))
        mean = sum(numbers) / len(numbers)
        fsutil.makedirs(ctx.output_dir)
        blessed = mean >= ctx.config.threshold
        fsutil.write_json(ctx.output_uri(self, "verdict"), {"blessed": blessed, "mean": mean})
        return {"blessed": blessed, "mean": mean}


class Publisher(Component):
    name = "ToyPublisher"
    command = "toy-publish"
    inputs = {"numbers": Input(NUMBERS), "verdict": Input(TOY_VERDICT)}
    outputs = {"published": PUBLISHED}
    cacheable = False
    task_outputs = {"total": int, "note": str}

    def run(self, ctx: ExecutionContext) -> dict:
        total = int(sum(fsutil.read_json(ctx.input_uri("numbers"))))
        fsutil.makedirs(ctx.output_dir)
        fsutil.write_json(ctx.output_uri(self, "published"), {"total": total})
        return {"total": total, "note": None}


class Auditor(Component):
    """Reads the publisher's output only when it exists: under the same condition."""

    name = "ToyAuditor"
    command = "toy-audit"
    inputs = {"published": Input(PUBLISHED)}
    outputs = {}

    def run(self, ctx: ExecutionContext) -> dict:
        return {"seen": fsutil.read_json(ctx.input_uri("published"))["total"]}


@pytest.fixture
def toys(monkeypatch):
    """A registry holding only the toy components (restored afterwards)."""
    Source.calls, Source.fail_with = [], None
    monkeypatch.setattr(registry, "_components", [Source(), Judge(), Publisher(), Auditor()])
    yield


def toy_config(tmp_path, **sections) -> Path:
    data = {
        "pipeline_name": "toys",
        "pipeline_root": str(tmp_path / "root"),
        "data_root": str(tmp_path / "data"),
        "serving_dir": str(tmp_path / "serving"),
        "kfp": {"volumes": {"work": str(tmp_path)}, "retries": 2},
        **sections,
    }
    path = tmp_path / "toys.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def in_process(argv: list[str]) -> tuple[int, str, str]:
    """A task's command run by cli.main in this process (the toys are registered only here)."""
    assert argv[0] == "transfer-pipeline"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv[1:])
        except SystemExit as e:
            code = int(e.code or 0)
        except Exception:
            traceback.print_exc()
            code = 1  # what a Python process exits with on an uncaught exception
    return code, out.getvalue(), err.getvalue()


def step_record(root: Path, run_id: str, component: str) -> dict:
    return json.loads((root / "runs" / run_id / "steps" / f"{component}.json").read_text())


def test_components_added_through_the_contract_are_compiled_without_an_edit(toys, tmp_path):
    spec, _, _ = compiled(tmp_path, toy_config(tmp_path))
    tasks = walk(spec)
    assert {n for n in tasks if not n.startswith("condition")} == {
        "toy-source",
        "toy-judge",
        "toy-publisher",
        "toy-auditor",
        "skip-unless-toy-judge-verdict",
    }
    gate = "inputs.parameter_values['pipelinechannel--toy-judge-verdict_verdict'] == true"
    assert tasks["toy-publisher"][0] == (gate,) and tasks["toy-auditor"][0] == (gate,)
    assert tasks["toy-judge"][0] == ()
    params = spec.root.input_definitions.parameters
    assert json_format.MessageToDict(params["toy_source_count"].default_value) == 4
    assert json_format.MessageToDict(params["toy_source_offset"].default_value) == "null"
    assert json_format.MessageToDict(params["toy_judge_threshold"].default_value) == 2.0
    assert set(spec.root.output_definitions.parameters) == {
        "toy_judge_verdict_verdict",
        "toy_publisher_total",
        "toy_publisher_note",
    }


def test_a_pipeline_without_verdicts_or_task_outputs_has_no_condition_and_no_outputs(
    toys, monkeypatch, tmp_path
):
    monkeypatch.setattr(registry, "_components", [Source()])
    spec, platform, _ = compiled(tmp_path, toy_config(tmp_path))
    assert list(spec.root.dag.tasks) == ["toy-source"]
    assert not spec.root.output_definitions.parameters
    local = LocalRun(spec, platform, tmp_path / "kfp", call=in_process)
    assert local.run({"toy_source_count": 2}) == {}
    numbers = step_record(tmp_path / "root", local.run_id, "ToySource")["components"]
    assert fsutil.read_json(numbers["ToySource"]["outputs"]["numbers"]) == [1, 2]


def test_toy_pipeline_runs_its_condition_both_ways_and_publishes_through_oneof(toys, tmp_path):
    spec, platform, _ = compiled(tmp_path, toy_config(tmp_path))
    root = tmp_path / "root"

    blessed = LocalRun(spec, platform, tmp_path / "kfp1", call=in_process)
    outputs = blessed.run()  # mean of 1..4 = 2.5 >= 2.0
    assert outputs == {
        "toy_judge_verdict_verdict": True,
        "toy_publisher_total": 10,
        "toy_publisher_note": "",
    }
    assert blessed.ran == ["toy-source", "toy-judge", "toy-publisher", "toy-auditor"]
    audit = step_record(root, blessed.run_id, "ToyAuditor")["components"]["ToyAuditor"]
    assert audit["result"] == {"seen": 10}  # the Publisher's output URI reached it

    # a run-time parameter changes the Judge's cache key: re-judged, not blessed, Else branch
    judged = LocalRun(spec, platform, tmp_path / "kfp2", call=in_process)
    outputs = judged.run({"toy_judge_threshold": 9.5})
    assert outputs == {
        "toy_judge_verdict_verdict": False,
        "toy_publisher_total": 0,
        "toy_publisher_note": "",
    }
    assert judged.ran == ["toy-source", "toy-judge", "skip-unless-toy-judge-verdict"]
    source = step_record(root, judged.run_id, "ToySource")["components"]["ToySource"]
    judge = step_record(root, judged.run_id, "ToyJudge")["components"]["ToyJudge"]
    assert source["status"] == "cached" and judge["status"] == "completed"
    assert Source.calls == [blessed.run_id]  # the project's cache, across KFP runs
    for skipped in ("ToyPublisher", "ToyAuditor"):
        entry = step_record(root, judged.run_id, skipped)["components"][skipped]
        assert entry == {
            "component": skipped,
            "status": "skipped",
            "cached": False,
            "reason": "ToyJudge's verdict did not pass",
        }

    # a nullable option is a YAML-text parameter: its value reaches the component typed
    third = LocalRun(spec, platform, tmp_path / "kfp3", call=in_process)
    assert third.run({"toy_source_offset": "1.5"})["toy_publisher_total"] == 16


def gateway_samples(url: str) -> dict[tuple, float]:
    """{(metric, frozenset of labels): value} of what a Pushgateway serves."""
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_tools import http_get

    status, body = http_get(url + "/metrics")
    assert status == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for f in text_string_to_metric_families(body.decode())
        for s in f.samples
        if s.name.startswith("transfer_pipeline_")
    }


def test_each_task_publishes_its_metrics_and_the_last_one_the_run(toys, tmp_path):
    """KFP tasks push one group each (grouping key job, pipeline, component), so tasks never
    overwrite each other; the task that finishes the run pushes the run group. Each task's
    Metrics artifact carries the same numbers as its metadata (what the KFP UI shows)."""
    from prometheus_tools import pushgateway

    with pushgateway(tmp_path) as gateway:
        config = toy_config(tmp_path, monitoring={"pushgateway": gateway.url})
        spec, platform, _ = compiled(tmp_path, config)
        local = LocalRun(spec, platform, tmp_path / "kfp", call=in_process)
        local.run()
        samples = gateway_samples(gateway.url)
    group = {"job": "transfer_pipeline", "pipeline": "toys", "instance": ""}

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, frozenset({**group, **labels}.items())))

    for toy in ("ToySource", "ToyJudge", "ToyPublisher", "ToyAuditor"):
        assert value("transfer_pipeline_component_status", component=toy, status="completed") == 1
        assert value("transfer_pipeline_component_status", component=toy, status="failed") == 0
    assert value("transfer_pipeline_run_success") == 1  # decided by the last task
    (info,) = [k for k in samples if k[0] == "transfer_pipeline_run_info"]
    assert dict(info[1])["run_id"] == local.run_id
    # the KFP artifacts: a Metrics artifact per task, its metadata merged from the task's
    # ExecutorOutput; no report (no ModelBlessing among the toys)
    for task in local.ran:
        shown = local.artifacts[task]
        assert set(shown) == {"metrics"} and shown["metrics"]["schema_title"] == "system.Metrics"
        written = json.loads(Path(shown["metrics"]["path"]).read_text())
        assert written == shown["metrics"]["metadata"] and written["success"] == 1
        assert "component_duration_seconds" in written


def test_a_task_that_fails_for_good_decides_the_run(toys, tmp_path):
    """Bad input is not retried: that task pushes the run as failed, and the components it
    never reached as not_run (no group keeps an older run's values)."""
    from prometheus_tools import pushgateway

    Source.fail_with = PipelineError("toy_source: the numbers are bad")
    with pushgateway(tmp_path) as gateway:
        config = toy_config(tmp_path, monitoring={"pushgateway": gateway.url})
        spec, platform, _ = compiled(tmp_path, config)
        with pytest.raises(AssertionError, match="toy-source failed"):
            LocalRun(spec, platform, tmp_path / "kfp", call=in_process).run()
        samples = gateway_samples(gateway.url)
    group = frozenset({"job": "transfer_pipeline", "pipeline": "toys", "instance": ""}.items())
    assert samples[("transfer_pipeline_run_success", group)] == 0
    for toy, status in (
        ("ToySource", "failed"),
        ("ToyJudge", "not_run"),
        ("ToyAuditor", "not_run"),
    ):
        labels = group | {("component", toy), ("status", status)}
        assert samples[("transfer_pipeline_component_status", labels)] == 1


def test_bad_input_fails_every_retry_at_once_and_a_crash_is_retried(toys, tmp_path):
    """KFP retries any failure; a step that failed on bad input (PipelineError) does not do
    the work again in the same run, a crash (any other exception) does."""
    spec, platform, _ = compiled(tmp_path, toy_config(tmp_path))
    Source.fail_with = PipelineError("data_root /nowhere: no train/ folder")
    bad = LocalRun(spec, platform, tmp_path / "kfp1", call=in_process)
    with pytest.raises(AssertionError, match="toy-source failed \\(exit 1\\) after 3 attempt"):
        bad.run()
    assert Source.calls == [bad.run_id]  # ran once; the two retries refused at once
    first, *retries = [a.stderr for a in bad.attempts]
    assert first == "transfer-pipeline step: error: data_root /nowhere: no train/ folder\n"
    for err in retries:
        assert err.count("\n") == 1 and "failed on bad input in an earlier attempt" in err
    record = step_record(tmp_path / "root", bad.run_id, "ToySource")
    assert record["permanent_error"] == "data_root /nowhere: no train/ folder"

    Source.calls, Source.fail_with = [], RuntimeError("node lost")
    crash = LocalRun(spec, platform, tmp_path / "kfp2", call=in_process)
    with pytest.raises(AssertionError, match="after 3 attempt"):
        crash.run()
    assert Source.calls == [crash.run_id] * 3  # every retry ran the step again
    assert "permanent_error" not in step_record(tmp_path / "root", crash.run_id, "ToySource")

    Source.calls, Source.fail_with = [], None
    ok = LocalRun(spec, platform, tmp_path / "kfp3", call=in_process)
    ok.run()
    assert step_record(tmp_path / "root", ok.run_id, "ToySource")["attempts"] == 1


def test_a_bad_parameter_is_a_one_line_error_that_is_not_retried(toys, tmp_path):
    spec, platform, _ = compiled(tmp_path, toy_config(tmp_path))
    bad = LocalRun(spec, platform, tmp_path / "kfp", call=in_process)
    with pytest.raises(AssertionError, match="exit 1"):
        bad.run({"toy_source_count": 0})
    first, *retries = [a.stderr for a in bad.attempts]
    assert first == (
        "transfer-pipeline step: error: --config-text: toy_source.count: must be in [1, 1000], "
        "got 0\n"
    )
    assert retries and all("not retried" in e for e in retries)
    assert Source.calls == []


def test_step_command_line_errors(toys, tmp_path, capsys):
    path = toy_config(tmp_path)
    base = ["step", "--run-id", "r1", "--config", str(path)]
    cases = [
        (["Nope"], 2, "unknown component 'Nope'"),
        (["ToySource", "ToyJudge"], 2, "one component per step"),
        (["ToySource", "--param", "toy_source.cuont", "3"], 2, "--param toy_source.cuont: not"),
        (["ToyJudge", "--input", "numbrs", "x"], 2, "ToyJudge has no input 'numbrs'"),
        (["ToySource", "--output-param", "ToySource.nope", "f"], 2, "--output-param ToySource"),
    ]
    for extra, code, message in cases:
        assert cli.main([*base[:1], *extra, *base[1:]]) == code, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_a_skipped_producer_skips_its_consumers_in_the_step(toys, tmp_path):
    """An empty input URI means its producer did not run: the step records a skip (as the
    runner does) and publishes zero values."""
    path = toy_config(tmp_path)
    out = tmp_path / "out"
    code = cli.main(
        ["step", "ToyPublisher", "--run-id", "r1", "--config", str(path)]
        + ["--input", "numbers", "", "--input", "verdict", ""]
        + ["--output-param", "ToyPublisher.total", str(out / "total")]
        + ["--output-param", "ToyPublisher.published", str(out / "uri")]
    )
    assert code == 0
    assert (out / "total").read_text() == "0" and (out / "uri").read_text() == ""
    entry = step_record(tmp_path / "root", "r1", "ToyPublisher")["components"]["ToyPublisher"]
    assert entry["status"] == "skipped" and "ToyNumbers" in entry["reason"]


def test_step_runs_in_an_image_without_the_kfp_sdk(tmp_path):
    """The runtime image does not install the `kfp` extra: `step` must not need it."""
    import subprocess
    import sys

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"pipeline_root": str(tmp_path / "root")}))
    code = (
        "import sys\n"
        "sys.modules['kfp'] = None  # import kfp raises ImportError\n"
        "from pipeline_components import cli\n"
        f"sys.exit(cli.main(['step', 'InfraValidator', 'Pusher', '--skip', 'not blessed', "
        f"'--run-id', 'r1', '--config', {str(path)!r}, "
        f"'--output-param', 'Pusher.version', {str(tmp_path / 'version')!r}]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "version").read_text() == "0"
    entry = step_record(tmp_path / "root", "r1", "Pusher")["components"]["Pusher"]
    assert entry["status"] == "skipped" and entry["reason"] == "not blessed"


def test_published_values_are_declared_once():
    class Clash(Publisher):
        name = "Clash"
        task_outputs = {"published": str}

    with pytest.raises(PipelineError, match="task output 'published' has the name of an output"):
        step_lib.output_parameters(Clash())
    assert kfp_settings.KfpConfig().resources_for("Trainer", True).cpu == 4.0


def test_every_numeric_kfp_option_declares_a_range():
    import typing

    def walk_cls(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            inner = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
            if typing.get_origin(tp) is dict:
                inner = [typing.get_args(tp)[1]]
            if dataclasses.is_dataclass(inner[0]):
                yield from walk_cls(inner[0], f"{prefix}.{f.name}")
            elif inner[0] in (int, float):
                yield f"{prefix}.{f.name}", config.has_range(f.metadata)

    found = list(walk_cls(kfp_settings.KfpConfig, "kfp"))
    assert ("kfp.resources.cpu", True) in found and ("kfp.gpu.count", True) in found
    assert [w for w, ok in found if not ok] == []


# ------------------------------------------------------- the real pipeline, end to end


def cluster_config(tmp_path: Path, data_root: Path, where: str) -> Path:
    """The test_pipeline config with its own pipeline_root and serving_dir under `where`."""
    base = tmp_path / where
    cfg = {
        "pipeline_name": "shapes-test",
        "pipeline_root": str(base / "root"),
        "data_root": str(data_root),
        "serving_dir": str(base / "serving"),
        "model_name": "shapes",
        "example_gen": {"num_shards": 2},
        "trainer": dict(TRAINER, epochs=1),
        "evaluator": {"min_accuracy": 0.0},
        "infra_validator": {"num_examples": 4},
        # each a PersistentVolumeClaim on a cluster; here the directories themselves
        "kfp": {"volumes": {"pipeline": str(base), "data": str(data_root)}},
    }
    base.mkdir(parents=True)
    path = tmp_path / f"{where}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_compiled_spec_runs_like_transfer_pipeline_run(make_dataset, tmp_path, capsys):
    from kfp_local import console_script

    from pipeline_components.infra_validator.executor import serve_in_subprocess
    from serving.client import PredictionClient

    data = make_dataset(per_split=(8, 3, 3))

    # the reference: transfer-pipeline run
    ref_path = cluster_config(tmp_path, data, "run")
    code, out, _ = run_cli(ref_path, capsys)
    assert code == 0, out
    reference = newest_record(tmp_path / "run")

    # the same config compiled, each task a subprocess of the console script
    kfp_path = cluster_config(tmp_path, data, "kfp")
    spec, platform, _ = compiled(tmp_path, kfp_path)
    local = LocalRun(spec, platform, tmp_path / "launcher", console_script())
    outputs = local.run()
    # every task ran once, after the producers of what it reads (FeatureGen and the Tuner wait
    # for ExampleGen only, so they may run before data validation)
    assert sorted(local.ran) == sorted(kfp_compiler.kebab(n) for n in BUILTIN)
    position = {n: local.ran.index(kfp_compiler.kebab(n)) for n in BUILTIN}
    for name, upstream in registry.upstream().items():
        assert all(position[u] < position[name] for u in upstream), name
    assert [a.returncode for a in local.attempts] == [0] * len(BUILTIN)  # no retry was needed
    skipped = {"BulkInferrer", "Tuner"}  # no batch_predict.input, no tuner.space
    root = tmp_path / "kfp" / "root"
    records = {c: step_record(root, local.run_id, c) for c in BUILTIN}
    entries = {c: r["components"][c] for c, r in records.items()}
    assert all(e["run_id"] == local.run_id for e in entries.values() if e["status"] != "skipped")
    # each step ends as it did in `run` (skipped there too), and everything else completed
    statuses = {c: e["status"] for c, e in entries.items()}
    assert statuses == {c: reference["components"][c]["status"] for c in BUILTIN}
    assert {c for c, s in statuses.items() if s == "skipped"} == skipped
    assert {s for c, s in statuses.items() if c not in skipped} == {"completed"}

    # equal to the reference: split counts, classes, blessing, the pushed version
    ref = reference["components"]
    assert entries["ExampleGen"]["result"]["splits"] == ref["ExampleGen"]["result"]["splits"]
    assert entries["ExampleGen"]["result"]["labels"] == ref["ExampleGen"]["result"]["labels"]
    assert (
        entries["ExampleGen"]["result"]["fingerprint"] == ref["ExampleGen"]["result"]["fingerprint"]
    )
    assert outputs["evaluator_blessing_verdict"] is reference["blessing"]["blessed"] is True
    assert (
        outputs["infra_validator_infra_blessing_verdict"] is reference["infra_blessing"]["blessed"]
    )
    assert outputs["pusher_pushed"] is reference["push"]["pushed"] is True
    assert outputs["pusher_version"] == reference["push"]["version"] == 1
    assert records["Pusher"]["push"]["path"] == str(tmp_path / "kfp" / "serving" / "shapes" / "1")
    assert records["Evaluator"]["metrics"]["num_examples"] == reference["metrics"]["num_examples"]

    # what the KFP UI shows: every task's Metrics artifact (its metadata, from the task's
    # ExecutorOutput) and the Evaluator's report, the run so far as HTML
    for name in BUILTIN:
        shown = local.artifacts[kfp_compiler.kebab(name)]
        metrics = shown["metrics"]
        assert json.loads(Path(metrics["path"]).read_text()) == metrics["metadata"]
        assert metrics["metadata"]["success"] == 1, name  # skipped ones too
        assert name in skipped or metrics["metadata"]["component_cache_hit"] == 0
    evaluator = local.artifacts["evaluator"]
    assert evaluator["metrics"]["metadata"]["model_accuracy"] == reference["metrics"]["accuracy"]
    assert evaluator["metrics"]["metadata"]["model_blessed_passed"] == 1
    report = Path(evaluator["report"]["path"]).read_text()
    assert report.startswith("<!doctype html>") and local.run_id in report
    assert "accuracy" in report and "ExampleValidator" in report

    # the pushed version serves over gRPC, answering as the Evaluator predicted
    with open(os.path.join(entries["Evaluator"]["output_dir"], "predictions.csv")) as f:
        rows = list(csv.DictReader(f))
    images = [str(data / r["filename"]) for r in rows[:3]]
    with (
        tempfile.TemporaryDirectory() as work,
        serve_in_subprocess(
            str(tmp_path / "kfp" / "serving" / "shapes"), "shapes", 120, work
        ) as target,
        PredictionClient(target, "shapes") as client,
    ):
        assert client.wait_until_available(60) == 1
        predictions = client.predict(images)
    for row, p in zip(rows[:3], predictions, strict=True):
        assert p.class_name == row["predicted"]

    # the KFP steps wrote the execution records `run` keys its cache with: on their
    # pipeline_root, `transfer-pipeline run` reuses every one of them
    code, out, _ = run_cli(kfp_path, capsys)
    again = newest_record(tmp_path / "kfp")
    statuses = {n: c["status"] for n, c in again["components"].items()}
    assert {n: statuses[n] for n in MODEL_STEPS} == {
        **dict.fromkeys(MODEL_STEPS[:4], "cached"),
        "Pusher": "completed",
    }
    for name in MODEL_STEPS[:4]:
        assert again["components"][name]["execution_id"] == entries[name]["execution_id"]
        assert again["components"][name]["cache_key"] == entries[name]["cache_key"]
    assert "already being served" in again["push"]["reason"]
