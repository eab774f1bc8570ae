"""Tools around the pipeline: the offline demo (demo.py) and the sample-data generator."""
