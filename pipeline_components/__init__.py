"""transfer-pipeline: TFX-style image classification by transfer learning.

Layout (docs/ARCHITECTURE.md has the contracts, CONTRIBUTING.md how to add a component):

- `core/`: what every part shares and nothing else — config loading, the component contract
  (`core/component.py`), the registry and run order (`core/registry.py`), the command-line
  grammar (`core/commandline.py`), every artifact's file names and layout (`core/artifacts.py`),
  the TFRecord schema, file helpers, errors, plotting and report building blocks. It imports no
  component and no orchestration.
- one sub-package per component (`example_gen/`, `statistics_gen/`, `schema_gen/`,
  `example_validator/`, `trainer/`, `evaluator/`, `infra_validator/`, `pusher/`,
  `bulk_inferrer/`): `config.py` its config section, `component.py` the spec (inputs, outputs,
  cache key, what its command takes; light to import), `executor.py` the work, `present.py` its
  run-table line and report section. A component imports `core/` and nothing of another
  component.
- `orchestration/`: the runner (`transfer-pipeline run`), the run table and report.html; it
  drives components only through the contract.
- `tools/`: the demo and the sample-data generator.
- `cli.py`: the `transfer-pipeline` console script.
"""

__version__ = "0.1.0"
