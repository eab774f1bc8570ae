"""BulkInferrer: label a folder of images (or ExampleGen TFRecords) with a SavedModel on Beam
(`transfer-pipeline batch-predict`; in a pipeline run, after the Pusher when
`batch_predict.input` is set)."""
