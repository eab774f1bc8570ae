"""Beam RunInference over the exported SavedModel's `serving_default`, shared by the Evaluator
and the BulkInferrer (`transfer-pipeline batch-predict`). Not a component: a library that
components import (it imports Beam and TensorFlow, so `component.py` modules never import it).

- `handler.py`: `SignatureModelHandler`, a RunInference `ModelHandler` that loads the SavedModel
  with `tf.saved_model.load` and calls the signature on batches of encoded image bytes; an image
  the model rejects is isolated (the batch is halved until it is found) and reported, not fatal.
- `results.py`: RunInference's counter namespace, and a small JSON result written from inside a
  pipeline and read back by the driver. The jobs themselves are built and run by core/beam.py.
"""
