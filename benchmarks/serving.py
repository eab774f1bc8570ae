"""Serving overhead and throughput: the local TF-Serving-compatible server over gRPC.

    python -m benchmarks.serving [--quick] [--output-dir DIR]

Models, each exported by the Trainer's `export_saved_model` (`serving_default`: encoded JPEG
bytes -> decode, resize, model; random weights: no download here, same compute as ImageNet):
- mobilenet_v2_035_96 (primary, judged against the goal): frozen keras.applications
  MobileNetV2 alpha 0.35 at 96x96 + GlobalAveragePooling + Dense(1, sigmoid), the smallest
  realistic transfer-learning backbone, ~5 ms per image in-process on 2 cores;
- mobilenet_v2_100_224: MobileNetV2 alpha 1.0 at 224x224, the standard backbone at the input
  size of the default config's model (VGG19 at 224 costs ~10x more again);
- small_cnn_64: 3 conv layers at 64x64 (~1 ms), which shows the fixed per-request cost.

1. Latency, one client, single-image requests: `PredictionClient.predict` against
   `transfer-pipeline serve` in its own process (as deployed) vs calling the loaded SavedModel's
   `serving_default` in-process on the same bytes, interleaved request by request, with the same
   TensorFlow thread settings on both sides (thread spinning off, the server's default).
   Also interleaved, to say where the difference goes: the server's own Predict handler called
   in-process on a serialized request (request parsing, the limits checks, tensor conversion,
   the model, the response; everything but gRPC and its threads), and GetModelStatus over gRPC
   (the bare RPC: client, gRPC, the server's event loop; no TensorFlow). And the same request
   over TF Serving's REST API of the same server (issue 30), from the TF-free client
   (serving.client_lite: a JSON body with the image in base64, one keep-alive connection).
   p50/p99 per variant; the p50 ratio per round (median reported). Goal (issue 19): <= 1.15
   for gRPC; REST is reported beside it (no goal).
2. Throughput, 8 concurrent clients (threads, one channel each) sending single-image requests
   for a fixed time, server batching off vs on with the shipped
   serving/config/batching_parameters.txt (the k8s ConfigMap's copy). Alternating rounds;
   median requests/s and the ratio per round. Goal (issue 19): on >= 1.3x off, or the README
   says when to enable batching and the shipped parameters do no harm (on >= 0.95x off).
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

import numpy as np

from benchmarks import common
from benchmarks.headline import Benchmark, claim
from benchmarks.headline import rounds as _rounds
from benchmarks.headline import times as _x

NAME = "serving"
MODELS = {"mobilenet_v2_100_224": 224, "mobilenet_v2_035_96": 96, "small_cnn_64": 64}
PRIMARY = "mobilenet_v2_035_96"
SHIPPED_BATCHING = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "serving", "config", "batching_parameters.txt",
)  # fmt: skip
GOAL_P50_RATIO = 1.15
GOAL_BATCHING_SPEEDUP = 1.3
NO_HARM = 0.95


def shipped_batching() -> dict:
    """The shipped batching_parameters.txt as {field: value} (the fields the server honours)."""
    import dataclasses

    from serving.batching import load_batching_parameters

    params = load_batching_parameters(SHIPPED_BATCHING)
    return {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in dataclasses.asdict(params).items()
        if v != ()
    }


CLIENTS = 8


def build_model(name: str):
    import keras

    size = MODELS[name]
    inputs = keras.Input((size, size, 3))
    if name.startswith("mobilenet"):
        alpha = 1.0 if name.startswith("mobilenet_v2_100") else 0.35
        base = keras.applications.MobileNetV2(
            input_shape=(size, size, 3), alpha=alpha, include_top=False, weights=None
        )
        base.trainable = False
        x = base(keras.applications.mobilenet_v2.preprocess_input(inputs), training=False)
        x = keras.layers.GlobalAveragePooling2D()(x)
    else:
        x = keras.layers.Rescaling(1.0 / 255)(inputs)
        for filters in (16, 32, 64):
            x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
            x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs)


def export_models(root: str, names=tuple(MODELS)) -> str:
    """Export the models under root/<name>/1 and write root/models.config; returns its path."""
    from pipeline_components.trainer.export import export_saved_model

    entries = []
    for name, size in ((n, MODELS[n]) for n in names):
        export_saved_model(build_model(name), f"{root}/{name}/1", ["cat", "dog"], (size, size))
        entries.append(f'  config {{ name: "{name}" base_path: "{root}/{name}" }}')
    path = os.path.join(root, "models.config")
    with open(path, "w") as f:
        f.write("model_config_list {\n" + "\n".join(entries) + "\n}\n")
    return path


def make_images(count: int) -> list[bytes]:
    """Photo-like 160x120 JPEGs (~8 KB), as a camera thumbnail would send."""
    from pipeline_components.tools.sample_data import draw_shape

    rng = np.random.default_rng(0)
    images = []
    for i in range(count):
        buffer = io.BytesIO()
        draw_shape(("circles", "squares")[i % 2], rng, (160, 120), photo_like=True).save(
            buffer, "JPEG", quality=90
        )
        images.append(buffer.getvalue())
    return images


class ServerProcess:
    """`transfer-pipeline serve` in a subprocess, as the InfraValidator and users run it."""

    def __init__(self, work: str, config: str, batching: dict | None):
        self.port_file = os.path.join(work, f"port-{'on' if batching else 'off'}")
        command = [
            sys.executable, "-m", "pipeline_components.cli", "serve",
            "--model-config-file", config, "--port", "0", "--port-file", self.port_file,
            "--file-system-poll-wait-seconds", "0", "--rest-api-port", "auto",
            "--rest-api-port-file", self.port_file + "-rest",
        ]  # fmt: skip
        if batching:
            params = os.path.join(work, "batching_parameters.txt")
            with open(params, "w") as f:
                f.writelines(f"{k} {{ value: {v} }}\n" for k, v in batching.items())
            command += ["--enable-batching", "--batching-parameters-file", params]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "LOGLEVEL": "WARNING"}
        self.proc = subprocess.Popen(command, env=env)

    def rest_url(self) -> str:
        with open(self.port_file + "-rest") as f:
            return f"http://127.0.0.1:{f.read().strip()}"

    def wait(self, timeout: float = 300.0) -> str:
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.port_file):
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.1)
        with open(self.port_file) as f:
            return f"127.0.0.1:{f.read().strip()}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def percentile(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q))


def latency_variants(
    model_dir: str, client, images: list[bytes], rest_client=None
) -> dict[str, Callable]:
    """One single-image request each way: in-process, through the server's handler
    in-process (its requests serialized beforehand), over gRPC, a no-op RPC and (given a REST
    client) over REST."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from serving.client import string_tensor
    from serving.model_config import ModelConfig
    from serving.servables import ModelManager
    from serving.services import PredictionService

    fn = tf.saved_model.load(model_dir).signatures["serving_default"]
    name, base = os.path.basename(os.path.dirname(model_dir)), os.path.dirname(model_dir)
    manager = ModelManager([ModelConfig(name=name, base_path=base)])
    manager.poll()
    service = PredictionService(manager)

    def request_bytes(image: bytes) -> bytes:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        request.model_spec.signature_name = "serving_default"
        request.inputs["images"].CopyFrom(string_tensor([image]))
        return request.SerializeToString()

    serialized = {image: request_bytes(image) for image in images}

    def in_process(image):
        return {k: v.numpy() for k, v in fn(images=np.array([image], dtype=object)).items()}

    def handler(image):
        request = predict_pb2.PredictRequest.FromString(serialized[image])
        return service.predict(request).SerializeToString()

    variants = {
        "in_process": in_process,
        "handler": handler,
        "grpc": lambda image: client.predict([image]),
        "noop_rpc": lambda image: client.status(),
    }
    if rest_client is not None:
        variants["rest"] = lambda image: rest_client.predict([image])
    return variants


def latency_rounds(
    model_dir: str, client, images: list[bytes], rounds: int, requests: int, rest_client=None
):
    """latency_variants interleaved one by one (so all see the same load from other
    processes); seconds per request, per variant and round."""
    variants = latency_variants(model_dir, client, images, rest_client)
    for call in variants.values():  # warm both paths
        for image in images[:10]:
            call(image)
    samples: dict[str, list[list[float]]] = {name: [] for name in variants}
    for _ in range(rounds):
        times: dict[str, list[float]] = {name: [] for name in variants}
        for i in range(requests):
            for name, call in variants.items():
                start = time.perf_counter()
                call(images[i % len(images)])
                times[name].append(time.perf_counter() - start)
        for name in variants:
            samples[name].append(times[name])
    return samples


def summarize_latency(samples: dict[str, list[list[float]]]) -> dict:
    out = {}
    for name, rounds in samples.items():
        pooled = [t for r in rounds for t in r]
        out[name] = {
            "p50_ms": round(percentile(pooled, 50) * 1e3, 3),
            "p99_ms": round(percentile(pooled, 99) * 1e3, 3),
            "requests_per_s": round(len(pooled) / sum(pooled), 1),
            "round_p50_ms": [round(percentile(r, 50) * 1e3, 3) for r in rounds],
        }
    ratios = [
        percentile(g, 50) / percentile(i, 50)
        for g, i in zip(samples["grpc"], samples["in_process"], strict=True)
    ]
    out["p50_ratio_grpc_over_in_process"] = round(statistics.median(ratios), 3)
    out["p50_ratio_per_round"] = [round(r, 3) for r in ratios]
    if "rest" in samples:
        rest = [
            percentile(r, 50) / percentile(i, 50)
            for r, i in zip(samples["rest"], samples["in_process"], strict=True)
        ]
        out["p50_ratio_rest_over_in_process"] = round(statistics.median(rest), 3)
        out["p50_ratio_rest_per_round"] = [round(r, 3) for r in rest]
    out["p50_overhead_ms"] = round(out["grpc"]["p50_ms"] - out["in_process"]["p50_ms"], 3)
    if "handler" in out:
        # where the overhead goes: the handler's Python around the model, the bare RPC, and
        # what is left (the client's request/response work, gRPC's thread hops, the bytes)
        p50 = {k: out[k]["p50_ms"] for k in ("in_process", "handler", "grpc", "noop_rpc")}
        handler = p50["handler"] - p50["in_process"]
        out["overhead_ms"] = {
            "handler_python": round(handler, 3),
            "bare_rpc": p50["noop_rpc"],
            "rest": round(p50["grpc"] - p50["in_process"] - handler - p50["noop_rpc"], 3),
        }
    return out


def throughput(target: str, model: str, images: list[bytes], seconds: float) -> float:
    """Requests/s of CLIENTS closed-loop clients sending single images for `seconds`."""
    from serving.client import PredictionClient

    clients = [PredictionClient(target, model, retries=5) for _ in range(CLIENTS)]
    for client in clients:
        client.predict([images[0]])
    counts = [0] * CLIENTS
    errors: list[Exception] = []
    start_gate = threading.Barrier(CLIENTS + 1)
    stop_at = [0.0]

    def loop(i):
        start_gate.wait()
        n = 0
        while time.perf_counter() < stop_at[0]:
            try:
                clients[i].predict([images[(i + n) % len(images)]])
                n += 1
            except Exception as e:
                errors.append(e)
        counts[i] = n

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    start_gate.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    for client in clients:
        client.close()
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, e.g. {errors[0]}")
    return sum(counts) / elapsed


def run(
    quick: bool = False,
    rounds: int | None = None,
    requests: int | None = None,
    throughput_rounds: int | None = None,
    throughput_seconds: float | None = None,
    models: tuple[str, ...] | None = None,
) -> dict:
    """Measure; returns the results dict (main() also writes it as JSON and Markdown).
    Sizes: latency `rounds` x `requests` per model, `throughput_rounds` x `throughput_seconds`
    per batching mode; quick (3 x 40, 2 x 2 s) unless given, else 5 x 150, 3 x 6 s.
    `models`: a subset of MODELS (default all; the primary is always measured)."""
    import logging

    logging.getLogger("pipeline_components").setLevel(logging.WARNING)
    from serving.servables import configure_tensorflow

    # The same TensorFlow thread settings as `transfer-pipeline serve` uses (spinning off),
    # so the in-process baseline is not handicapped by spinning threads on busy cores.
    configure_tensorflow()
    rounds = rounds or (3 if quick else 5)
    requests = requests or (40 if quick else 150)
    tp_rounds = throughput_rounds or (2 if quick else 3)
    tp_seconds = throughput_seconds or (2.0 if quick else 6.0)
    names = [n for n in MODELS if n in (models or MODELS) or n == PRIMARY]
    work = tempfile.mkdtemp(prefix="bench-serving-")
    servers: dict[str, ServerProcess] = {}
    try:
        config = export_models(work, names)
        images = make_images(16)
        batching = shipped_batching()
        servers = {
            "off": ServerProcess(work, config, None),
            "on": ServerProcess(work, config, batching),
        }
        targets = {mode: server.wait() for mode, server in servers.items()}
        rest_url = servers["off"].rest_url()
        latency = {
            model: measure_latency(work, model, targets["off"], rest_url, images, rounds, requests)
            for model in names
        }
        rates = measure_throughput(targets, images, tp_rounds, tp_seconds)
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return results_of(quick, names, latency, rates, batching)


def measure_latency(
    work: str,
    model: str,
    target: str,
    rest_url: str,
    images: list[bytes],
    rounds: int,
    requests: int,
) -> dict:
    """One model's latency summary (summarize_latency) against the unbatched server."""
    from serving.client import PredictionClient
    from serving.client_lite import PredictionClient as LiteClient

    with PredictionClient(target, model) as client, LiteClient(rest_url, model) as rest_client:
        samples = latency_rounds(f"{work}/{model}/1", client, images, rounds, requests, rest_client)
    summary = summarize_latency(samples)
    print(
        f"  latency {model}: {summary['p50_ratio_grpc_over_in_process']}x at p50;"
        f" overhead {summary['p50_overhead_ms']} ms = {summary['overhead_ms']};"
        f" REST {summary.get('p50_ratio_rest_over_in_process')}x"
    )
    return {**summary, "noop_rpc_p50_ms": summary["noop_rpc"]["p50_ms"]}


def measure_throughput(
    targets: dict[str, str], images: list[bytes], rounds: int, seconds: float
) -> dict[str, list[float]]:
    """Requests/s of the primary model with batching off and on, alternating, per round."""
    rates: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(rounds):
        for mode in rates:
            rates[mode].append(throughput(targets[mode], PRIMARY, images, seconds))
            print(f"  throughput batching {mode}: {rates[mode][-1]:.1f} requests/s")
    return rates


def results_of(
    quick: bool, names: list[str], latency: dict, rates: dict[str, list[float]], batching: dict
) -> dict:
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    speedup = round(on / off, 3)
    return {
        "environment": common.environment(),
        "quick": quick,
        "models": {"primary": PRIMARY, "sizes": {n: MODELS[n] for n in names}},
        "tensorflow_thread_spinning": False,
        "latency": latency,
        "throughput": {
            "clients": CLIENTS,
            "batching_parameters": batching,
            "batching_parameters_file": os.path.relpath(SHIPPED_BATCHING, common.REPO),
            "requests_per_s": {"off": round(off, 1), "on": round(on, 1)},
            "runs": {k: [round(x, 1) for x in v] for k, v in rates.items()},
            "speedup_on_over_off": speedup,
            "goal_min_speedup": GOAL_BATCHING_SPEEDUP,
            "goal_met": speedup >= GOAL_BATCHING_SPEEDUP,
            "no_harm_min": NO_HARM,
            "no_harm": speedup >= NO_HARM,
        },
        "goal_p50_ratio_max": GOAL_P50_RATIO,
        "goal_met": latency[PRIMARY]["p50_ratio_grpc_over_in_process"] <= GOAL_P50_RATIO,
    }


def report(results: dict) -> tuple[str, str]:
    header = [
        "model", "in-process p50/p99 ms", "gRPC p50/p99 ms", "p50 ratio (rounds)", "overhead ms",
        "of which: handler's Python / bare RPC / rest ms", "REST p50/p99 ms",
        "REST p50 ratio (rounds)",
    ]  # fmt: skip
    rows = []
    for model, r in results["latency"].items():
        i, g = r["in_process"], r["grpc"]
        parts = r.get("overhead_ms") or {}
        spread = common.spread(r["p50_ratio_per_round"])
        rows.append([
            model,
            f"{i['p50_ms']:.2f} / {i['p99_ms']:.2f}",
            f"{g['p50_ms']:.2f} / {g['p99_ms']:.2f}",
            common.format_ratio(r["p50_ratio_grpc_over_in_process"], spread),
            f"{r['p50_overhead_ms']:.2f}",
            " / ".join(f"{parts[k]:.2f}" for k in ("handler_python", "bare_rpc", "rest"))
            if parts else f"no-op RPC {r['noop_rpc_p50_ms']:.2f}",
            f"{r['rest']['p50_ms']:.2f} / {r['rest']['p99_ms']:.2f}" if "rest" in r else "-",
            common.format_ratio(r["p50_ratio_rest_over_in_process"],
                                common.spread(r["p50_ratio_rest_per_round"]))
            if "rest" in r else "-",
        ])  # fmt: skip
    t = results["throughput"]
    tp_header = [f"{t['clients']} clients, {results['models']['primary']}", "requests/s"]
    tp_rows = [
        ["batching off", f"{t['requests_per_s']['off']} (rounds {t['runs']['off']})"],
        ["batching on", f"{t['requests_per_s']['on']} (rounds {t['runs']['on']})"],
        ["on/off", common.format_ratio(t["speedup_on_over_off"], common.spread(
            common.round_ratios(t["runs"]["on"], t["runs"]["off"])))],
    ]  # fmt: skip
    goal = "met" if results["goal_met"] else "NOT met"
    tp_goal = "met" if t.get("goal_met") else "NOT met"
    summary = (
        f"p50 ratio goal <= {results['goal_p50_ratio_max']} ({PRIMARY}): {goal}; batching"
        f" on/off goal >= {t.get('goal_min_speedup')}: {tp_goal}, no harm"
        f" (>= {t.get('no_harm_min')}): {'yes' if t.get('no_harm') else 'NO'};"
        f" parameters {t['batching_parameters']}"
    )
    text = "\n\n".join(
        [common.text_table(header, rows), common.text_table(tp_header, tp_rows), summary]
    )
    markdown = "\n\n".join(
        ["# Serving benchmark", common.markdown_table(header, rows),
         common.markdown_table(tp_header, tp_rows), summary,
         f"Environment: {results['environment']}"]
    )  # fmt: skip
    return text, markdown


def headline_claims(r: dict) -> tuple[str, list[dict]]:
    primary = r["models"]["primary"]
    latency, tp = r["latency"][primary], r["throughput"]
    in_process, noop = latency["in_process"]["p50_ms"], latency["noop_rpc_p50_ms"]
    floor = (
        f"no-op RPC p50 {noop:.2f} ms on top of {in_process:.2f} ms in-process:"
        f" {_x((in_process + noop) / in_process)} is the least this client + server can add"
    )
    rounds = len(latency["p50_ratio_per_round"])
    workload = f"{primary}, single-image requests, {_rounds(rounds)}; {tp['clients']} clients"
    claims = [
        claim(
            latency["p50_ratio_grpc_over_in_process"],
            "gRPC/in-process p50",
            r["goal_met"],
            floor,
            latency["p50_ratio_per_round"],
        ),
        claim(
            tp["speedup_on_over_off"],
            "on/off requests/s",
            # the goal's alternative: the README says when to enable it, and on does no harm
            bool(tp.get("goal_met") or tp.get("no_harm")),
            f"{tp['requests_per_s']['off']} -> {tp['requests_per_s']['on']} requests/s",
            common.round_ratios(tp["runs"]["on"], tp["runs"]["off"]) if "runs" in tp else None,
        ),
    ]
    if "p50_ratio_rest_over_in_process" in latency:  # the last claim: older results lack it
        claims.append(
            claim(
                latency["p50_ratio_rest_over_in_process"],
                "REST/in-process p50",
                None,
                f"the same request as JSON (base64), TF-free client; {floor}",
                latency["p50_ratio_rest_per_round"],
            )
        )
    return workload, claims


BENCHMARK = Benchmark(
    NAME,
    50,
    (
        "SavedModel called in-process -> gRPC to `transfer-pipeline serve`, 1 client",
        "server batching off -> on (shipped parameters), 8 concurrent clients",
        "SavedModel called in-process -> REST to the same server, TF-free client",
    ),
    (
        "p50 ratio <= 1.15 (issue 19)",
        "on/off >= 1.3 with the shipped batching_parameters.txt, or README says when"
        " to enable it and the shipped ones do no harm (issue 19)",
        "none: reported beside gRPC, same run (issue 30)",
    ),
    headline_claims,
    smoke={
        "rounds": 1,
        "requests": 10,
        "throughput_rounds": 1,
        "throughput_seconds": 0.5,
        "models": ("mobilenet_v2_035_96",),
    },
)


def main(argv: list[str] | None = None) -> int:
    p = common.parser(NAME, __doc__, "fewer rounds and requests")
    args = p.parse_args(argv)
    return common.finish(NAME, run(args.quick), report, args.output_dir)


if __name__ == "__main__":
    sys.exit(main())
