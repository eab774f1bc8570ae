"""Evaluator: score the exported model on the test split and bless it or not (spec: component.py;
scoring and gate: executor.py; metrics.py, plots.py)."""
