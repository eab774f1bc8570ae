"""Orchestration: `transfer-pipeline run` (runner.py), the run table (summary.py) and report.html
(report.py). Drives components only through core/component.py's contract."""
