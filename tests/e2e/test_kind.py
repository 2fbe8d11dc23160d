"""End to end on the kind cluster: submit, wait, serve what was pushed, and predict through TF Serving.

Run with `make kind-e2e` after `make image kind-up`. Skipped (with the reason) without Docker,
kind, kubectl, the `radflow` kind cluster, or RADFLOW_KIND_E2E=1, which only kind-e2e sets: the
default `make test` never drives a cluster.
"""

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from radflow.cli import main

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "kind"  # the worker node's /radflow (infra/kind/cluster.yaml)
KFP = "http://localhost:8080"
SERVING_PORT = 18501


def _why_not() -> str | None:
    for tool in ("docker", "kind", "kubectl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "no Docker engine is running"
    clusters = subprocess.run(["kind", "get", "clusters"], capture_output=True, text=True).stdout.split()
    if "radflow" not in clusters:
        return "no kind cluster named radflow (make kind-up)"
    if os.environ.get("RADFLOW_KIND_E2E") != "1":
        return "drives a real cluster for ~15 min; run it with make kind-e2e"
    return None


reason = _why_not()
if reason:
    pytest.skip(f"kind end-to-end skipped: {reason}", allow_module_level=True)


def _kubectl(*args: str) -> str:
    return subprocess.run(["kubectl", "--context", "kind-radflow", *args], check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture(scope="module")
def pushed_version():
    from radflow.synth import synthesize

    if not (DATA / "sample" / "train").is_dir():
        synthesize(str(DATA / "sample"), n=240, seed=0)
    versions = DATA / "models" / "radflow"
    if versions.is_dir() and any(versions.iterdir()):
        pytest.fail(f"{versions} already holds versions; TF Serving on kind serves version 1 "
                    f"(infra/serving/base/models.config): remove it first (files belong to uid 1000)")
    code = main(["submit", "--host", KFP, "--config", str(ROOT / "infra/kind/radflow.yaml"), "--run-name",
                 f"kind-e2e {time.strftime('%H:%M:%S')}", "--wait", "--timeout", "3600",
                 "--unschedulable-after", "300"])
    assert code == 0, "the pipeline run failed on kind; radflow submit printed the failed step above"
    return versions / "1"


def test_the_run_pushed_version_1(pushed_version):
    assert (pushed_version / "saved_model.pb").is_file()
    assert (pushed_version / "assets" / "labels.txt").read_text().split() == ["NORMAL", "PNEUMONIA"]


@pytest.fixture(scope="module")
def serving(pushed_version):
    _kubectl("apply", "-k", str(ROOT / "infra/kind/serving"))
    _kubectl("-n", "radflow", "rollout", "status", "deployment/tf-serving", "--timeout=600s")
    forward = subprocess.Popen(["kubectl", "--context", "kind-radflow", "-n", "radflow", "port-forward",
                                "svc/tf-serving", f"{SERVING_PORT}:8501"], stdout=subprocess.DEVNULL)
    try:
        base = f"http://localhost:{SERVING_PORT}/v1/models/radflow"
        for _ in range(60):
            try:
                with urllib.request.urlopen(base, timeout=5) as r:
                    yield base, json.load(r)
                    break
            except OSError:
                time.sleep(2)
        else:
            pytest.fail("TF Serving did not answer through the port-forward within 120 s")
    finally:
        forward.terminate()
        forward.wait()


def test_tf_serving_serves_the_pushed_version_and_answers_a_prediction(serving):
    base, status = serving
    assert [(s["version"], s["state"]) for s in status["model_version_status"]] == [("1", "AVAILABLE")]
    image = next((DATA / "sample" / "test" / "PNEUMONIA").glob("*.jpeg"))
    body = json.dumps({"signature_name": "serving_default",
                       "inputs": {"image_bytes": [{"b64": base64.b64encode(image.read_bytes()).decode()}]}})
    request = urllib.request.Request(f"{base}:predict", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        outputs = json.load(r)["outputs"]
    scores = outputs["scores"][0]
    assert len(scores) == 2 and abs(sum(scores) - 1) < 1e-3
    assert outputs["classes"][0] == ["NORMAL", "PNEUMONIA"]
