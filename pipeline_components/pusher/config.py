"""The Pusher's config section (`pusher:` in pipeline.yaml)."""

from __future__ import annotations

import dataclasses

from pipeline_components.core.config import option


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
