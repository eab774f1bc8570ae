"""SchemaGen: ExampleStatistics -> Schema (schema.yaml, the format is core/data_schema.py).
config.py: its section; component.py: the spec; executor.py: which schema, and its inference from
statistics; present.py: its run-table line and report section."""
