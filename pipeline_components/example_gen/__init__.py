"""ExampleGen: image folders -> TFRecord Examples with Apache Beam (spec: component.py; the Beam
job: executor.py; per-file decode check: image_check.py)."""
