"""The compiled pipeline: tasks, dependencies, images and run-time behaviour, asserted on the YAML."""

import yaml

from radflow.pipeline.compile import compile_pipeline
from radflow.pipeline.config import PipelineConfig, load_config
from radflow.pipeline.pipeline import STAGES

TASK_NAMES = {s.replace("_", "-") for s in STAGES} | {"validation-gate"}


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
        "validation-gate": {"validate"},
        "class-balance": {"ingest", "validation-gate"},
        "train": {"ingest", "class-balance"},
        "evaluate": {"ingest", "validate", "train"},  # validate: its shortcut findings go into the model card
        "push": {"validate", "train", "evaluate"},
    }


def test_every_step_runs_the_project_image_without_runtime_installs(tmp_path):
    spec = _compile(tmp_path, PipelineConfig(image="registry.example/radflow:9.9.9"))
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == 7
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


def test_the_validation_verdict_is_acted_on_by_the_task_after_validate(tmp_path):
    """Validate must complete for its reports to be published on a cluster; the gate reads its verdict."""
    tasks = _compile(tmp_path)["root"]["dag"]["tasks"]
    gate = tasks["validation-gate"]
    assert gate["inputs"]["artifacts"]["statistics"]["taskOutputArtifact"] == {
        "outputArtifactKey": "statistics", "producerTask": "validate"}
    assert gate["inputs"]["parameters"]["config"]["componentInputParameter"] == "validate_config"


def test_push_is_gated_by_the_blessing_artifact(tmp_path):
    push = _compile(tmp_path)["root"]["dag"]["tasks"]["push"]
    evaluation = push["inputs"]["artifacts"]["evaluation"]["taskOutputArtifact"]
    assert evaluation == {"outputArtifactKey": "evaluation", "producerTask": "evaluate"}


def test_integer_options_compile_as_integers_and_floats_stay_floats(tmp_path):
    """KFP's Struct keeps every number a double (kfp writes epochs: 30.0); the compiled file restores the ints."""
    from radflow.components.train.config import TrainConfig

    path = compile_pipeline(PipelineConfig(train=TrainConfig(cv_folds=2)), str(tmp_path / "radflow.yaml"))
    text = open(path).read()
    spec = next(yaml.safe_load_all(text))
    params = spec["root"]["inputDefinitions"]["parameters"]
    train, ingest = params["train_config"]["defaultValue"], params["ingest_config"]["defaultValue"]
    assert (type(train["epochs"]), type(train["filters"][0]), type(ingest["image_size"])) == (int, int, int)
    assert (train["epochs"], ingest["image_size"]) == (30, 224)
    assert type(train["dropout"]) is float and type(train["lr_decay_epochs"]) is float  # declared float
    assert "epochs: 30\n" in text and "image_size: 224\n" in text and "epochs: 30.0" not in text
    assert "'epochs': 30," in text  # the header comment kfp writes from the same values
    fold = spec["root"]["dag"]["tasks"]["train-fold-2"]["inputs"]["parameters"]["fold"]["runtimeValue"]["constant"]
    assert type(fold) is int and fold == 1


def test_compiled_yaml_parses_strictly_as_kfps_pipeline_spec_and_kubernetes_platform_protos(tmp_path):
    """What the KFP backend and the kfp-kubernetes driver parse: unknown fields or wrong types would fail here."""
    from google.protobuf import json_format
    from kfp.kubernetes import kubernetes_executor_config_pb2
    from kfp.pipeline_spec import pipeline_spec_pb2

    from radflow.components.train.config import TrainConfig
    from radflow.pipeline.config import ClusterConfig

    for config in (PipelineConfig(), PipelineConfig(train=TrainConfig(cv_folds=3)),
                   PipelineConfig(cluster=ClusterConfig(train_workers=2, tfjob_work_root="gs://b/w",
                                                        pvc="data", patient_key_secret="key"))):
        with open(compile_pipeline(config, str(tmp_path / "radflow.yaml"))) as f:
            spec, platform = yaml.safe_load_all(f)
        json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())  # ignore_unknown_fields=False
        platform_spec = json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec())
        executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        assert executors and set(executors) <= set(spec["deploymentSpec"]["executors"])
        for executor in executors.values():
            json_format.ParseDict(executor, kubernetes_executor_config_pb2.KubernetesExecutorConfig())
        assert platform_spec.platforms["kubernetes"]
