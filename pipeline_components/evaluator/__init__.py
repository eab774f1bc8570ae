"""Evaluator: score the exported model on the test split and bless it or not. config.py: its
section; component.py: the spec; executor.py: scoring and the gate (scoring.py, metrics.py,
plots.py); present.py: its run-table line and report section."""
