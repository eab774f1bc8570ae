"""FeatureGen: the frozen backbone's features of the train and validation splits as an artifact
(Features), computed once by a Beam job and reused by every run whose only changes are in the
head. config.py: its section; component.py: the spec; executor.py: the run; present.py: its
run-table line and report section. Internals: writer.py (the Beam job, RunInference over
extractor.py's backbone), files.py (the format, the manifest, the key material), stream.py (the
head's tf.data input from the files, for the Trainer and the Tuner)."""
