"""ExampleValidator: ExampleStatistics + Schema (+ the statistics behind the served model) ->
ExampleAnomalies. component.py is the spec; executor.py the checks. A `fail` anomaly stops the run
before the Trainer."""
