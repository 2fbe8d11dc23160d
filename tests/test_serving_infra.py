"""The TF Serving manifests in infra/serving render with kustomize and are the Kubernetes objects we mean.

Rendered with `kubectl kustomize` (kustomize v5 is built into kubectl) or a standalone `kustomize`.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

INFRA = os.path.join(os.path.dirname(__file__), "..", "infra", "serving")


def render(path: str) -> dict[tuple[str, str], dict]:
    if shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize", path]
    elif shutil.which("kustomize"):
        cmd = ["kustomize", "build", path]
    else:
        pytest.skip("neither kubectl nor kustomize is installed")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout
    objects = [o for o in yaml.safe_load_all(out) if o]
    for o in objects:
        assert {"apiVersion", "kind", "metadata"} <= set(o) and o["metadata"]["name"], o
    named = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    assert len(named) == len(objects), "duplicate objects"
    return named


def _container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _by_prefix(objects: dict, kind: str, prefix: str) -> dict:
    (match,) = [o for (k, n), o in objects.items() if k == kind and n.startswith(prefix)]
    return match


def test_base_is_a_probed_tf_serving_with_config_files_hpa_and_pvc():
    objects = render(os.path.join(INFRA, "base"))
    deployment = objects[("Deployment", "tf-serving")]
    c = _container(deployment)
    assert c["image"].startswith("tensorflow/serving:") and not c["image"].endswith(":latest")
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"grpc": 8500, "http": 8501}
    args = dict(a.lstrip("-").split("=", 1) for a in c["args"])
    assert args["model_config_file"] == "/config/models.config" and args["enable_batching"] == "true"
    assert args["batching_parameters_file"] == "/config/batching.config"
    assert args["monitoring_config_file"] == "/config/monitoring.config"
    assert c["readinessProbe"]["httpGet"]["path"] == "/v1/models/radflow"
    assert c["livenessProbe"]["tcpSocket"]["port"] == "grpc"
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    service = objects[("Service", "tf-serving")]
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"grpc": 8500, "http": 8501}
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    config = _by_prefix(objects, "ConfigMap", "tf-serving-config")
    assert {"batching.config", "monitoring.config"} <= set(config["data"])
    assert "models.config" in objects[("ConfigMap", "tf-serving-models")]["data"]  # re-read in place: no hash
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert [s["configMap"]["name"] for s in volumes["config"]["projected"]["sources"]] == [
        config["metadata"]["name"], "tf-serving-models"]
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "radflow-models"
    assert ("PersistentVolumeClaim", "radflow-models") in objects
    hpa = objects[("HorizontalPodAutoscaler", "tf-serving")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "tf-serving" and hpa["spec"]["minReplicas"] >= 2
    assert 'path: "/monitoring/prometheus/metrics"' in config["data"]["monitoring.config"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/monitoring/prometheus/metrics"


def test_gpu_variant_requests_a_gpu_on_gpu_nodes():
    deployment = render(os.path.join(INFRA, "overlays", "gpu"))[("Deployment", "tf-serving")]
    c = _container(deployment)
    assert c["image"].endswith("-gpu")
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    spec = deployment["spec"]["template"]["spec"]
    assert "cloud.google.com/gke-accelerator" in spec["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])


def test_gcs_variant_reads_gs_with_workload_identity_and_no_pvc():
    objects = render(os.path.join(INFRA, "overlays", "gcs"))
    assert not any(k == "PersistentVolumeClaim" for k, _ in objects)
    sa = objects[("ServiceAccount", "tf-serving")]
    assert sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].endswith(".iam.gserviceaccount.com")
    spec = objects[("Deployment", "tf-serving")]["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "tf-serving"
    assert [v["name"] for v in spec["volumes"]] == ["config"]
    assert [m["name"] for m in _container({"spec": {"template": {"spec": spec}}})["volumeMounts"]] == ["config"]
    assert 'base_path: "gs://' in objects[("ConfigMap", "tf-serving-models")]["data"]["models.config"]


def test_canary_runs_two_labelled_versions_behind_one_service():
    from radflow.serving.config import parse_model_config

    objects = render(os.path.join(INFRA, "overlays", "canary"))
    stable, canary = objects[("Deployment", "tf-serving")], objects[("Deployment", "tf-serving-canary")]
    tracks = {}
    for d in (stable, canary):
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert d["spec"]["selector"]["matchLabels"].items() <= labels.items()
        args = dict(a.lstrip("-").split("=", 1) for a in _container(d)["args"])
        mount = args["model_config_file"].rsplit("/", 1)[0]
        volume = next(m["name"] for m in _container(d)["volumeMounts"] if m["mountPath"] == mount)
        (source,) = [v for v in d["spec"]["template"]["spec"]["volumes"] if v["name"] == volume]
        names = [s["configMap"]["name"] for s in source["projected"]["sources"]] if "projected" in source \
            else [source["configMap"]["name"]]
        (text,) = [objects[("ConfigMap", n)]["data"]["models.config"] for n in names
                   if "models.config" in objects[("ConfigMap", n)]["data"]]
        (model,) = parse_model_config(text)
        tracks[labels["radflow.ai/track"]] = (list(model.model_version_policy.specific.versions),
                                              dict(model.version_labels))
    assert tracks == {"stable": ([1], {"stable": 1}), "canary": ([2], {"canary": 2})}
    # The main Service splits between both tracks; the track Services pin one.
    selector = objects[("Service", "tf-serving")]["spec"]["selector"]
    for d in (stable, canary):
        assert selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        assert not (stable["spec"]["selector"]["matchLabels"].items() <=
                    canary["spec"]["template"]["metadata"]["labels"].items())
    for track in ("stable", "canary"):
        assert objects[("Service", f"tf-serving-{track}")]["spec"]["selector"]["radflow.ai/track"] == track
    assert canary["spec"]["replicas"] < objects[("HorizontalPodAutoscaler", "tf-serving")]["spec"]["minReplicas"]
