"""ExampleValidator: ExampleStatistics + Schema (+ the statistics behind the served model) ->
ExampleAnomalies. A `fail` anomaly stops the run before the Trainer. config.py: its section;
component.py: the spec; executor.py: the checks; present.py: its run-table line, alerts and
report section."""
