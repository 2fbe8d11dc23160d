"""Real multi-worker training, resuming after SIGKILL, cross-validation and hyperparameter search."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from radflow import examples as ex
from radflow.components.class_balance.class_balance import compute_class_balance
from radflow.components.class_balance.config import ClassBalanceConfig
from radflow.components.train.config import TrainConfig
from radflow.components.train.cv import CV_FILE
from radflow.components.train.data import read_index
from radflow.components.train.train import RESULT_FILE, train
from radflow.components.train.tuning import TUNING_FILE, SearchSpace, katib_experiment, main, tune

TINY = {"filters": [8, 16], "dense_units": 8, "batch_size": 16, "warmup_epochs": 0}
REPO = Path(__file__).resolve().parents[1]


def _config_file(tmp_path: Path, **train) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"train": {**TINY, **train}}))
    return str(path)


def _radflow_train(examples: str, out: str, config: str, env: dict | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "radflow.cli", "train", examples, out, "--config", config],
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


def _result(out: str) -> dict:
    with open(os.path.join(out, RESULT_FILE)) as f:
        return json.load(f)


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_train_in_lockstep_to_identical_weights(examples_dir, tmp_path):
    """Real MultiWorkerMirroredStrategy: two processes on 127.0.0.1 all-reduce every step."""
    config = _config_file(tmp_path, epochs=2)
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        procs.append(_radflow_train(examples_dir, str(tmp_path / f"worker-{index}"), config, {"TF_CONFIG": tf_config}))
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    results = [_result(str(tmp_path / f"worker-{i}")) for i in range(2)]
    assert [(r["strategy"], r["replicas"]) for r in results] == [("MultiWorkerMirroredStrategy", 2)] * 2
    assert results[0]["global_batch"] == 2 * TINY["batch_size"]
    assert results[0]["weights_sha256"] == results[1]["weights_sha256"]
    assert results[0]["epochs_run"] == results[1]["epochs_run"] == 2


def test_killed_training_resumes_from_its_last_epoch(examples_dir, tmp_path):
    """SIGKILL mid-run, run the same command again: it continues after the last finished epoch."""
    epochs = 10
    config = _config_file(tmp_path, epochs=epochs, patience=100)
    out = str(tmp_path / "model")
    state = Path(out) / "backup" / "final" / "head" / "state" / "training_metadata.json"
    first = _radflow_train(examples_dir, out, config, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and first.poll() is None:
        if state.exists() and json.loads(state.read_text() or "{}").get("epoch", 0) >= 2:
            break
        time.sleep(0.05)
    assert first.poll() is None, "training finished before it could be killed"
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate()
    killed_at = json.loads(state.read_text())["epoch"]
    assert 2 <= killed_at < epochs and not os.path.exists(os.path.join(out, RESULT_FILE))

    second = _radflow_train(examples_dir, out, config)
    log = second.communicate(timeout=240)[0]
    assert second.returncode == 0, log[-3000:]
    result = _result(out)
    assert result["resumed_from_epoch"] >= killed_at
    assert result["epochs_run"] == epochs  # the history spans both processes
    with open(os.path.join(out, "history.json")) as f:
        assert len(json.load(f)["val_auc"]) == epochs
    assert f"Epoch {result['resumed_from_epoch'] + 1}/{epochs}" in log and "Epoch 1/" not in log
    assert not os.path.exists(os.path.join(out, "backup"))


def test_cross_validation_reports_mean_and_std_then_fits(examples_dir, tmp_path):
    metadata = ex.read_metadata(examples_dir)
    balance = compute_class_balance(metadata, ClassBalanceConfig())
    result = train(examples_dir, str(tmp_path), balance, TrainConfig(epochs=1, cv_folds=2, augment=False, **{
        **TINY, "filters": (8, 16)}))
    with open(tmp_path / CV_FILE) as f:
        summary = json.load(f)
    assert summary["folds"] == 2 and len(summary["per_fold"]) == 2 and result.cv == summary
    pooled = metadata.split_size("train") + metadata.split_size("val")
    assert sum(f["val_examples"] for f in summary["per_fold"]) == pooled
    aucs = [f["val_auc"] for f in summary["per_fold"]]
    assert summary["metrics"]["val_auc"]["mean"] == pytest.approx(sum(aucs) / 2)
    assert summary["metrics"]["val_auc"]["std"] == pytest.approx(abs(aucs[0] - aucs[1]) / 2)
    assert result.epochs_run == 1 and (tmp_path / RESULT_FILE).exists()


def test_keras_tuner_search_over_the_declared_space(examples_dir, tmp_path):
    metadata = ex.read_metadata(examples_dir)
    balance = compute_class_balance(metadata, ClassBalanceConfig())
    space = SearchSpace(learning_rate=(1e-3, 1e-2), dropout=(0.1, 0.3), model=("baseline_cnn",), unfreeze_layers=(5,))
    base = TrainConfig(epochs=1, augment=False, **{**TINY, "filters": (8, 16)})
    best, score = tune(examples_dir, str(tmp_path), balance, base, space, max_trials=2, algorithm="random")
    with open(tmp_path / TUNING_FILE) as f:
        record = json.load(f)
    assert len(record["trials"]) == 2 and score == max(t["val_auc"] for t in record["trials"])
    assert 1e-3 <= best.learning_rate <= 1e-2 and 0.1 <= best.dropout <= 0.3 and best.model == "baseline_cnn"
    assert best.learning_rate == record["best"]["learning_rate"] and best.epochs == 1


def test_katib_experiment_is_generated_from_the_same_space(tmp_path):
    checked_in = (REPO / "infra" / "katib" / "experiment.yaml").read_text()
    main(["--out", str(tmp_path / "experiment.yaml")])
    assert (tmp_path / "experiment.yaml").read_text() == checked_in, "regenerate infra/katib/experiment.yaml"
    spec = yaml.safe_load(checked_in)["spec"]
    space = SearchSpace()
    params = {p["name"]: p for p in spec["parameters"]}
    assert params["learning-rate"]["feasibleSpace"] == {"min": str(space.learning_rate[0]),
                                                        "max": str(space.learning_rate[1]),
                                                        "distribution": "logUniform"}
    assert params["model"]["feasibleSpace"]["list"] == list(space.model)
    assert params["unfreeze-layers"]["feasibleSpace"]["list"] == [str(v) for v in space.unfreeze_layers]
    assert spec["objective"]["objectiveMetricName"] == "val_auc" and spec["metricsCollectorSpec"]["collector"][
        "kind"] == "StdOut"
    command = spec["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]["command"]
    refs = {t["name"] for t in spec["trialTemplate"]["trialParameters"]}
    assert command[:2] == ["radflow", "train"] and "--learning-rate" in command
    assert {c[len("${trialParameters."):-1] for c in command if c.startswith("${")} == refs
    assert katib_experiment(space, algorithm="random")["spec"]["algorithm"]["algorithmName"] == "random"


def test_fold_tasks_merged_pairwise_give_the_final_fit_its_summary(examples_dir, tmp_path):
    """What the pipeline runs on a cluster: one task per fold, merge_folds fan-in, then the final fit."""
    from radflow.components.train import cv

    metadata = ex.read_metadata(examples_dir)
    balance = compute_class_balance(metadata, ClassBalanceConfig())
    config = TrainConfig(epochs=1, cv_folds=2, augment=False, **{**TINY, "filters": (8, 16)})
    fold_dirs = [str(tmp_path / f"fold-{i}") for i in (1, 0)]  # any order: the summary sorts by fold
    for fold, out in zip((1, 0), fold_dirs, strict=True):
        assert cv.fit_fold(examples_dir, out, balance, config, fold)["fold"] == fold
        assert not os.path.exists(os.path.join(out, ".fit"))  # resume state is not left in the artifact
    merged = cv.merge_folds(fold_dirs[0], fold_dirs[1], str(tmp_path / "merged"))
    assert [f["fold"] for f in merged] == [1, 0]

    result = train(examples_dir, str(tmp_path / "final"), balance, config, fold_results=cv.read_folds(
        str(tmp_path / "merged")))
    keys, labels = read_index(examples_dir, cv.POOLED_SPLITS, metadata)
    fold_of = cv.assign_folds(keys, labels, 2, config.seed)
    expected_val = [sum(fold_of[k] == f for k in keys) for f in (0, 1)]
    assert [f["val_examples"] for f in result.cv["per_fold"]] == expected_val
    with open(tmp_path / "final" / CV_FILE) as f:
        assert json.load(f) == result.cv
    with pytest.raises(ValueError, match=r"expected folds \[0, 1\], got \[0, 0\]"):
        cv.summarize([merged[1], merged[1]], 2)
    with pytest.raises(ValueError, match="outside"):
        cv.fit_fold(examples_dir, str(tmp_path / "x"), balance, config, 2)
