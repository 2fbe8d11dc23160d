"""The image, the kind cluster and the GKE Terraform agree with the package and the pipeline config.

No Docker engine or cluster is needed: the files are parsed and cross-checked (Terraform with
python-hcl2, and with `terraform fmt` where the binary is installed; `terraform validate` would
need the Google provider from HashiCorp's registry).
"""

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import hcl2
import pytest
import yaml

from radflow import __version__
from radflow.pipeline.cluster import parse_label, parse_toleration
from radflow.pipeline.config import ClusterConfig, PipelineConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pinned(name):
    return next(d.split("==")[1] for d in PYPROJECT["project"]["dependencies"] if d.startswith(f"{name}=="))


def test_image_tag_is_the_package_version_everywhere():
    version = PYPROJECT["project"]["version"]
    assert __version__ == version
    assert PipelineConfig().image == f"radflow:{version}"
    makefile = (ROOT / "Makefile").read_text()
    assert 'VERSION := $(shell sed -n \'s/^version = "\\(.*\\)"/\\1/p\' pyproject.toml)' in makefile
    assert "IMAGE ?= $(if $(REGISTRY),$(REGISTRY)/)radflow:$(VERSION)" in makefile
    assert "docker build -t $(IMAGE) ." in makefile and "docker push $(IMAGE)" in makefile


def test_dockerfile_pins_the_tf_gpu_base_installs_at_build_time_and_runs_as_non_root():
    dockerfile = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^ARG TF_IMAGE=(\S+)$", dockerfile, re.M).group(1)
    assert base == f"tensorflow/tensorflow:{_pinned('tensorflow')}-gpu"
    # The same pins as make setup: the dependency list is read from pyproject.toml, before the source.
    assert dockerfile.index("COPY pyproject.toml") < dockerfile.index("['project']['dependencies']") \
        < dockerfile.index("COPY radflow")
    assert "pip install --no-deps ." in dockerfile
    user = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert user and user[-1] not in ("root", "0")
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "data", "runs", "models"} <= set(ignored)


def _tf(name):
    return hcl2.loads((ROOT / "infra/gke" / name).read_text())


def _resources(kind):
    return {name: body for block in _tf("main.tf")["resource"] for k, named in block.items() if k.strip('"') == kind
            for name, body in ((n.strip('"'), b) for n, b in named.items())}


def _s(value):
    return value.strip('"') if isinstance(value, str) else value


def test_gke_gpu_pool_autoscales_from_zero_and_is_tainted_and_labelled_for_the_train_step():
    pools = _resources("google_container_node_pool")
    assert set(pools) == {"cpu", "gpu"}
    gpu, cpu = pools["gpu"], pools["cpu"]
    assert gpu["autoscaling"][0]["min_node_count"] == 0
    node = gpu["node_config"][0]
    taint = {k: _s(v) for k, v in node["taint"][0].items() if not k.startswith("__")}
    wanted = parse_toleration(ClusterConfig().gpu_tolerations[0])
    assert (taint["key"], taint["value"], taint["effect"]) == (wanted["key"], wanted["value"], "NO_SCHEDULE")
    assert "taint" not in cpu["node_config"][0]
    assert _s(node["guest_accelerator"][0]["type"]) == "${var.gpu_type}"
    variables = {k: v for block in _tf("variables.tf")["variable"] for k, v in ((_s(n), b) for n, b in block.items())}
    # GKE labels GPU nodes cloud.google.com/gke-accelerator=<type>: the default selector must name the same type.
    assert parse_label(ClusterConfig().gpu_node_selector[0]) == ("cloud.google.com/gke-accelerator",
                                                                 _s(variables["gpu_type"]["default"]))
    for pool in (cpu, gpu):
        assert _s(pool["node_config"][0]["workload_metadata_config"][0]["mode"]) == "GKE_METADATA"


def test_gke_bucket_and_workload_identity_bindings_name_the_service_accounts_that_run_the_steps():
    cluster = _resources("google_container_cluster")["radflow"]
    assert _s(cluster["workload_identity_config"][0]["workload_pool"]) == "${var.project}.svc.id.goog"
    assert "radflow" in _resources("google_storage_bucket")
    bindings = _resources("google_service_account_iam_member")
    members = {_s(b["member"]) for b in bindings.values()}
    ksa = ClusterConfig().tfjob_service_account
    assert f"serviceAccount:${{var.project}}.svc.id.goog[${{var.kfp_namespace}}/{ksa}]" in members
    assert "serviceAccount:${var.project}.svc.id.goog[${var.serving_namespace}/tf-serving]" in members
    assert {_s(b["role"]) for b in bindings.values()} == {"roles/iam.workloadIdentityUser"}
    roles = {n: _s(b["role"]) for n, b in _resources("google_storage_bucket_iam_member").items()}
    assert roles == {"pipeline": "roles/storage.objectAdmin", "serving": "roles/storage.objectViewer"}


def test_kind_config_storage_and_serving_fit_together():
    cluster = yaml.safe_load((ROOT / "infra/kind/cluster.yaml").read_text())
    worker = next(n for n in cluster["nodes"] if n["role"] == "worker")
    assert worker["extraMounts"][0]["containerPath"] == "/radflow"
    config = load_config(str(ROOT / "infra/kind/radflow.yaml"))
    assert config.cluster.gpus == 0  # kind has no GPU node: a GPU request would never schedule
    storage = list(yaml.safe_load_all((ROOT / "infra/kind/storage.yaml").read_text()))
    pvc = next(d for d in storage if d["kind"] == "PersistentVolumeClaim")
    pv = next(d for d in storage if d["kind"] == "PersistentVolume")
    assert pvc["metadata"]["name"] == config.cluster.pvc and pv["spec"]["hostPath"]["path"] == "/radflow"
    mount = config.cluster.pvc_mount_path
    assert config.data.startswith(mount + "/") and config.serving_root.startswith(mount + "/")
    # TF Serving's volume is the serving root seen from the node: /mnt/radflow/models -> /radflow/models.
    models_pv = yaml.safe_load((ROOT / "infra/kind/serving/pv-models.yaml").read_text())
    assert models_pv["spec"]["hostPath"]["path"] == "/radflow" + config.serving_root[len(mount):]
    assert f'base_path: "/models/{config.push.model_name}"' in (ROOT / "infra/serving/base/models.config").read_text()
    assert re.search(r"^PIPELINE_VERSION=\$\{PIPELINE_VERSION:-\d+\.\d+\.\d+\}$",
                     (ROOT / "infra/kind/up.sh").read_text(), re.M)


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not installed")
def test_terraform_parses_and_is_formatted():
    """`terraform fmt -check` parses every file (exit 2 on a syntax error) and lists unformatted ones
    (exit 3); it needs no provider, unlike `terraform validate`."""
    result = subprocess.run(["terraform", "fmt", "-check", "-recursive", str(ROOT / "infra" / "gke")],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "TF_CLI_CONFIG_FILE": os.devnull})
    assert result.returncode == 0, f"terraform fmt -check exited {result.returncode}: {result.stdout}{result.stderr}"
