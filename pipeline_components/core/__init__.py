"""Shared core: config, the component contract and registry, artifact layout, TFRecord schema,
file helpers, errors, plotting and report HTML helpers. Imports no component, no orchestration,
and (at import time) neither TensorFlow nor Beam, so `serving/` and `--help` stay light."""
