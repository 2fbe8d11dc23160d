"""Latency and throughput of `radflow serve` over gRPC and REST, against the in-process floor.

The floor is the exported `serving_default` signature called in this process on the same encoded
bytes: all a server can do is add to it. Measured: p50/p99 latency and throughput for 1 client and
16 concurrent clients, each with server-side batching off and on, through gRPC and REST. The
server runs as a `radflow serve` subprocess on loopback ports; every loop is bounded.

    .venv/bin/python benchmarks/serving_benchmark.py                      # builds a baseline CNN (224 px)
    .venv/bin/python benchmarks/serving_benchmark.py --model mobilenet_v2 # MobileNetV2 at 224 px, random init
    .venv/bin/python benchmarks/serving_benchmark.py --saved_model models/radflow/3

Targets: one client's p50 within 1.3x the floor's; batching raises 16-client throughput by >= 1.3x.
The server does work the floor does not: the request checks and image admission of
radflow.admission (a reduced-scale decode for the constant-image check), which the figures include.
"""

from __future__ import annotations

import argparse
import base64
import glob
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

log = logging.getLogger("serving_benchmark")


def build_model(work: str, model: str) -> str:
    """A model at the default 224 px (the baseline CNN, or a keras.applications backbone with random
    weights: there are no ImageNet weights here), trained one epoch on a small synthetic set
    (weights do not change latency; the architecture and the preprocessing graph do)."""
    from radflow import examples as ex
    from radflow.components.class_balance.class_balance import compute_class_balance
    from radflow.components.class_balance.config import ClassBalanceConfig
    from radflow.components.ingest.config import IngestConfig
    from radflow.components.ingest.ingest import ingest
    from radflow.components.train.config import TrainConfig
    from radflow.components.train.train import train
    from radflow.synth import synthesize

    synthesize(os.path.join(work, "data"), n=60, seed=0)
    ingest(os.path.join(work, "data"), os.path.join(work, "examples"), IngestConfig())
    balance = compute_class_balance(ex.read_metadata(os.path.join(work, "examples")), ClassBalanceConfig())
    train(os.path.join(work, "examples"), os.path.join(work, "model"), balance,
          TrainConfig(model=model, epochs=1, warmup_epochs=0, fine_tune_epochs=0))
    return os.path.join(work, "model", "saved_model")


def test_images(work: str, n: int) -> list[bytes]:
    """Encoded chest X-ray-like JPEGs of varied sizes, as clients send them."""
    import tensorflow as tf

    from radflow.synth import synthesize

    folder = os.path.join(work, "images")
    if not os.path.isdir(folder):
        synthesize(folder, n=max(8 * n, 60), seed=1)
    images = []
    for path in sorted(glob.glob(os.path.join(folder, "test", "*", "*"))):
        with open(path, "rb") as f:
            data = f.read()
        try:
            tf.io.decode_image(data)
        except tf.errors.InvalidArgumentError:
            continue  # synth writes a few corrupt files on purpose
        images.append(data)
    return images[:n]


def percentiles(latencies: list[float]) -> tuple[float, float]:
    return float(np.percentile(latencies, 50)) * 1e3, float(np.percentile(latencies, 99)) * 1e3


def measure_floor(serve, images: list[bytes], requests_n: int) -> tuple[list[float], float]:
    """The signature called in this process, one image per call: latencies and wall time."""
    import tensorflow as tf

    latencies = []
    start = time.perf_counter()
    for i in range(requests_n):
        t = time.perf_counter()
        serve(image_bytes=tf.constant([images[i % len(images)]]))["scores"].numpy()
        latencies.append(time.perf_counter() - t)
    return latencies, time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`radflow serve` in a subprocess."""

    def __init__(self, base: str, batching_file: str | None, intra_op: int = 0, inter_op: int = 0):
        self.grpc_port, self.rest_port = free_port(), free_port()
        cmd = [sys.executable, "-m", "radflow.cli", "serve", "--model_name", "radflow", "--model_base_path", base,
               "--port", str(self.grpc_port), "--rest_api_port", str(self.rest_port),
               "--tensorflow_intra_op_parallelism", str(intra_op), "--tensorflow_inter_op_parallelism", str(inter_op)]
        if batching_file:
            cmd += ["--enable_batching", "--batching_parameters_file", batching_file]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def __enter__(self) -> Server:
        import requests

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("radflow serve exited during start-up")
            try:
                if requests.get(f"http://127.0.0.1:{self.rest_port}/readyz", timeout=2).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise RuntimeError("radflow serve did not become ready in 120 s")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def _grpc_caller(port: int):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    def call(image: bytes) -> None:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "radflow"
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image], dtype=tf.string))
        stub.Predict(request, timeout=60)

    return call, channel.close


def _rest_caller(port: int):
    import requests

    session = requests.Session()
    url = f"http://127.0.0.1:{port}/v1/models/radflow:predict"

    def call(image: bytes) -> None:
        reply = session.post(url, json={"instances": [{"b64": base64.b64encode(image).decode()}]}, timeout=60)
        reply.raise_for_status()

    return call, session.close


def measure_transport(server: Server, requests_n: int) -> dict[str, float]:
    """p50 of a round trip that does no model work (GetModelStatus), per protocol: the cost of the
    transport and the Python server alone, which a prediction adds to the floor."""
    import grpc
    import requests
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    out = {}
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "radflow"
        latencies = []
        for _ in range(requests_n):
            t = time.perf_counter()
            stub.GetModelStatus(request, timeout=30)
            latencies.append(time.perf_counter() - t)
        out["grpc"] = percentiles(latencies)[0]
    with requests.Session() as session:
        latencies = []
        for _ in range(requests_n):
            t = time.perf_counter()
            session.get(f"http://127.0.0.1:{server.rest_port}/v1/models/radflow", timeout=30).raise_for_status()
            latencies.append(time.perf_counter() - t)
        out["rest"] = percentiles(latencies)[0]
    return out


def measure(server: Server, protocol: str, clients: int, per_client: int, images: list[bytes]
            ) -> tuple[list[float], float]:
    """`clients` threads, each with its own connection, send `per_client` single-image requests."""
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        call, close = (_grpc_caller(server.grpc_port) if protocol == "grpc" else _rest_caller(server.rest_port))
        for i in range(3):  # connection set-up and warm-up, not measured
            call(images[(index + i) % len(images)])
        barrier.wait()
        mine = []
        for i in range(per_client):
            t = time.perf_counter()
            call(images[(index * per_client + i) % len(images)])
            mine.append(time.perf_counter() - t)
        with lock:
            latencies.extend(mine)
        close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - start


def summary(latencies: list[float], wall: float) -> dict:
    p50, p99 = percentiles(latencies)
    return {"p50": p50, "p99": p99, "rps": len(latencies) / wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--saved_model", help="an exported model (default: build --model at 224 px)")
    parser.add_argument("--model", default="baseline_cnn", help="what to build: baseline_cnn (default) or a "
                        "backbone of train's zoo, e.g. mobilenet_v2, densenet121")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every configuration (default 3)")
    parser.add_argument("--requests", type=int, default=100, help="requests per one-client run (default 100)")
    parser.add_argument("--per_client", type=int, default=12, help="requests per client with 16 clients (default 12)")
    parser.add_argument("--intra_op", type=int, default=0,
                        help="TensorFlow intra-op threads for the server and the floor alike (default 0: TF's)")
    parser.add_argument("--inter_op", type=int, default=0,
                        help="TensorFlow inter-op threads for the server and the floor alike (default 0: TF's)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    # The floor runs with the server's thread pools, so the ratio compares like with like.
    if args.intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op)
    if args.inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    with tempfile.TemporaryDirectory() as work:
        saved_model = args.saved_model or build_model(work, args.model)
        base = os.path.join(work, "serving", "radflow")
        shutil.copytree(saved_model, os.path.join(base, "1"))
        images = test_images(work, 16)
        batching_file = os.path.join(work, "batching.config")
        with open(batching_file, "w") as f:  # TF Serving's format; 16 clients fill one batch
            f.write("max_batch_size { value: 16 }\nbatch_timeout_micros { value: 2000 }\n"
                    "num_batch_threads { value: 2 }\nmax_enqueued_batches { value: 16 }\n")
        serve = tf.saved_model.load(saved_model).signatures["serving_default"]
        for image in images:
            serve(image_bytes=tf.constant([image]))
        configs = [(p, c, b) for b in (False, True) for p in ("grpc", "rest") for c in (1, 16)]
        runs: dict = {key: ([], 0.0) for key in [("floor", 1, False), *configs]}
        # Both servers run side by side and every configuration is measured once per round, so a
        # change in the load other processes put on the machine spreads over all of them alike.
        load_before = os.getloadavg()[0]
        with (Server(base, None, args.intra_op, args.inter_op) as plain,
              Server(base, batching_file, args.intra_op, args.inter_op) as batched):
            for round_ in range(args.rounds):
                log.info("round %d of %d", round_ + 1, args.rounds)
                lat, wall = measure_floor(serve, images, args.requests)
                runs[("floor", 1, False)] = (runs[("floor", 1, False)][0] + lat, runs[("floor", 1, False)][1] + wall)
                for protocol, clients, batching in configs:
                    lat, wall = measure(batched if batching else plain, protocol, clients,
                                        args.requests if clients == 1 else args.per_client, images)
                    key = (protocol, clients, batching)
                    runs[key] = (runs[key][0] + lat, runs[key][1] + wall)
            transport = measure_transport(plain, args.requests)
        floor = summary(*runs.pop(("floor", 1, False)))
        rows = [(*key, summary(*value)) for key, value in runs.items()]

    print(f"\nmodel: {args.saved_model or args.model + ' at 224 px'}")
    print(f"cores: {os.cpu_count()}; 1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
          f"(other processes share the cores); {len(images)} synthetic chest X-ray JPEGs, one per request; "
          f"TensorFlow threads intra-op {args.intra_op or 'auto'}, inter-op {args.inter_op or 'auto'}")
    print(f"{'path':<10}{'clients':>8}{'batching':>10}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}{'p50/floor':>11}")
    print(f"{'in-process':<10}{1:>8}{'-':>10}{floor['p50']:>10.2f}{floor['p99']:>10.2f}{floor['rps']:>10.1f}"
          f"{1.0:>11.2f}")
    for protocol, clients, batching, r in rows:
        print(f"{protocol:<10}{clients:>8}{'on' if batching else 'off':>10}{r['p50']:>10.2f}{r['p99']:>10.2f}"
              f"{r['rps']:>10.1f}{r['p50'] / floor['p50']:>11.2f}")
    print(f"transport alone (GetModelStatus round trip, p50): gRPC {transport['grpc']:.2f} ms, "
          f"REST {transport['rest']:.2f} ms")
    result = {(p, c, b): r for p, c, b, r in rows}
    ok = True
    for protocol in ("grpc", "rest"):
        ratio = result[(protocol, 1, False)]["p50"] / floor["p50"]
        gain = result[(protocol, 16, True)]["rps"] / result[(protocol, 16, False)]["rps"]
        met = ratio <= 1.3 and gain >= 1.3
        ok &= met
        print(f"{protocol}: one-client p50 = {ratio:.2f}x floor (target <= 1.3); "
              f"batching at 16 clients = {gain:.2f}x throughput (target >= 1.3) -> {'met' if met else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
