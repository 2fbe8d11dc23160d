"""`radflow serve` started with the args of infra/serving's Deployments, then attacked.

The server runs as a subprocess so that its memory can be read from /proc (VmRSS now, VmHWM the
peak since start) and its threads counted. Every hostile request of issue 16 is sent with TF
Serving's own stubs or raw sockets; each must get TF Serving's status with a JSON error for REST,
leave the server serving, and keep its peak memory within the bound the test sets.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
import yaml
from PIL import Image
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

INFRA = os.path.join(os.path.dirname(__file__), "..", "infra", "serving")
MODEL = "radflow"
MiB = 2**20
GROWTH_BOUND = 300 * MiB  # no hostile request may raise the server's peak RSS by more than this


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (bytes) and Threads of a process, from /proc."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
            elif key == "Threads":
                out[key] = int(value)
    return out


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def xray(seed: int, size: int = 48) -> bytes:
    return png(np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8))


def deployment_args(path: str, local: dict[str, str], ports: dict[str, int]) -> list[str]:
    """The container args of a Deployment manifest, with its mount paths and ports made local."""
    with open(path) as f:
        (container,) = yaml.safe_load(f)["spec"]["template"]["spec"]["containers"]
    args = []
    for arg in container["args"]:
        name, _, value = arg.lstrip("-").partition("=")
        for mount, folder in local.items():
            if value.startswith(mount + "/"):
                value = folder + value[len(mount):]
                break
        args.append(f"--{name}={ports.get(name, value)}")
    return args


def wait_ready(proc: subprocess.Popen, rest_port: int, log_path: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, open(log_path).read()
        try:
            if requests.get(f"http://127.0.0.1:{rest_port}/readyz", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    pytest.fail(f"radflow serve never became ready:\n{open(log_path).read()}")


def localise(tmp, model_dir: str) -> dict[str, str]:
    """The Deployment's /config and /models mounts, as local folders (ConfigMap files and a serving root)."""
    models = tmp / "models"
    shutil.copytree(os.path.join(model_dir, "saved_model"), models / MODEL / "1")
    shutil.copytree(os.path.join(model_dir, "saved_model"), models / MODEL / "2")
    folders = {"/canary-config": tmp / "canary-config", "/config": tmp / "config", "/models": models}
    files = {"/config": {name: os.path.join(INFRA, "base", name)
                         for name in ("models.config", "batching.config", "monitoring.config")},
             "/canary-config": {"models.config": os.path.join(INFRA, "overlays", "canary", "canary.config")}}
    for mount, names in files.items():
        folders[mount].mkdir()
        for name, source in names.items():
            with open(source) as f:
                text = f.read().replace('base_path: "/models/', f'base_path: "{models}/')
            (folders[mount] / name).write_text(text)
    return {mount: str(folder) for mount, folder in folders.items()}


@pytest.mark.parametrize("manifest", ["base/deployment.yaml", "overlays/canary/canary-deployment.yaml"])
def test_the_deployment_args_start_the_server(manifest, model_dir, tmp_path):
    local = localise(tmp_path, model_dir)
    grpc_port, rest_port = free_port(), free_port()
    args = deployment_args(os.path.join(INFRA, manifest), local, {"port": grpc_port, "rest_api_port": rest_port})
    log_path = str(tmp_path / "serve.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "radflow.cli", "serve", *args], stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        wait_ready(proc, rest_port, log_path)
        status = requests.get(f"http://127.0.0.1:{rest_port}/v1/models/{MODEL}", timeout=10).json()
        served = [s["version"] for s in status["model_version_status"] if s["state"] == "AVAILABLE"]
        assert served == (["1"] if manifest.startswith("base") else ["2"])
        label = "stable" if manifest.startswith("base") else "canary"
        assert requests.get(f"http://127.0.0.1:{rest_port}/v1/models/{MODEL}/labels/{label}", timeout=10).ok
        metrics = requests.get(f"http://127.0.0.1:{rest_port}/monitoring/prometheus/metrics", timeout=10)
        assert metrics.status_code == 200 and ":tensorflow:cc:saved_model:load_attempt_count" in metrics.text
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0, open(log_path).read()


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """The base Deployment's args made local, plus a 3 s REST timeout for the slow-client cases."""
    tmp = tmp_path_factory.mktemp("hostile")
    local = localise(tmp, model_dir)
    grpc_port, rest_port = free_port(), free_port()
    args = deployment_args(os.path.join(INFRA, "base", "deployment.yaml"), local,
                           {"port": grpc_port, "rest_api_port": rest_port})
    log_path = str(tmp / "serve.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "radflow.cli", "serve", *args, "--rest_api_timeout_in_ms=3000",
                                 "--tensorflow_intra_op_parallelism=1", "--tensorflow_inter_op_parallelism=2"],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(proc, rest_port, log_path)
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=[("grpc.max_send_message_length", 2**26)])
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for i in range(3):  # settle: traced functions, allocator pools
            stub.Predict(request([xray(i)]), timeout=60)
        yield proc, stub, f"http://127.0.0.1:{rest_port}", rest_port, log_path
        channel.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def request(images: list[bytes], shape: list[int] | None = None) -> predict_pb2.PredictRequest:
    r = predict_pb2.PredictRequest()
    r.model_spec.name = MODEL
    r.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    if shape is not None:
        del r.inputs["image_bytes"].tensor_shape.dim[:]
        for d in shape:
            r.inputs["image_bytes"].tensor_shape.dim.add(size=d)
    return r


def refused(stub, r) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(r, timeout=60)
    return err.value.code(), err.value.details()


def still_serving(server) -> None:
    proc, stub, url, _, log_path = server
    assert proc.poll() is None, open(log_path).read()
    assert stub.Predict(request([xray(99)]), timeout=60).outputs["scores"].tensor_shape.dim[0].size == 1
    b64 = {"b64": base64.b64encode(xray(98)).decode()}
    assert requests.post(f"{url}/v1/models/{MODEL}:predict", json={"instances": [b64]}, timeout=60).ok


def scrape(url: str) -> dict[str, float]:
    text = requests.get(f"{url}/monitoring/prometheus/metrics", timeout=10).text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def test_a_short_request_declaring_4000_copies_is_refused_before_tensorflow_expands_it(server):
    proc, stub, url, _, _ = server
    before = proc_status(proc.pid)["VmHWM"]
    tiny = png(np.full((4, 4), 7, np.uint8))
    r = request([tiny], shape=[4000])
    assert r.ByteSize() < 200  # 112 bytes in the issue
    code, details = refused(stub, r)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "4000" in details and "carries 1" in details
    # The REST form: 4,000 tiny PNGs in ~450 KB.
    body = {"instances": [{"b64": base64.b64encode(tiny).decode()}] * 4000}
    reply = requests.post(f"{url}/v1/models/{MODEL}:predict", json=body, timeout=60)
    assert reply.status_code == 400 and "4000" in reply.json()["error"]
    code, details = refused(stub, request([xray(i) for i in range(129)]))  # one over the default maximum
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "--max_request_batch_size" in details
    assert proc_status(proc.pid)["VmHWM"] - before < GROWTH_BOUND
    still_serving(server)


def test_decompression_bombs_are_refused_from_the_header_and_memory_stays_bounded(server):
    proc, stub, url, _, _ = server
    buf = io.BytesIO()
    Image.new("L", (20000, 20000)).save(buf, format="PNG")
    bomb = buf.getvalue()
    assert len(bomb) < 400_000  # 389 KB in the issue; 2.7 GiB when decoded
    before = proc_status(proc.pid)["VmHWM"]
    answers = []

    def attack():
        answers.append(refused(stub, request([bomb])))
        reply = requests.post(f"{url}/v1/models/{MODEL}:predict",
                              json={"instances": [{"b64": base64.b64encode(bomb).decode()}]}, timeout=60)
        answers.append((reply.status_code, reply.json()["error"]))

    threads = [threading.Thread(target=attack) for _ in range(2)]  # two at once
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 4
    for code, message in answers:
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, 400) and "pixels" in message
    assert proc_status(proc.pid)["VmHWM"] - before < GROWTH_BOUND
    still_serving(server)


def test_images_ingest_would_not_admit_are_refused_and_counted(server):
    proc, stub, url, _, _ = server
    before = scrape(url)
    cases = {
        "image_too_small": png(np.full((1, 1), 200, np.uint8)),
        "image_constant": png(np.zeros((64, 64), np.uint8)),
    }
    for image in cases.values():
        code, details = refused(stub, request([xray(1), image]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "value 1" in details, details
    assert "at least 32 px" in refused(stub, request([cases["image_too_small"]]))[1]
    assert "constant" in refused(stub, request([cases["image_constant"]]))[1]
    after = scrape(url)
    for reason in cases:
        key = f':radflow:serving:refused_request_count{{model_name="{MODEL}",reason="{reason}"}}'
        assert after[key] - before.get(key, 0) == 2
    still_serving(server)


def test_empty_batches_and_dicom_bytes_get_a_message_that_says_what_was_wrong(server):
    _, stub, url, _, _ = server
    code, details = refused(stub, request([], shape=[0]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "empty batch" in details and "Incompatible" not in details
    from test_serving_cli import dicom_bytes

    dcm = dicom_bytes(np.random.default_rng(0).integers(0, 4096, (40, 52)))
    code, details = refused(stub, request([dcm]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "DICOM" in details and "radflow predict" in details
    reply = requests.post(f"{url}/v1/models/{MODEL}:predict",
                          json={"inputs": {"image_bytes": []}}, timeout=30)
    assert reply.status_code == 400 and "empty batch" in reply.json()["error"]
    still_serving(server)


def test_rest_answers_tf_servings_status_with_a_json_error_for_every_malformed_request(server):
    _, _, url, rest_port, _ = server
    deep = requests.post(f"{url}/v1/models/{MODEL}:predict", data="[" * 100_000, timeout=30)
    assert deep.status_code == 400 and "JSON" in deep.json()["error"]
    nested = requests.post(f"{url}/v1/models/{MODEL}:predict", data='{"instances": ' + "[" * 5000 + "]" * 5000 + "}",
                           timeout=30)
    assert nested.status_code == 400 and nested.json()["error"]
    huge = requests.get(f"{url}/v1/models/{MODEL}/versions/{2**70}", timeout=30)
    assert huge.status_code == 400 and huge.json()["error"] == f"Failed to convert version: {2**70} to numeric."
    for method in ("PUT", "DELETE", "PATCH"):
        reply = requests.request(method, f"{url}/v1/models/{MODEL}", timeout=30)
        assert reply.status_code == 400 and reply.headers["Content-Type"].startswith("application/json")
        assert reply.json() == {"error": f"Malformed request: {method} /v1/models/{MODEL}"}
    # A chunked body is read like any other, and the connection stays usable (keep-alive).
    body = json.dumps({"instances": [{"b64": base64.b64encode(xray(5)).decode()}]}).encode()
    with socket.create_connection(("127.0.0.1", rest_port), timeout=30) as s:
        for _ in range(2):
            chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:10], body[10:])) + b"0\r\n\r\n"
            s.sendall(b"POST /v1/models/radflow:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                      b"Content-Type: application/json\r\n\r\n" + chunks)
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(65536)
            headers, _, rest = head.partition(b"\r\n\r\n")
            length = int(re.search(rb"Content-Length: (\d+)", headers, re.IGNORECASE).group(1))
            while len(rest) < length:
                rest += s.recv(65536)
            assert headers.startswith(b"HTTP/1.1 200"), headers
            assert json.loads(rest[:length])["predictions"][0]["classes"] == ["NORMAL", "PNEUMONIA"]
    still_serving(server)


def test_stalled_clients_hold_no_thread_and_are_cut_off_and_the_backlog_is_deep(server):
    proc, _, url, rest_port, _ = server
    listen = subprocess.run(["ss", "-ltnH", f"sport = :{rest_port}"], capture_output=True, text=True).stdout.split()
    assert int(listen[2]) >= 128, listen  # Send-Q of a listening socket is its backlog
    threads = proc_status(proc.pid)["Threads"]
    stalled = []
    for _ in range(200):
        s = socket.create_connection(("127.0.0.1", rest_port), timeout=30)
        s.sendall(b"POST /v1/models/radflow:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{\"inst")
        stalled.append(s)
    try:
        still_serving(server)  # others are answered while 200 bodies hang
        assert proc_status(proc.pid)["Threads"] - threads < 20
        for s in stalled:  # each gets 408 once the 3 s timeout passes, and is closed
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
            assert b'{"error"' in answer
    finally:
        for s in stalled:
            s.close()
    still_serving(server)


def test_metrics_count_known_requests_under_tf_servings_names(server):
    _, stub, url, _, _ = server
    before = scrape(url)
    for i in range(3):
        stub.Predict(request([xray(i), xray(i + 10)]), timeout=60)
    b64 = [{"b64": base64.b64encode(xray(i)).decode()} for i in range(2)]
    assert requests.post(f"{url}/v1/models/{MODEL}:predict", json={"instances": b64}, timeout=60).ok
    refused(stub, request([xray(1)], shape=[7]))
    after = scrape(url)

    def delta(key):
        return after.get(key, 0) - before.get(key, 0)

    assert delta(f':tensorflow:serving:request_count{{model_name="{MODEL}",status="OK"}}') == 4
    assert delta(f':tensorflow:serving:request_count{{model_name="{MODEL}",status="INVALID_ARGUMENT"}}') == 1
    assert delta(f':tensorflow:serving:request_latency_count{{API="Predict",entrypoint="GRPC",model_name="{MODEL}"}}') \
        == 3
    assert delta(f':tensorflow:serving:request_latency_count{{API="predict",entrypoint="REST",model_name="{MODEL}"}}') \
        == 1
    decisions = sum(delta(f':radflow:serving:prediction_count{{class="{c}",model_name="{MODEL}",version="1"}}')
                    for c in ("NORMAL", "PNEUMONIA"))
    assert decisions == 8  # 3 x 2 + 2 images
    assert delta(f':radflow:serving:score_count{{class="PNEUMONIA",model_name="{MODEL}"}}') == 8
    assert delta(f':radflow:serving:refused_request_count{{model_name="{MODEL}",reason="declared_shape_mismatch"}}') \
        == 1
    assert after[f':radflow:serving:model_version_available{{model_name="{MODEL}",version="1"}}'] == 1
    loads = [k for k in after if k.startswith(":tensorflow:cc:saved_model:load_attempt_count{")]
    assert any('status="success"' in k for k in loads)
    assert any(k.startswith(':radflow:serving:request_bytes_bucket{API="Predict"') for k in after)
    still_serving(server)
