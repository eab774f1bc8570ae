"""transfer-pipeline: TFX-style image classification by transfer learning.

Layout (docs/ARCHITECTURE.md has the contracts, CONTRIBUTING.md how to add a component):

- `core/`: what every part shares and nothing else — config loading, the component contract
  (`core/component.py`), the registry and run order (`core/registry.py`), every artifact's file
  names and layout (`core/artifacts.py`), the TFRecord schema, file helpers, errors, plotting
  and report building blocks. It imports no component and no orchestration.
- one sub-package per component (`example_gen/`, `trainer/`, `evaluator/`, `infra_validator/`,
  `pusher/`): `component.py` is the spec (config section, inputs, outputs, cache key, summary,
  report section, CLI; light to import), `executor.py` does the work. A component imports
  `core/` and, for shared signatures, nothing of another component but `trainer.export`.
- `orchestration/`: the runner (`transfer-pipeline run`), the run table and report.html; it
  drives components only through the contract.
- `tools/`: the demo and the sample-data generator.
- `cli.py`: the `transfer-pipeline` console script.
"""

__version__ = "0.1.0"
