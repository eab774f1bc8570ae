"""Pusher: copy a blessed model into the serving directory as a new version. config.py: its section;
component.py: the spec; executor.py: the push (journal.py: the push sequence and its repair;
version_registry.py: the version registry and the labels it gives models.config, written by
serving/model_config.py; versions.py: its lock and the
versions/rollback/promote commands); present.py: its run-table line and report sections."""
