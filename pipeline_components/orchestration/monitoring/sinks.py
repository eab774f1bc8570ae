"""Where a run's metrics go: a Prometheus Pushgateway, a node-exporter textfile, or both.

- Pushgateway (`monitoring.pushgateway`): each group (run_metrics.py) is PUT as its own
  grouping key with prometheus_client's `push_to_gateway`, replacing what that key held.
  Scrape the gateway with `honor_labels: true` so `job`, `pipeline` and `component` are kept.
- textfile (`monitoring.textfile`): every group in one file, the grouping key's labels written
  into each line, written with prometheus_client's `write_to_textfile` (a temporary sibling
  renamed into place: node-exporter never reads half a file).

A sink that is down never fails the run: everything a sink does runs in a thread given
`monitoring.timeout_seconds` in all; a sink that fails or takes longer is given up with one
warning line naming it, and the next sink is tried.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from pipeline_components.orchestration.monitoring.run_metrics import (
    CATALOG,
    PREFIX,
    Group,
    Sample,
)
from pipeline_components.orchestration.monitoring.settings import MonitoringConfig

log = logging.getLogger(__name__)


class _Samples:
    """A prometheus_client collector of samples, one gauge family per name."""

    def __init__(self, samples: list[tuple[dict[str, str], Sample]]) -> None:
        self.samples = samples

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        families: dict[str, tuple[Any, list[str]]] = {}
        for extra, sample in self.samples:
            labels = {**extra, **dict(sample.labels)}
            if sample.name not in families:
                names = list(labels)
                help_text = CATALOG[sample.name][0]
                family = GaugeMetricFamily(PREFIX + sample.name, help_text, labels=names)
                families[sample.name] = (family, names)
            family, names = families[sample.name]
            family.add_metric([labels[k] for k in names], sample.value)
        yield from (family for family, _ in families.values())


def registry_of(samples: list[tuple[dict[str, str], Sample]]) -> Any:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Samples(samples))
    return registry


def push(settings: MonitoringConfig, groups: list[Group]) -> None:
    """PUT each group to the Pushgateway (its grouping key: `job` and the group's key)."""
    from prometheus_client import push_to_gateway

    assert settings.pushgateway is not None
    for group in groups:
        push_to_gateway(
            settings.pushgateway,
            job=settings.job,
            registry=registry_of([({}, s) for s in group.samples]),
            grouping_key=group.key,
            timeout=settings.timeout_seconds,
        )


def write_textfile(settings: MonitoringConfig, groups: list[Group]) -> None:
    """Every group in one *.prom file, replaced atomically."""
    from prometheus_client import write_to_textfile

    assert settings.textfile is not None
    samples = [(g.key, s) for g in groups for s in g.samples]
    write_to_textfile(settings.textfile, registry_of(samples))


def bounded(fn: Callable[[], None], seconds: float) -> None:
    """Run fn in a daemon thread for at most `seconds`; its exception, or TimeoutError."""
    failure: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as e:  # reported to the caller
            failure.append(e)

    thread = threading.Thread(target=target, name="monitoring-sink", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {seconds:g} s")
    if failure:
        raise failure[0]


def _why(e: BaseException, seconds: float) -> str:
    reason = getattr(e, "reason", None)  # urllib's URLError: the socket's error
    if isinstance(e, TimeoutError) or isinstance(reason, TimeoutError):  # ours or the socket's
        return f"no answer within {seconds:g} s (monitoring.timeout_seconds)"
    text = str(reason if reason is not None else e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def publish(
    settings: MonitoringConfig, push_groups: list[Group], file_groups: list[Group]
) -> list[str]:
    """Send the groups to the configured sinks; returns the warnings (each logged once)."""
    warnings = []
    sinks: list[tuple[str, str | None, Callable[[], None]]] = [
        ("push the run's metrics to", settings.pushgateway, lambda: push(settings, push_groups)),
        (
            "write the run's metrics to",
            settings.textfile,
            lambda: write_textfile(settings, file_groups),
        ),
    ]
    for what, where, fn in sinks:
        if where is None:
            continue
        try:
            bounded(fn, settings.timeout_seconds)
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt | SystemExit):
                raise
            why = _why(e, settings.timeout_seconds)
            line = f"monitoring: could not {what} {where}: {why} (the run goes on as it was)"
            log.warning("%s", line)
            warnings.append(line)
    return warnings
