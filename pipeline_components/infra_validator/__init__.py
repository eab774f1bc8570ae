"""InfraValidator: load the candidate in a real model server and check its answers (spec:
component.py; executor.py)."""
