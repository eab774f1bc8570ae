"""Ratio benchmarks: the project's way vs what a user would otherwise do, on the same data.

`python -m benchmarks [--quick]` runs them all and writes benchmarks/results.{json,md};
`python -m benchmarks.<name> [--quick]` runs one (example_gen, input_pipeline, training, serving).
"""
