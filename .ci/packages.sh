#!/usr/bin/env bash
# System packages the test suite needs besides Python: the real Prometheus tools from Debian
# (tests/prometheus_tools.py starts `prometheus`, `promtool` and `prometheus-pushgateway` on
# 127.0.0.1; without them those tests skip). Run as root before `make test`; a no-op when the
# tools are already there. Chromium is not needed: it only drew docs/images/monitoring-*.png.
set -euo pipefail
if command -v prometheus >/dev/null && command -v promtool >/dev/null \
    && command -v prometheus-pushgateway >/dev/null; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus prometheus-pushgateway
