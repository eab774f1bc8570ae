"""ClassCounter: counts the examples of each class in every split, and fails a run when a class
is nearly empty. CONTRIBUTING.md's worked example of a component package, registered by
tests/test_component_contract.py (config.py, component.py, executor.py, present.py)."""
