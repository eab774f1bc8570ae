"""Pusher: copy a blessed model into the serving directory as a new version. config.py: its section;
component.py: the spec; executor.py: the push (versions.py: the version registry and its
commands); present.py: its run-table line and report sections."""
