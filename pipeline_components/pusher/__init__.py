"""Pusher: copy a blessed model into the serving directory as a new version (spec: component.py;
executor.py)."""
