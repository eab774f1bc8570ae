"""pipeline.yaml's `monitoring:` section: where a run's Prometheus metrics go
(orchestration/monitoring, docs/monitoring.md).

    monitoring:
      pushgateway: http://pushgateway.monitoring:9091   # a Prometheus Pushgateway, or
      textfile: /var/lib/node_exporter/textfile/transfer_pipeline.prom   # node-exporter's
      timeout_seconds: 5       # one push (or write) may take this long; then a warning
      job: transfer_pipeline   # the Pushgateway job (the `job` label of every run metric)

Neither set: nothing is published. It says where metrics go, never what a run computes: no
cache key includes it. Light to import (no prometheus_client): the config loader reads it for
every pipeline.yaml.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from pipeline_components.core.config import option

# http(s)://host[:port][/path prefix], as prometheus_client's push_to_gateway takes it
GATEWAY_URL = re.compile(r"https?://[^\s/:?#]+(:\d{1,5})?(/[^\s?#]*)?")
# a Prometheus label value the Pushgateway accepts in a grouping key's URL path
JOB_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclasses.dataclass
class MonitoringConfig:
    pushgateway: str | None = option(
        None, doc="Prometheus Pushgateway URL (http://host:9091) the run's metrics are pushed to"
    )
    textfile: str | None = option(
        None, doc="node-exporter textfile (*.prom) the run's metrics are written to, atomically"
    )
    timeout_seconds: float = option(
        5.0, gt=0, le=120, doc="how long one push or write may take before it is given up"
    )
    job: str = option("transfer_pipeline", doc="the Pushgateway job name (label `job`)")
    history_runs: int = option(
        500, ge=1, le=100_000, doc="newest run records read for the values kept across runs"
    )

    def validate(self, fail: Any) -> None:
        if self.pushgateway is not None and not GATEWAY_URL.fullmatch(self.pushgateway):
            url = self.pushgateway
            fail("pushgateway", "an http:// or https:// URL such as http://host:9091", url)
        path = self.textfile
        if path is not None and not path.endswith(".prom"):
            # node-exporter's textfile collector reads *.prom files only
            fail("textfile", "a path ending in .prom (node-exporter reads only those)", path)
        if path is not None and "://" in path:
            fail("textfile", "a local path (node-exporter reads a local directory)", path)
        if not JOB_NAME.fullmatch(self.job):
            fail("job", "letters, digits and _ (not starting with a digit)", self.job)

    @property
    def enabled(self) -> bool:
        return self.pushgateway is not None or self.textfile is not None
