"""StatisticsGen: Examples -> ExampleStatistics (statistics.json and plots), computed with Apache
Beam from the TFRecords. config.py: its section; component.py: the spec; executor.py: the Beam
job (records.py reads a tf.train.Example without importing TensorFlow, so Beam workers start in a
second); present.py: its run-table line and report section."""
