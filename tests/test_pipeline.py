"""The compiled pipeline: tasks, dependencies, images and run-time behaviour, asserted on the YAML."""

import yaml

from radflow.pipeline.compile import compile_pipeline
from radflow.pipeline.config import PipelineConfig, load_config
from radflow.pipeline.pipeline import STAGES

TASK_NAMES = {s.replace("_", "-") for s in STAGES}


def _compile(tmp_path, config=PipelineConfig()):
    path = compile_pipeline(config, str(tmp_path / "radflow.yaml"))
    with open(path) as f:
        # The second document is the Kubernetes platform spec (tests/test_pipeline_k8s.py asserts it).
        spec, platform = yaml.safe_load_all(f)
    assert set(platform["platforms"]) == {"kubernetes"}
    return spec


def test_tasks_and_dependencies(tmp_path):
    spec = _compile(tmp_path)
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == TASK_NAMES
    deps = {name: set(t.get("dependentTasks", [])) for name, t in tasks.items()}
    assert deps == {
        "ingest": set(),
        "validate": {"ingest"},
        "class-balance": {"ingest", "validate"},
        "train": {"ingest", "class-balance"},
        "evaluate": {"ingest", "train"},
        "push": {"validate", "train", "evaluate"},
    }


def test_every_step_runs_the_project_image_without_runtime_installs(tmp_path):
    spec = _compile(tmp_path, PipelineConfig(image="registry.example/radflow:9.9.9"))
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == 6
    for executor in executors.values():
        container = executor["container"]
        assert container["image"] == "registry.example/radflow:9.9.9"
        command = " ".join(container["command"])
        assert "pip install" not in command and "kfp.dsl.executor_main" in command


def test_ingest_and_train_are_never_cached(tmp_path):
    tasks = _compile(tmp_path)["root"]["dag"]["tasks"]
    assert tasks["ingest"]["cachingOptions"] == {}
    assert tasks["train"]["cachingOptions"] == {}
    assert tasks["validate"]["cachingOptions"] == {"enableCache": True}


def test_config_becomes_parameter_defaults(tmp_path):
    (tmp_path / "c.yaml").write_text("data: gs://bucket/chest_xray\ntrain: {epochs: 7}\n")
    spec = _compile(tmp_path, load_config(str(tmp_path / "c.yaml")))
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["data"]["defaultValue"] == "gs://bucket/chest_xray"
    assert params["train_config"]["defaultValue"]["epochs"] == 7
    assert params["evaluate_config"]["defaultValue"]["min_roc_auc"] == 0.85
    assert set(params) == {"data", "serving_root", *(f"{s}_config" for s in STAGES)}


def test_push_is_gated_by_the_blessing_artifact(tmp_path):
    push = _compile(tmp_path)["root"]["dag"]["tasks"]["push"]
    evaluation = push["inputs"]["artifacts"]["evaluation"]["taskOutputArtifact"]
    assert evaluation == {"outputArtifactKey": "evaluation", "producerTask": "evaluate"}
