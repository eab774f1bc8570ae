"""A client for TF Serving (and `transfer-pipeline serve`) without TensorFlow.

    pip install ./serving/client_lite            # REST: the standard library only
    pip install './serving/client_lite[grpc]'    # gRPC too: grpcio and protobuf

    from transfer_pipeline_client import PredictionClient

    with PredictionClient("http://localhost:8501", "cats_dogs", labels="labels.txt") as client:
        for p in client.predict(["cat.jpg", open("dog.png", "rb").read()]):
            print(p.class_name, p.score, p.probabilities)

The same code is `serving.client_lite` inside the transfer-pipeline package, where
`serving.client` (with TensorFlow) builds on it: one PredictionClient API, one CLI.
"""

from .client import PredictionClient
from .common import (
    ClientError,
    ModelMetadata,
    Prediction,
    PredictionFailure,
    RawPrediction,
    ServingError,
    VersionStatus,
)

__all__ = [
    "ClientError",
    "ModelMetadata",
    "Prediction",
    "PredictionClient",
    "PredictionFailure",
    "RawPrediction",
    "ServingError",
    "VersionStatus",
]
