"""BulkInferrer: label a folder of images (or ExampleGen TFRecords) with a SavedModel on Beam
(`transfer-pipeline batch-predict`; in a pipeline run, after the Pusher when
`batch_predict.input` is set). config.py: its section; component.py: the spec; executor.py: the
Beam job; present.py: its run-table line and report section."""
