"""InfraValidator: load the candidate in a real model server and check its answers. config.py: its
section; component.py: the spec; executor.py: the server and the checks; present.py: its
run-table line."""
