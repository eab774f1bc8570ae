"""ExampleGen: image folders -> TFRecord Examples with Apache Beam. config.py: its section;
component.py: the spec; executor.py: the Beam job (image_check.py: the per-file decode check);
present.py: its run-table line and report section."""
