"""The Tuner: a KerasTuner search over the Trainer head's hyperparameters, trials on
FeatureGen's streamed features (or on images when features cannot be cached). config.py: its
section and the search space; component.py: the spec; executor.py: the run; present.py: its
run-table line and report section. Internals: search.py (oracles, budgets, chief and workers),
trials.py (what one trial trains), results.py (the output files), cost.py (the image-mode
slowdown), launch.py (groups: local processes or an Indexed Job's pods)."""
