"""Trainer: Examples -> a SavedModel with its own preprocessing. config.py: its section;
component.py: the spec; executor.py picks the runtime and writes the artifacts; training.py, the
one training skeleton; runtime.py, fit.py, distributed.py, steps.py, cluster.py: one process or
a multi-worker group; plan.py, datasets.py, inputs.py, augment.py, model.py, export.py,
callbacks.py, checkpoints.py, plots.py; present.py: its run-table line and report section."""
