"""ExampleGen: image folders -> TFRecord Examples with Apache Beam. config.py: its section;
component.py: the spec; executor.py: the driver, over layout.py (the listing, its checks and the
stable hashes that place a file), shards.py (the shard plan and working files), convert.py (one
file to an Example, image_check.py its decode check; the Beam job), duplicates.py (leakage
across splits) and stats.py (stats.json); present.py: its run-table line and report section."""
