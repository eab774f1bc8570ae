"""transfer-pipeline: TFX-style image classification by transfer learning.

Components (each a thin spec over one executor function, each runnable alone):
ExampleGen (Beam) -> Trainer (Keras) -> Evaluator -> InfraValidator -> Pusher.
"""

__version__ = "0.1.0"
