"""Draws docs/images/monitoring-runs.png and monitoring-serving.png: Prometheus's own graph page
over the stack of tests/test_monitoring.py (a real Pushgateway, Prometheus and local server),
taken with headless Chromium from Debian (`apt-get install chromium`). Not a test; run by hand:

    PYTHONPATH=. python tests/monitoring_screenshots.py [OUT_DIR]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_monitoring import (  # noqa: E402
    PIPELINE,
    monitoring_stack,
    predict,
    run,
)

QUERIES = {
    "monitoring-runs.png": [
        f'transfer_pipeline_run_success{{pipeline="{PIPELINE}"}}',
        f'transfer_pipeline_model_accuracy{{pipeline="{PIPELINE}"}}',
    ],
    "monitoring-serving.png": [
        "sum by (entrypoint) (rate(transfer_pipeline_serving_requests_total[1m]))",
        "histogram_quantile(0.99, sum by (le, entrypoint) "
        "(rate(:tensorflow:serving:request_latency_bucket[1m]))) / 1e6",
    ],
}
CHROMIUM = [
    "chromium",
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1400,1720",
    "--virtual-time-budget=20000",
]


def graph_url(base: str, queries: list[str], minutes: int) -> str:
    params = {}
    for i, expr in enumerate(queries):
        params.update(
            {
                f"g{i}.expr": expr,
                f"g{i}.tab": "0",
                f"g{i}.range_input": f"{minutes}m",
                f"g{i}.show_exemplars": "0",
            }
        )
    return f"{base}/graph?{urllib.parse.urlencode(params)}"


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, monitoring_stack(Path(tmp)) as s:
        started = time.monotonic()
        # traffic for a few minutes, and runs served from the cache meanwhile
        while time.monotonic() - started < 180:
            predict(s.server, s.data, grpc=2, rest=1)
            if int(time.monotonic() - started) % 60 < 2:
                run(s.config)
            time.sleep(1.0)
        time.sleep(3)  # a last scrape
        for name, queries in QUERIES.items():
            with tempfile.TemporaryDirectory() as profile:
                argv = [
                    *CHROMIUM,
                    f"--user-data-dir={profile}",
                    f"--screenshot={out / name}",
                    graph_url(s.prom.url, queries, 6),
                ]
                subprocess.run(argv, check=True, capture_output=True, timeout=120)
            print(f"wrote {out / name}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parents[1] / "docs/images")
