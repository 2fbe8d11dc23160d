"""Cluster settings that agree with each other: the TF Serving model config, the serving namespace, GPU capacity
and the Katib trial, checked across infra/serving, infra/gke, infra/katib and ClusterConfig.

Rendered with `kubectl kustomize` as tests/test_serving_infra.py does (skipped without kubectl or
kustomize), and validated strictly against Kubernetes' own JSON schemas (kubernetes-validate).
"""

import shutil
from pathlib import Path

import hcl2
import kubernetes_validate
import pytest
import yaml
from test_serving_infra import render

from radflow.cli import main
from radflow.components.train.config import TrainConfig
from radflow.components.train.tuning import SearchSpace, _hyperparameters, katib_experiment
from radflow.pipeline.capacity import KATIB_PARALLEL_TRIALS, capacity
from radflow.pipeline.compile import compile_pipeline
from radflow.pipeline.config import ClusterConfig, PipelineConfig

ROOT = Path(__file__).resolve().parents[1]
SERVING = ROOT / "infra" / "serving"
OVERLAYS = [SERVING / "base", *(SERVING / "overlays" / o for o in ("gpu", "gcs", "canary")),
            ROOT / "infra" / "kind" / "serving"]
KUBERNETES = ("1.30", "1.33")  # GKE's REGULAR channel spans these


def _tf_variables():
    text = (ROOT / "infra" / "gke" / "variables.tf").read_text()
    return {name.strip('"'): body for block in hcl2.loads(text)["variable"] for name, body in block.items()}


def _tf_default(name):
    value = _tf_variables()[name]["default"]
    return value.strip('"') if isinstance(value, str) else value


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_rendered_object_is_valid_kubernetes(overlay):
    for obj in render(str(overlay)).values():
        for version in KUBERNETES:
            kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_model_config_is_reread_in_place_from_an_unhashed_configmap(overlay):
    """TF Serving polls --model_config_file; the file must change under it, not roll the pods."""
    objects = render(str(overlay))
    for (kind, name), deployment in objects.items():
        if kind != "Deployment":
            continue
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        args = dict(a.lstrip("-").split("=", 1) for a in container["args"])
        assert int(args["model_config_file_poll_wait_seconds"]) > 0
        folder, file = args["model_config_file"].rsplit("/", 1)
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == folder]
        assert "subPath" not in mount  # a subPath mount is never updated by the kubelet
        (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
        sources = [s["configMap"]["name"] for s in volume["projected"]["sources"]] if "projected" in volume \
            else [volume["configMap"]["name"]]
        (holder,) = [n for n in sources if file in objects[("ConfigMap", n)]["data"]]
        assert holder in ("tf-serving-models", "tf-serving-canary-config"), (name, holder)  # the names, unhashed


def _rendered_with(tmp_path, edit_file, old, new):
    copy = tmp_path / "serving"
    shutil.copytree(SERVING, copy)
    path = copy / "base" / edit_file
    path.write_text(path.read_text().replace(old, new, 1))
    return render(str(copy / "base"))


def test_promoting_a_version_changes_the_configmap_in_place_and_a_batching_change_rolls_the_pods(tmp_path):
    before = render(str(SERVING / "base"))
    promoted = _rendered_with(tmp_path / "a", "models.config", "versions: 1", "versions: 2")
    batching = _rendered_with(tmp_path / "b", "batching.config", "max_batch_size { value: 32 }",
                              "max_batch_size { value: 16 }")
    template = before[("Deployment", "tf-serving")]["spec"]["template"]
    assert promoted[("Deployment", "tf-serving")]["spec"]["template"] == template  # no rollout: TF Serving re-reads
    assert "versions: 2" in promoted[("ConfigMap", "tf-serving-models")]["data"]["models.config"]
    # batching.config is read once, at start: its ConfigMap's hashed name changes, so the Deployment rolls.
    assert batching[("Deployment", "tf-serving")]["spec"]["template"] != template


def test_the_gcs_overlay_lives_where_workload_identity_binds_its_service_account():
    objects = render(str(SERVING / "overlays" / "gcs"))
    namespace = _tf_default("serving_namespace")
    assert ("Namespace", namespace) in objects
    for (kind, name), obj in objects.items():
        if kind != "Namespace":
            assert obj["metadata"].get("namespace") == namespace, (kind, name)
    main_tf = hcl2.loads((ROOT / "infra" / "gke" / "main.tf").read_text())
    members = {m["member"].strip('"') for block in main_tf["resource"] for k, named in block.items()
               if k.strip('"') == "google_service_account_iam_member" for m in named.values()}
    (ksa,) = [o for (kind, _), o in objects.items() if kind == "ServiceAccount"]
    assert f"serviceAccount:${{var.project}}.svc.id.goog[${{var.serving_namespace}}/{ksa['metadata']['name']}]" in \
        members
    gsa = {n.strip('"'): b for block in main_tf["resource"] for k, named in block.items()
           if k.strip('"') == "google_service_account" for n, b in named.items()}["serving"]["account_id"].strip('"')
    assert ksa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].startswith(f"{gsa}@")
    spec = objects[("Deployment", "tf-serving")]["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == ksa["metadata"]["name"]


def _serving_gpus():
    """GPUs GPU serving can hold: its HPA's maximum replicas x the GPUs each replica's container asks for."""
    objects = render(str(SERVING / "overlays" / "gpu"))
    (container,) = objects[("Deployment", "tf-serving")]["spec"]["template"]["spec"]["containers"]
    return objects[("HorizontalPodAutoscaler", "tf-serving")]["spec"]["maxReplicas"] * int(
        container["resources"]["limits"]["nvidia.com/gpu"])


def test_the_default_gpu_pool_holds_gpu_serving_beside_fold_tasks_or_a_katib_search():
    cluster = ClusterConfig()
    zones = len(_tf_variables()["zones"]["default"])
    assert cluster.gpu_pool_nodes == _tf_default("gpu_max_nodes") * zones
    assert cluster.gpus_per_node == _tf_default("gpus_per_node")
    serving = _serving_gpus()
    assert serving == 2
    katib = yaml.safe_load((ROOT / "infra" / "katib" / "experiment.yaml").read_text())["spec"]["parallelTrialCount"]
    assert katib == KATIB_PARALLEL_TRIALS
    with_serving = ClusterConfig(serving_gpus=serving)
    for config in (PipelineConfig(cluster=with_serving), PipelineConfig(cluster=with_serving,
                                                                        train=TrainConfig(cv_folds=3))):
        found = capacity(config, katib)
        assert not found.errors
        assert not [w for w in found.warnings if "fold tasks" in w or "Katib:" in w], found.warnings
    # Both at once do not fit; that is reported, and only that.
    (warning,) = capacity(PipelineConfig(cluster=with_serving, train=TrainConfig(cv_folds=3)), katib).warnings
    assert "a run (3 GPUs) and a Katib search (3) at once need 6, but the pool leaves 4" in warning


def test_the_old_defaults_are_reported_the_pool_full_with_serving_and_folds_and_trials_queued():
    old = ClusterConfig(gpu_pool_nodes=2, gpus_per_node=1, serving_gpus=2)
    found = capacity(PipelineConfig(cluster=old, train=TrainConfig(cv_folds=3)), 3)
    assert found.errors == () and found.free == 0
    assert found.warnings[0] == ("a train pod needs 1 GPU(s) but the pool leaves 0 (2 - cluster.serving_gpus 2): "
                                 "it waits until serving scales down")
    assert "Katib: 3 parallel trials x 1 GPU(s) = 3" in found.warnings[1]
    found = capacity(PipelineConfig(cluster=ClusterConfig(gpu_pool_nodes=2), train=TrainConfig(cv_folds=3)), 1)
    assert found.warnings == ("train.cv_folds: 3 fold tasks x 1 GPU(s) = 3 at once, but the pool leaves 2 "
                              "(2 - cluster.serving_gpus 0): they run in 2 waves (submit --wait waits for them)",)


@pytest.mark.parametrize("cluster, message", [
    (ClusterConfig(gpus=2), r"cluster.gpus \(2\) is more than one node of the pool has \(cluster.gpus_per_node 1\)"),
    (ClusterConfig(train_workers=8, tfjob_work_root="gs://b/w"),
     r"cluster.train_workers x gpus = 8 GPUs must run at once, but the pool holds 6"),
    (ClusterConfig(serving_gpus=7), r"cluster.serving_gpus \(7\) is more than the pool holds \(6\)"),
])
def test_what_the_pool_can_never_hold_is_refused_at_compile_time(tmp_path, cluster, message):
    with pytest.raises(ValueError, match=message):
        compile_pipeline(PipelineConfig(cluster=cluster), str(tmp_path / "radflow.yaml"))


def test_cpu_training_and_an_undescribed_pool_are_not_checked():
    assert capacity(PipelineConfig(cluster=ClusterConfig(gpus=0, serving_gpus=99))).errors == ()
    assert capacity(PipelineConfig(cluster=ClusterConfig(gpu_pool_nodes=0, gpus=4))).errors == ()


def test_radflow_capacity_prints_the_figures_and_exits_1_when_demand_exceeds_the_pool(tmp_path, capsys):
    assert main(["capacity"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "GPU pool: 6 (6 nodes x 1); GPU serving holds up to 0; 6 left",
        "pipeline at its peak: 1; Katib (3 parallel trials): 3"]
    (tmp_path / "c.yaml").write_text("train: {cv_folds: 5}\ncluster: {serving_gpus: 2}\n")
    assert main(["capacity", "--config", str(tmp_path / "c.yaml"), "--katib-parallel-trials", "1"]) == 1
    assert "warning: train.cv_folds: 5 fold tasks x 1 GPU(s) = 5 at once" in capsys.readouterr().out


def test_the_katib_trial_is_placed_and_sized_as_the_train_step():
    cluster = ClusterConfig(gpus=1, train_cpu="6", train_memory="24G", registry="reg.example/radflow")
    experiment = katib_experiment(cluster=cluster, image="reg.example/radflow/radflow:0.1.0")
    job = experiment["spec"]["trialTemplate"]["trialSpec"]
    kubernetes_validate.validate(job, "1.33", strict=True)
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present",
                                   "effect": "NoSchedule"}]
    assert pod["serviceAccountName"] == cluster.tfjob_service_account
    (container,) = pod["containers"]
    assert container["resources"] == {"requests": {"cpu": "6", "memory": "24G"},
                                      "limits": {"memory": "24G", "nvidia.com/gpu": 1}}
    cpu_pod = katib_experiment(cluster=ClusterConfig(gpus=0))["spec"]["trialTemplate"]["trialSpec"]["spec"][
        "template"]["spec"]
    assert "nodeSelector" not in cpu_pod and "nvidia.com/gpu" not in cpu_pod["containers"][0]["resources"]["limits"]


def test_katib_and_keras_tuner_sample_every_double_with_the_same_prior():
    """skopt (Katib's Bayesian optimisation) samples every double log-uniformly; KerasTuner follows the space."""
    space = SearchSpace()
    hp = _hyperparameters(space)
    katib = {p["name"].replace("-", "_"): p for p in katib_experiment(space)["spec"]["parameters"]}
    for name in ("learning_rate", "dropout"):
        sampling = hp.space[[h.name for h in hp.space].index(name)].sampling
        distribution = katib[name]["feasibleSpace"]["distribution"]
        assert (sampling, distribution) == ("log", "logUniform"), name
    settings = {s["name"]: s["value"] for s in katib_experiment(space)["spec"]["algorithm"]["algorithmSettings"]}
    assert settings == {"n_initial_points": "4", "random_state": "0"}
    uniform_dropout = SearchSpace(log_sampled=("learning_rate",))
    with pytest.raises(ValueError, match=r"samples every double log-uniformly; \['dropout'\] are declared uniform"):
        katib_experiment(uniform_dropout)
    random = katib_experiment(uniform_dropout, algorithm="random")  # Katib's random search honours the prior
    assert {p["name"]: p["feasibleSpace"]["distribution"] for p in random["spec"]["parameters"]
            if p["parameterType"] == "double"} == {"learning-rate": "logUniform", "dropout": "uniform"}
    assert "algorithmSettings" not in random["spec"]["algorithm"]
