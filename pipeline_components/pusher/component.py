"""The Pusher's spec: Model + ModelBlessing (+ InfraBlessing) -> PushedModel, a new version under
`<serving_dir>/<model_name>/` that TF Serving picks up.

    transfer-pipeline push --model T/saved_model --blessing E/blessing.json \
        --serving-dir S --model-name M [--infra-blessing I/infra_blessing.json] \
        [--keep-versions 3] [--label stable|canary] [--allow-contract-change] [--output P]

It runs in every pipeline run (never cached): it pushes nothing when the model is not blessed,
is already the newest served version or was rolled back, so a re-run on unchanged data pushes
nothing; nor when its serving contract (labels, signatures, input: core/contract.py) differs
from the newest served version's, unless `allow_contract_change` (then recorded). The check is
here, not in the Evaluator, because the Pusher is the one step that runs every time and holds
the model's registry lock: it compares with what is served at the moment of the push. It
labels what it pushes `stable` or `canary` in `<serving_dir>/models.config` (pusher/versions.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
from typing import Any

from pipeline_components.core import artifacts
from pipeline_components.core.artifacts import Artifact
from pipeline_components.core.component import Component, ExecutionContext, Input
from pipeline_components.core.config import PipelineConfig, option, section_from_dict
from pipeline_components.core.errors import PipelineError
from pipeline_components.core.reporting import e


@dataclasses.dataclass
class PusherConfig:
    keep_versions: int = option(
        3, ge=1, le=1000, doc="versions kept (all loaded by TF Serving); older unlabelled ones go"
    )
    version_label: str = option(
        "stable",
        choices=("stable", "canary"),
        doc="label of a pushed version in models.config; `transfer-pipeline promote` makes a "
        "canary stable",
    )
    allow_contract_change: bool = option(
        False,
        key=False,
        doc="push a model whose labels, signatures or input differ from the newest served "
        "version's (recorded in push.json and the version registry); otherwise refused",
    )


class Pusher(Component):
    name = "Pusher"
    description = "copy a blessed model to the serving directory"
    command = "push"
    config_section = "pusher"
    config_class = PusherConfig
    inputs = {
        "model": Input(artifacts.MODEL),
        "blessing": Input(artifacts.MODEL_BLESSING),
        "infra_blessing": Input(artifacts.INFRA_BLESSING, optional=True),
    }
    outputs = {"push": artifacts.PUSHED_MODEL}
    cacheable = False  # what is served can change between runs; pushing is idempotent instead
    task_outputs = {"pushed": bool, "version": int}  # version 0: nothing pushed

    def external_inputs(self, ctx: ExecutionContext) -> dict[str, Any]:
        return {"serving_dir": ctx.pipeline.serving_dir, "model_name": ctx.pipeline.model_name}

    def run(self, ctx: ExecutionContext) -> dict:
        from pipeline_components.pusher import executor

        try:
            return executor.run_pusher(
                ctx.input_uri("model"),
                ctx.input_uri("blessing"),
                ctx.output_dir,
                ctx.config,
                serving_dir=ctx.pipeline.serving_dir,
                model_name=ctx.pipeline.model_name,
                infra_blessing_path=ctx.optional_uri("infra_blessing"),
                run_id=ctx.run_id,
            )
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS):
                raise PipelineError(
                    f"cannot write to {ctx.pipeline.serving_dir}: {e.strerror}"
                ) from None
            raise

    def recover(self, pipeline: Any) -> list[dict]:
        """Finish or roll back a push a dead run left, and remove its leftovers, under the
        model's registry lock (pusher/journal.py). A registry held by a live push elsewhere, or
        a serving_dir this process cannot write, is left for the Pusher itself."""
        from pipeline_components.core import fsutil, locking
        from pipeline_components.pusher.journal import describe
        from pipeline_components.pusher.versions import ModelVersions

        versions = ModelVersions(pipeline.serving_dir, pipeline.model_name)
        if not (versions.exists() or fsutil.isdir(versions.base_path)):
            return []
        try:
            with versions.locked("transfer-pipeline gc", wait_s=5.0):
                return [{**item, "text": describe(item)} for item in versions.repaired]
        except (locking.PipelineLocked, OSError) as e:
            return [{"action": "not_repaired", "text": f"serving_dir not checked: {e}"}]

    def summary(self, entry: dict) -> str:
        r = entry.get("result") or {}
        labels = " ".join(f"{k}={v}" for k, v in (r.get("labels") or {}).items())
        labels = f" [{labels}]" if labels else ""
        repaired = "".join(f"; {_repair_note(x)}" for x in r.get("repaired", []))
        if r.get("pushed"):
            label = r.get("label", "stable")
            return f"pushed version {r['version']} as {label} -> {r['path']}{labels}{repaired}"
        return f"not pushed: {r.get('reason', '')}{labels}{repaired}"

    def record_fields(self, entry: dict) -> dict:
        r = entry.get("result")
        if not r:
            return {}
        fields: dict[str, Any] = {"push": r}
        if "labels" in r:
            keys = ("labels", "served_versions", "rolled_back", "models_config")
            fields["serving"] = {k: r[k] for k in keys}
        if "contract" in r:
            fields["contract"] = r["contract"]
        return fields

    def report_html(self, entry: dict, record: dict) -> str:
        r = entry.get("result") or {}
        return _contract_html(r) + _serving_html(r)

    def main(self, argv: list[str]) -> int:
        p = argparse.ArgumentParser(
            prog="transfer-pipeline push",
            description="Copy a blessed model to the serving directory.",
        )
        p.add_argument("--model", required=True, help="the exported saved_model/ directory")
        p.add_argument("--blessing", required=True, help="the Evaluator's blessing.json")
        p.add_argument("--serving-dir", required=True, help="TF Serving's model root")
        p.add_argument("--model-name", required=True)
        p.add_argument("--infra-blessing", help="the InfraValidator's infra_blessing.json")
        p.add_argument("--keep-versions", type=int, default=PusherConfig().keep_versions)
        p.add_argument(
            "--label",
            choices=("stable", "canary"),
            default=PusherConfig().version_label,
            help="push as the stable version or as a canary (models.config version labels)",
        )
        p.add_argument(
            "--allow-contract-change",
            action="store_true",
            help="push even when labels, signatures or input differ from the newest served "
            "version (recorded)",
        )
        p.add_argument("--output", default=".", help="where push.json is written (default: .)")
        args = p.parse_args(argv)
        config = section_from_dict(
            PusherConfig,
            {
                "keep_versions": args.keep_versions,
                "version_label": args.label,
                "allow_contract_change": args.allow_contract_change,
            },
            "pusher",
            "command line",
        )
        pipeline = PipelineConfig(
            serving_dir=args.serving_dir, model_name=args.model_name, sections={"pusher": config}
        )
        inputs: dict[str, Artifact | None] = {
            "model": Artifact(artifacts.MODEL, args.model),
            "blessing": Artifact(artifacts.MODEL_BLESSING, args.blessing),
            "infra_blessing": (
                Artifact(artifacts.INFRA_BLESSING, args.infra_blessing)
                if args.infra_blessing
                else None
            ),
        }
        result = self.run_standalone(ExecutionContext(pipeline, config, inputs, args.output))
        for text in result.get("repaired_text", []):
            print(f"repaired: {text}")
        if result["pushed"]:
            print(f"pushed version {result['version']} as {args.label} to {result['path']}")
        else:
            print(f"not pushed: {result['reason']}")
        return 0


def _repair_note(item: dict) -> str:
    """A few words for what the push's repair did (pusher/journal.py says it in full)."""
    if item.get("action") == "finished":
        return f"finished the interrupted push of version {item['version']}"
    if item.get("action") == "rolled_back":
        return f"rolled back the interrupted push of version {item['version']}"
    if item.get("action") == "models_config":
        return "rewrote models.config from the registry"
    return f"removed {len(item.get('removed', []))} leftover(s) of interrupted pushes"


def _serving_html(r: dict) -> str:
    if "labels" not in r:
        return ""
    labels = "".join(
        f"<tr><th>{e(k)}</th><td class=num>{e(v)}</td></tr>" for k, v in r["labels"].items()
    )
    rolled = "".join(
        f"<tr><td class=num>{e(x['version'])}</td><td>{e(x.get('rolled_back_at'))}</td>"
        f"<td><code>{e(str(x.get('fingerprint'))[:12])}</code></td>"
        f"<td>{e(x.get('reason') or '')}</td></tr>"
        for x in r.get("rolled_back", [])
    )
    rolled_table = (
        "<p>Rolled back (never pushed again):</p><table><tr><th>version</th><th>at</th>"
        f"<th>fingerprint</th><th>reason</th></tr>{rolled}</table>"
        if rolled
        else "<p>No version was rolled back.</p>"
    )
    served = ", ".join(map(str, r.get("served_versions", []))) or "none"
    repaired = "".join(f"<li>{e(text)}</li>" for text in r.get("repaired_text", []))
    repaired = f"<p>Repaired before pushing:</p><ul>{repaired}</ul>" if repaired else ""
    return (
        f"<h2>Serving</h2>{repaired}<p>served versions: {e(served)}; labels in "
        f"<code>{e(r.get('models_config', ''))}</code>:</p><table>{labels}</table>"
        f"{rolled_table}"
    )


def _contract_html(r: dict) -> str:
    c = r.get("contract")
    if not c:
        return ""
    if c.get("compared_with") is None:
        return "<h2>Serving contract</h2><p>No version served yet: nothing to compare.</p>"
    head = f"<h2>Serving contract</h2><p>Compared with served version {e(c['compared_with'])}: "
    if not c.get("differences"):
        return head + "labels, signatures and input unchanged.</p>"
    verdict = (
        "<b>changed, pushed on purpose</b> (pusher.allow_contract_change)"
        if c.get("allowed")
        else "<b>changed: not pushed</b>"
    )
    items = "".join(f"<li>{e(d)}</li>" for d in c["differences"])
    return head + f"{verdict}</p><ul>{items}</ul>"


COMPONENT = Pusher()
