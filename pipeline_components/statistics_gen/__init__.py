"""StatisticsGen: Examples -> ExampleStatistics (statistics.json and plots), computed with Apache
Beam from the TFRecords. component.py is the spec; executor.py the Beam job; records.py reads a
tf.train.Example without importing TensorFlow (so Beam workers start in a second)."""
