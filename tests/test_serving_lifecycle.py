"""Version lifecycle flags of tensorflow_model_server, honoured by `radflow serve` (in-process servers).

Load retries for a version copied in place, live reloads of the model config with TF Serving's
label rule, the threshold asset read once per loaded version, SSLConfig with client certificates,
warmup switched off or repeated, and the meta graph chosen by --saved_model_tags.
"""

from __future__ import annotations

import datetime
import os
import shutil
import time

import grpc
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import prediction_service_pb2_grpc
from test_serving import MODEL, State, _wait_status, png, predict_request, publish, start

from radflow.serving.config import TlsConfig, parse_model_config, single_model_config


@pytest.fixture(scope="module")
def saved_model(model_dir) -> str:
    return os.path.join(model_dir, "saved_model")


def _threshold(channel, version: int | None = None) -> float:
    reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
        predict_request([png(1)], version=version), timeout=30)
    return float(tf.make_ndarray(reply.outputs["threshold"])[0])


def test_a_version_copied_saved_model_pb_first_loads_on_a_retry(saved_model, tmp_path):
    base = tmp_path / MODEL
    version = base / "1"
    version.mkdir(parents=True)
    for name in os.listdir(saved_model):  # rsync's order: files first, variables/ last
        if name != "variables":
            src = os.path.join(saved_model, name)
            (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, version / name)
    from radflow.serving.config import ServerConfig
    from radflow.serving.server import ModelServer

    server = ModelServer(ServerConfig(port=0, rest_api_port=0, file_system_poll_wait_seconds=0.1,
                                      max_num_load_retries=50, load_retry_interval_seconds=0.2),
                         [single_model_config(MODEL, str(base))])
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            failed = _wait_status(channel, {1: State.END})
            assert failed.model_version_status[0].status.error_message
            shutil.copytree(os.path.join(saved_model, "variables"), version / "variables")  # saved_model.pb unchanged
            assert server.wait_until_ready(60), "the version was never retried"
            assert _threshold(channel) > 0
        metrics = server.metrics.exposition().decode()
        assert ':tensorflow:cc:saved_model:load_attempt_count{model_path="' + str(version) + '",status="fail"}' \
            in metrics
        assert f'load_attempt_count{{model_path="{version}",status="success"}} 1.0' in metrics
    finally:
        server.stop()


def test_the_threshold_asset_is_read_once_per_loaded_version(saved_model, tmp_path):
    base = str(tmp_path / MODEL)
    os.makedirs(base)
    path = publish(saved_model, base, 1)
    server = start([single_model_config(MODEL, base)])
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            loaded = _threshold(channel)
            with open(os.path.join(path, "assets", "threshold.txt"), "w") as f:
                f.write("0.875\n")  # the file changes under a loaded version: it is not read again
            assert _threshold(channel) == pytest.approx(loaded)
            os.remove(os.path.join(path, "assets", "threshold.txt"))
            assert _threshold(channel) == pytest.approx(loaded)
            publish(saved_model, base, 2)
            shutil.copy(os.path.join(saved_model, "assets", "threshold.txt"), os.path.join(base, "2", "assets"))
            with open(os.path.join(base, "2", "assets", "threshold.txt"), "w") as f:
                f.write("0.25\n")
            _wait_status(channel, {2: State.AVAILABLE})
            assert _threshold(channel, 2) == pytest.approx(0.25)
    finally:
        server.stop()


def _config_text(models: dict[str, tuple[str, list[int], dict[str, int]]]) -> str:
    parts = []
    for name, (base, versions, labels) in models.items():
        listed = " ".join(f"versions: {v}" for v in versions)
        label_text = " ".join(f'version_labels {{ key: "{k}" value: {v} }}' for k, v in labels.items())
        parts.append(f'config {{ name: "{name}" base_path: "{base}" model_platform: "tensorflow" '
                     f"model_version_policy {{ specific {{ {listed} }} }} {label_text} }}")
    return "model_config_list { " + " ".join(parts) + " }"


def test_the_model_config_is_reloaded_live_with_tf_servings_label_rule(saved_model, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for base in (a, b):
        os.makedirs(base)
        publish(saved_model, base, 1)
        publish(saved_model, base, 2)
    config_file = tmp_path / "models.config"
    config_file.write_text(_config_text({"a": (a, [1, 2], {"stable": 1})}))
    server = start(parse_model_config(config_file.read_text()), model_config_file=str(config_file),
                   model_config_poll_seconds=0.2)
    url = f"http://127.0.0.1:{server.rest_port}/v1/models"
    try:
        assert requests.get(f"{url}/a/labels/stable", timeout=10).json()["model_version_status"][0]["version"] == "1"
        config_file.write_text(_config_text({"a": (a, [1, 2], {"stable": 2}), "b": (b, [1], {})}))
        deadline = time.monotonic() + 60
        while not (server.manager.model_ready("b") and requests.get(f"{url}/a/labels/stable", timeout=10).json()
                   ["model_version_status"][0]["version"] == "2"):
            assert time.monotonic() < deadline, "the new config was never applied"
            time.sleep(0.1)
        # A label on a version that is not loaded is refused (no --allow_version_labels_for_unavailable_models):
        # the whole file is, and the config in force stays.
        config_file.write_text(_config_text({"a": (a, [1, 2], {"stable": 2, "canary": 3}), "b": (b, [1], {})}))
        time.sleep(1.0)  # several polls
        assert requests.get(f"{url}/a/labels/canary", timeout=10).status_code == 400
        assert requests.get(f"{url}/a/labels/stable", timeout=10).ok
        config_file.write_text(_config_text({"b": (b, [1], {})}))  # model a removed
        deadline = time.monotonic() + 60
        while requests.get(f"{url}/a", timeout=10).status_code != 404:
            assert time.monotonic() < deadline, "model a was never removed"
            time.sleep(0.1)
        assert requests.get(f"{url}/b", timeout=10).ok
    finally:
        server.stop()


def test_labels_for_unavailable_versions_when_allowed(saved_model, tmp_path):
    from radflow.serving.manager import ManagerOptions, ModelManager

    base = str(tmp_path / MODEL)
    os.makedirs(base)
    config = parse_model_config(_config_text({MODEL: (base, [1], {})}))
    for allowed in (False, True):
        manager = ModelManager(config, ManagerOptions(allow_version_labels_for_unavailable_models=allowed))
        new = parse_model_config(_config_text({MODEL: (base, [1, 2], {"canary": 2})}))
        if allowed:
            manager.reload(new)  # a new label may name a version that is not loaded yet
            with pytest.raises(Exception, match="not currently available"):  # but an existing label may not move there
                manager.reload(parse_model_config(_config_text({MODEL: (base, [1, 3], {"canary": 3})})))
        else:
            with pytest.raises(Exception, match="not currently available for inference"):
                manager.reload(new)


def _certificates(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def issue(name, issuer_key, issuer_name, key, ca=False, sans=()):
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), True))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), False)
        return builder.sign(issuer_key, hashes.SHA256())

    def pem_key(key):
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "radflow test CA")])
    ca = issue("radflow test CA", ca_key, ca_name, ca_key, ca=True)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    server = issue("localhost", ca_key, ca_name, server_key, sans=("localhost",))
    client = issue("client", ca_key, ca_name, client_key)
    pem = serialization.Encoding.PEM
    files = {"ca.pem": ca.public_bytes(pem), "client.pem": client.public_bytes(pem), "client.key": pem_key(client_key)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return TlsConfig(pem_key(server_key), server.public_bytes(pem), ca.public_bytes(pem), client_verify=True), files


def test_ssl_config_with_client_verification_on_grpc_and_rest(saved_model, tmp_path):
    base = str(tmp_path / MODEL)
    os.makedirs(base)
    publish(saved_model, base, 1)
    tls, files = _certificates(tmp_path)
    server = start([single_model_config(MODEL, base)], tls=tls)
    try:
        address = f"localhost:{server.grpc_port}"
        good = grpc.ssl_channel_credentials(files["ca.pem"], files["client.key"], files["client.pem"])
        with grpc.secure_channel(address, good) as channel:
            assert _threshold(channel) > 0
        with grpc.secure_channel(address, grpc.ssl_channel_credentials(files["ca.pem"])) as channel:
            with pytest.raises(grpc.RpcError) as err:
                _threshold(channel)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # the handshake fails without a client cert
        url = f"https://localhost:{server.rest_port}/readyz"
        ca, cert = str(tmp_path / "ca.pem"), (str(tmp_path / "client.pem"), str(tmp_path / "client.key"))
        assert requests.get(url, verify=ca, cert=cert, timeout=10).ok
        with pytest.raises(requests.exceptions.RequestException):
            requests.get(url, verify=ca, timeout=10)
    finally:
        server.stop()


def test_warmup_can_be_switched_off_or_repeated_and_tags_choose_the_meta_graph(saved_model, tmp_path):
    from test_serving import prediction_log_pb2

    from radflow.serving.servable import Servable

    base = str(tmp_path / MODEL)
    os.makedirs(base)
    publish(saved_model, base, 1)
    servable = Servable(MODEL, 1, os.path.join(base, "1"))
    records = servable.warmup()
    assert records >= 1 and servable.warmup(iterations=3) == 3 * records
    servable.close()
    warmup = os.path.join(base, "1", "assets.extra", "tf_serving_warmup_requests")
    entry = prediction_log_pb2.PredictionLog()
    entry.predict_log.request.CopyFrom(predict_request([b"not an image"]))
    with tf.io.TFRecordWriter(warmup) as w:
        w.write(entry.SerializeToString())
    server = start([single_model_config(MODEL, base)], enable_model_warmup=False)  # the failing warmup is skipped
    server.stop()
    server = start([single_model_config(MODEL, base)], enable_model_warmup=False, saved_model_tags=("serve", "gpu"),
                   ready=False)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            status = _wait_status(channel, {1: State.END})
            assert "no meta graph tagged ['gpu', 'serve']" in status.model_version_status[0].status.error_message
    finally:
        server.stop()
