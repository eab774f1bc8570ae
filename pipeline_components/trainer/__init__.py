"""Trainer: Examples -> a SavedModel with its own preprocessing (spec: component.py; training run:
executor.py; model.py, inputs.py, augment.py, export.py, callbacks.py, checkpoints.py, plots.py)."""
