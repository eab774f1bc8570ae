"""The real Prometheus tools from Debian (`prometheus`, `promtool`, `prometheus-pushgateway`),
started by the tests on 127.0.0.1 with free ports and their data in tmp_path.

A test that needs one skips with one line naming the package when it is not installed
(`.ci/packages.sh` installs them for CI). Each server dies with the test process (Linux:
PR_SET_PDEATHSIG) and is stopped by its fixture.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_RULE = ROOT / "k8s/components/prometheus-operator/prometheusrule.yaml"
DASHBOARD = ROOT / "k8s/components/prometheus-operator/dashboards/transfer-pipeline.json"
PACKAGES = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "prometheus-pushgateway": "prometheus-pushgateway",
}


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install {PACKAGES[name]}: .ci/packages.sh)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the test process dies (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            last = check()
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


class Server:
    """A started tool: `.url`, `.proc`, stopped by `stop()` (SIGTERM, then SIGKILL)."""

    def __init__(self, argv: list[str], url: str, ready: str, log: Path) -> None:
        self.url, self.log = url, log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
            )
        try:
            wait_until(lambda: self._ready(ready), 30, f"{argv[0]} at {url}")
        except BaseException:
            self.stop()
            raise

    def _ready(self, path: str) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.proc.args[0]} exited: {self.log.read_text()[-2000:]}")
        return http_get(self.url + path, 2)[0] == 200

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@contextlib.contextmanager
def pushgateway(tmp: Path) -> Iterator[Server]:
    port = free_port()
    argv = [
        binary("prometheus-pushgateway"),
        f"--web.listen-address=127.0.0.1:{port}",
        # Debian's build persists to /var/lib/prometheus/pushgateway.data by default: every
        # test gateway would share (and write) one system file
        f"--persistence.file={tmp / 'pushgateway.data'}",
    ]
    server = Server(argv, f"http://127.0.0.1:{port}", "/-/ready", tmp / "pushgateway.log")
    try:
        yield server
    finally:
        server.stop()


def prometheus_config(jobs: dict[str, dict], interval: str = "1s") -> dict:
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [{"job_name": name, **job} for name, job in jobs.items()],
    }


class Prometheus(Server):
    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """An instant query through the HTTP API: the result vector (errors raise)."""
        params = {"query": expr, **({"time": str(at)} if at is not None else {})}
        status, body = http_get(f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}")
        answer = json.loads(body)
        if status != 200 or answer.get("status") != "success":
            raise AssertionError(f"query {expr!r}: HTTP {status}: {answer.get('error', body)}")
        return list(answer["data"]["result"])

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, check: Callable[[float], bool], timeout: float = 30) -> float:
        def ok() -> float | None:
            value = self.value(expr)
            return value if value is not None and check(value) else None

        found = wait_until(lambda: ok() is not None, timeout, f"{expr} to pass its check")
        assert found
        value = self.value(expr)
        assert value is not None
        return value


@contextlib.contextmanager
def prometheus(tmp: Path, jobs: dict[str, dict]) -> Iterator[Prometheus]:
    """A Prometheus scraping `jobs` every second, its TSDB in tmp."""
    port = free_port()
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(jobs)))
    argv = [
        binary("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
    ]
    server = Prometheus(argv, f"http://127.0.0.1:{port}", "/-/ready", tmp / "prometheus.log")
    try:
        yield server
    finally:
        server.stop()


def rule_groups() -> dict:
    """The rule file inside the shipped PrometheusRule (`groups:` of its spec)."""
    doc = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert doc["kind"] == "PrometheusRule"
    return {"groups": doc["spec"]["groups"]}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [binary("promtool"), *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )
