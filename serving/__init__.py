"""Serving: a gRPC client for TF Serving and a TF-Serving-compatible local server.

- `serving.client`: `PredictionClient` and `transfer-pipeline predict`;
- `serving.server`: `start_server` and `transfer-pipeline serve` over `<base_path>/<version>/`;
- `serving.servables`: version discovery, loading and the availability-preserving policy;
- `serving.batching`: TF Serving's dynamic batching (`batching_parameters.txt`);
- `serving.model_config`: TF Serving's `models.config` (ModelServerConfig text proto), read by
  the server and written for the Pusher: the one module that touches that file.

Only the protos and stubs of `tensorflow-serving-api` are used on the wire, so the client works
unchanged against the official `tensorflow/serving` image.
"""
