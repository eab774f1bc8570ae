"""Trainer: Examples -> a SavedModel with its own preprocessing. config.py: its section;
component.py: the spec; executor.py: the training run (model.py, inputs.py, augment.py,
export.py, callbacks.py, checkpoints.py, plots.py, cluster.py); present.py: its run-table line
and report section."""
