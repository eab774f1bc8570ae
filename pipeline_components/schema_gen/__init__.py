"""SchemaGen: ExampleStatistics -> Schema (schema.yaml). component.py is the spec; executor.py
infers a schema from statistics (the format is core/data_schema.py)."""
