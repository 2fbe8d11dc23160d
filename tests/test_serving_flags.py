"""`radflow serve` takes every flag of tensorflow_model_server 2.16.1, with its name, type and default.

The flag list is a pinned copy of main.cc's (tests/data/tf_serving_2.16.1_flags.tsv, provenance in
its header), not this repository's own list, so a flag dropped or retyped here fails the test.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys

import pytest

from radflow.serving.flags import IGNORED, _bool, add_arguments, schedulable_cpus

PINNED = os.path.join(os.path.dirname(__file__), "data", "tf_serving_2.16.1_flags.tsv")
# The one default radflow serve changes on purpose (REST is how a laptop user reaches a local server).
DIFFERENT_DEFAULTS = {"rest_api_port": 8501}
PARSERS = {"int32": int, "int64": int, "float": float, "string": str}


def pinned() -> list[tuple[str, str, str]]:
    with open(PINNED) as f:
        rows = [line.rstrip("\n").split("\t") for line in f if not line.startswith("#")]
    return [(name, kind, default) for name, kind, default in rows]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p


def expected_default(name: str, kind: str, text: str):
    if name in DIFFERENT_DEFAULTS:
        return DIFFERENT_DEFAULTS[name]
    if text == "4*NumSchedulableCPUs":
        return 4 * schedulable_cpus()
    if text == "NumSchedulableCPUs":
        return schedulable_cpus()
    if kind == "bool":
        return text == "true"
    return PARSERS[kind](text) if text else ""


def test_every_flag_of_main_cc_is_accepted_with_its_type_and_default():
    flags = pinned()
    assert len(flags) == 46
    actions = {a.dest: a for a in parser()._actions}
    for name, kind, default in flags:
        assert name in actions, f"--{name} is missing"
        action = actions[name]
        assert action.default == expected_default(name, kind, default), name
        if kind == "bool":
            assert action.nargs == "?", name  # --flag and --flag=true/false, as tensorflow::Flags
            if name != "version":
                assert action.type is _bool and action.const is True, name
        else:
            assert action.type is PARSERS[kind], name
    # Each flag takes a value of its type in TF Serving's --name=value form.
    values = {"int32": "3", "int64": "3", "float": "0.5", "string": "x", "bool": "false"}
    for name, kind, _ in flags:
        args = parser().parse_args([f"--{name}={values[kind]}"])
        assert getattr(args, name) == (False if kind == "bool" else PARSERS[kind](values[kind])), name


def test_version_prints_both_versions_and_exits_zero():
    out = subprocess.run([sys.executable, "-m", "radflow.cli", "serve", "--version"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("TensorFlow ModelServer: radflow serve") and "2.16.1" in lines[0]
    assert lines[1] == "TensorFlow Library: 2.16.2"


def test_flags_without_meaning_here_are_logged_once_as_ignored_and_alts_is_refused(tmp_path, caplog):
    from radflow.serving.server import config_from_args

    args = parser().parse_args(["--model_base_path", str(tmp_path), "--per_process_gpu_memory_fraction=0.5",
                                "--enable_profiler=false", "--num_load_threads=4"])
    with caplog.at_level(logging.WARNING, logger="radflow.serving.server"):
        config_from_args(args)
    ignored = [r.getMessage() for r in caplog.records if "has no effect" in r.getMessage()]
    assert len(ignored) == 3 and all(any(f"--{n}=" in m for m in ignored) for n in
                                     ("per_process_gpu_memory_fraction", "enable_profiler", "num_load_threads"))
    assert set(IGNORED) <= {name for name, _, _ in pinned()}
    with pytest.raises(ValueError, match="ALTS"):
        config_from_args(parser().parse_args(["--model_base_path", str(tmp_path), "--use_alts_credentials"]))


def test_honoured_flags_reach_the_server_config(tmp_path):
    from radflow.serving.server import config_from_args

    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true path: "/metrics" }')
    config, models = config_from_args(parser().parse_args([
        "--model_name=chest", f"--model_base_path={tmp_path}", "--port=0", f"--grpc_socket_path={tmp_path}/s",
        "--rest_api_num_threads=3", "--rest_api_timeout_in_ms=1500", "--rest_api_enable_cors_support",
        "--grpc_max_threads=5", "--grpc_channel_arguments=grpc.max_connection_age_ms=2000,grpc.primary_user_agent=x",
        "--max_num_load_retries=2", "--load_retry_interval_micros=250000", "--file_system_poll_wait_seconds=0",
        "--saved_model_tags=serve,gpu", "--enable_model_warmup=false", "--num_request_iterations_for_warmup=3",
        "--tensorflow_session_parallelism=2", f"--monitoring_config_file={monitoring}",
        "--allow_version_labels_for_unavailable_models=true", "--enable_batching",
        "--enable_per_model_batching_parameters=true", "--max_request_batch_size=16", "--image_min_side=64"]))
    assert [m.name for m in models] == ["chest"]
    assert (config.port, config.grpc_socket_path, config.rest_api_num_threads, config.rest_api_timeout_seconds,
            config.rest_api_cors, config.grpc_max_threads) == (None, f"{tmp_path}/s", 3, 1.5, True, 5)
    assert config.grpc_channel_arguments == (("grpc.max_connection_age_ms", 2000), ("grpc.primary_user_agent", "x"))
    assert (config.max_num_load_retries, config.load_retry_interval_seconds, config.file_system_poll_wait_seconds) \
        == (2, 0.25, 0)
    assert config.saved_model_tags == ("serve", "gpu") and not config.enable_model_warmup
    assert config.warmup_iterations == 3 and (config.intra_op_threads, config.inter_op_threads) == (2, 2)
    assert config.metrics_path == "/metrics" and config.allow_version_labels_for_unavailable_models
    assert config.enable_batching and config.per_model_batching
    assert config.limits.max_batch_size == 16 and config.limits.admission.min_side == 64
    with pytest.raises(ValueError, match="grpc_channel_arguments"):
        config_from_args(parser().parse_args([f"--model_base_path={tmp_path}", "--grpc_channel_arguments=nokey"]))
    with pytest.raises(ValueError, match="image_min_side|min_side"):
        config_from_args(parser().parse_args([f"--model_base_path={tmp_path}", "--image_min_side=0"]))


def test_ssl_and_monitoring_config_parse_with_tf_servings_fields():
    from radflow.serving.config import parse_monitoring_config, parse_ssl_config

    tls = parse_ssl_config('server_key: "KEY" server_cert: "CERT" custom_ca: "CA" client_verify: true')
    assert (tls.server_key, tls.server_cert, tls.custom_ca, tls.client_verify) == (b"KEY", b"CERT", b"CA", True)
    with pytest.raises(ValueError, match="server_key"):
        parse_ssl_config('server_cert: "CERT"')
    with pytest.raises(ValueError, match="custom_ca"):
        parse_ssl_config('server_key: "K" server_cert: "C" client_verify: true')
    assert parse_monitoring_config("prometheus_config { enable: true }") == "/monitoring/prometheus/metrics"
    assert parse_monitoring_config("prometheus_config { enable: false }") is None
    with pytest.raises(ValueError, match="monitoring config"):
        parse_monitoring_config("prometheus { enable: true }")
    infra = os.path.join(os.path.dirname(__file__), "..", "infra", "serving", "base", "monitoring.config")
    with open(infra) as f:
        assert parse_monitoring_config(f.read()) == "/monitoring/prometheus/metrics"


def test_scrape_annotations_match_the_monitoring_config_and_the_rest_port():
    import yaml

    from radflow.serving.config import parse_monitoring_config

    infra = os.path.join(os.path.dirname(__file__), "..", "infra", "serving")
    with open(os.path.join(infra, "base", "monitoring.config")) as f:
        path = parse_monitoring_config(f.read())
    for manifest in ("base/deployment.yaml", "overlays/canary/canary-deployment.yaml"):
        with open(os.path.join(infra, manifest)) as f:
            template = yaml.safe_load(f)["spec"]["template"]
        (container,) = template["spec"]["containers"]
        args = dict(a.lstrip("-").split("=", 1) for a in container["args"])
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == path
        assert annotations["prometheus.io/port"] == args["rest_api_port"]  # metrics are served on the REST port
        assert args["monitoring_config_file"].endswith("/monitoring.config")
