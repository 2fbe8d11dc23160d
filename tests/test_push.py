import json
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_metadata.proto.v0 import statistics_pb2

from radflow import examples as ex
from radflow.cli import main
from radflow.components.evaluate.config import EvaluateConfig
from radflow.components.evaluate.evaluate import BLESSING_FILE, CANARY_FILE, Blessing, evaluate
from radflow.components.evaluate.model_card import MODEL_CARD_FILE
from radflow.components.push.config import PushConfig
from radflow.components.push.layout import (
    LINEAGE_DIR,
    LINEAGE_FILE,
    TRAIN_STATISTICS_FILE,
    live_version,
    read_lineage,
    versions,
)
from radflow.components.push.push import STAGING_PREFIX, apply_retention, list_versions, push, rollback
from radflow.components.train.train import (
    KERAS_MODEL_FILE,
    SAVED_MODEL_DIR,
    SCORES,
    SERVING_INPUT,
    THRESHOLD,
    THRESHOLD_ASSET,
    export_serving,
)

FAST = PushConfig(latency_requests=3)


@pytest.fixture(scope="module")
def evaluation_dir(good_model_dir, separable_examples_dir, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("evaluation"))
    result = evaluate(good_model_dir, separable_examples_dir, out, EvaluateConfig(bootstrap_resamples=50,
                                                                                   explain_images=0))
    assert result.blessing.blessed, result.blessing.reason
    return out


@pytest.fixture(scope="module")
def statistics_dir(tmp_path_factory) -> str:
    """A validate output: statistics/train.pb holding a real DatasetFeatureStatisticsList."""
    out = tmp_path_factory.mktemp("validation")
    stats = statistics_pb2.DatasetFeatureStatisticsList()
    stats.datasets.add(name="train", num_examples=120)
    (out / "statistics").mkdir()
    (out / "statistics" / "train.pb").write_bytes(stats.SerializeToString())
    return str(out)


def _blessing(tmp_path, blessed: bool) -> str:
    d = tmp_path / f"eval-{blessed}"
    d.mkdir()
    (d / BLESSING_FILE).write_text(Blessing(blessed, "because").to_json())
    return str(d)


def _visible(model_root) -> list[str]:
    """What TF Serving would consider: the integer directories."""
    return sorted(n for n in os.listdir(model_root) if n.isdigit()) if os.path.isdir(model_root) else []


def test_unblessed_model_is_not_pushed(good_model_dir, tmp_path):
    result = push(good_model_dir, _blessing(tmp_path, False), str(tmp_path / "serving"))
    assert not result.pushed and "not blessed" in result.reason
    assert not (tmp_path / "serving").exists()


def test_good_model_is_pushed_with_its_threshold_and_lineage(good_model_dir, evaluation_dir, statistics_dir,
                                                             separable_examples_dir, tmp_path):
    result = push(good_model_dir, evaluation_dir, str(tmp_path / "serving"), FAST, statistics_dir, run_id="run-42")
    assert result.pushed and result.version == 1, result.reason
    assert result.infra_validation["passed"] and result.infra_validation["latency_ms"]["p95"] > 0
    version_dir = tmp_path / "serving" / "radflow" / "1"
    assert os.listdir(tmp_path / "serving" / "radflow") == ["1"]  # no staging left behind
    with open(os.path.join(evaluation_dir, "metrics.json")) as f:
        chosen = json.load(f)["threshold"]
    assert float((version_dir / "assets" / THRESHOLD_ASSET).read_text()) == chosen
    # The server answers with the stored threshold, so clients and server apply the same decision.
    with open(os.path.join(evaluation_dir, CANARY_FILE)) as f:
        canary = json.load(f)
    import base64

    serve = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    answer = serve(**{SERVING_INPUT: tf.constant([base64.b64decode(canary["image_bytes_b64"][0])])})
    assert answer[THRESHOLD].numpy()[0] == pytest.approx(chosen, abs=1e-7)
    assert np.allclose(answer[SCORES].numpy()[0], canary["scores"][0], atol=1e-5)

    lineage = read_lineage(str(tmp_path / "serving" / "radflow"), 1)
    assert lineage["run_id"] == "run-42" and lineage["parent_version"] is None and lineage["rollback_of"] is None
    assert lineage["threshold"] == chosen and lineage["metrics"]["roc_auc"] > 0.9
    assert lineage["config"]["evaluate"]["threshold_method"] == "target_sensitivity"
    assert lineage["config"]["training"]["best_epoch"] >= 1 and "counts" in lineage["data"]
    fingerprint = ex.read_metadata(separable_examples_dir).input_fingerprint
    assert len(fingerprint) == 64 and lineage["data_fingerprint"] == fingerprint
    with open(os.path.join(evaluation_dir, MODEL_CARD_FILE)) as f:
        assert f"data fingerprint: {fingerprint}" in f.read()
    copied = version_dir / LINEAGE_DIR / TRAIN_STATISTICS_FILE
    assert copied.read_bytes() == open(os.path.join(statistics_dir, "statistics", "train.pb"), "rb").read()
    assert (version_dir / LINEAGE_DIR / LINEAGE_FILE).exists()
    assert (version_dir / LINEAGE_DIR / KERAS_MODEL_FILE).exists()  # for Grad-CAM on the served version
    # The Keras model the review page explains (Grad-CAM) is published with the version it belongs to.
    assert (version_dir / LINEAGE_DIR / "model.keras").read_bytes() == open(
        os.path.join(good_model_dir, "model.keras"), "rb").read()


def test_existing_versions_are_never_overwritten(good_model_dir, evaluation_dir, tmp_path):
    root = tmp_path / "serving" / "radflow"
    (root / "7").mkdir(parents=True)
    (root / "7" / "marker").write_text("old")
    judged = tmp_path / "evaluation"  # an evaluation that was judged against that version 7
    shutil.copytree(evaluation_dir, judged)
    blessing = json.loads((judged / BLESSING_FILE).read_text())
    (judged / BLESSING_FILE).write_text(json.dumps({**blessing, "baseline_version": 7}))
    result = push(good_model_dir, str(judged), str(tmp_path / "serving"), FAST)
    assert result.version == 8
    assert (root / "7" / "marker").read_text() == "old"
    assert read_lineage(str(root), 8)["parent_version"] == 7


def test_a_blessing_judged_against_an_older_production_is_refused_or_compared_again(good_model_dir, evaluation_dir,
                                                                                   tmp_path):
    """The same run pushed twice used to become versions 1, 2 and 3, each 'with no production model yet'."""
    serving = str(tmp_path / "serving")
    first = push(good_model_dir, evaluation_dir, serving, FAST)
    assert first.pushed and first.production_check == {"judged_against": None, "at_push": None,
                                                       "action": "unchanged", "reason": ""}
    again = push(good_model_dir, evaluation_dir, serving, FAST)
    assert not again.pushed and again.production_check["action"] == "refused"
    assert "stale blessing: the blessing was judged against no production model, but production under" in again.reason
    assert "is now version 1" in again.reason and versions(os.path.join(serving, "radflow")) == [1]
    recompared = push(good_model_dir, evaluation_dir, serving, PushConfig(latency_requests=3,
                                                                          on_stale_blessing="recompare"))
    assert recompared.pushed and recompared.version == 2, recompared.reason
    check = read_lineage(os.path.join(serving, "radflow"), 2)["production_check"]
    assert check["action"] == "recompared" and check["judged_against"] is None and check["at_push"] == 1
    assert check["gates"]["roc_auc_vs_production"]["passed"]  # the same model: a difference of exactly 0
    assert check["gates"]["roc_auc_vs_production"]["difference_ci_lower"] == 0


def test_retention_keeps_the_newest_and_never_the_served_one(tmp_path):
    root = tmp_path / "radflow"
    for v in (1, 2, 3, 5, 9):
        (root / str(v)).mkdir(parents=True)
        (root / str(v) / "saved_model.pb").write_bytes(b"x")
    assert apply_retention(str(root), 0) == [] and versions(str(root)) == [1, 2, 3, 5, 9]
    assert apply_retention(str(root), 2) == [1, 2, 3]
    assert _visible(root) == ["5", "9"] and live_version(str(root)) == 9
    assert apply_retention(str(root), 1) == [5] and _visible(root) == ["9"]
    assert not [n for n in os.listdir(root) if n.startswith(STAGING_PREFIX)]  # deleted, not just hidden


def _corrupted_copy(good_model_dir: str, out) -> str:
    shutil.copytree(good_model_dir, out)
    variables = out / SAVED_MODEL_DIR / "variables"
    data = next(p for p in variables.iterdir() if p.name.startswith("variables.data"))
    data.write_bytes(data.read_bytes()[:16])  # a truncated upload
    return str(out)


def test_model_failing_infra_validation_is_not_pushed(good_model_dir, evaluation_dir, tmp_path):
    broken = _corrupted_copy(good_model_dir, tmp_path / "broken")
    result = push(broken, evaluation_dir, str(tmp_path / "serving"), FAST)
    assert not result.pushed and result.reason.startswith("infra validation failed: serving_default failed")
    assert os.listdir(tmp_path / "serving" / "radflow") == []  # nothing published, staging removed


def test_model_other_than_the_evaluated_one_fails_infra_validation(good_model_dir, evaluation_dir,
                                                                   separable_examples_dir, tmp_path):
    model = keras.models.load_model(os.path.join(good_model_dir, KERAS_MODEL_FILE), compile=False)
    kernel, bias = model.get_layer("scores").get_weights()
    model.get_layer("scores").set_weights([np.zeros_like(kernel), bias])
    export_serving(model, ex.read_metadata(separable_examples_dir), str(tmp_path / "other" / SAVED_MODEL_DIR))
    result = push(str(tmp_path / "other"), evaluation_dir, str(tmp_path / "serving"), FAST)
    assert not result.pushed and "not the model that was evaluated" in result.reason
    assert _visible(tmp_path / "serving" / "radflow") == []


PUSH_SCRIPT = """
import sys
from radflow.components.push.config import PushConfig
from radflow.components.push.push import push
push(sys.argv[1], sys.argv[2], sys.argv[3], PushConfig(latency_requests=3))
"""


def test_killing_a_push_leaves_no_visible_partial_version(good_model_dir, evaluation_dir, tmp_path):
    model_root = tmp_path / "serving" / "radflow"
    proc = subprocess.Popen([sys.executable, "-c", PUSH_SCRIPT, good_model_dir, evaluation_dir,
                             str(tmp_path / "serving")], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (model_root.is_dir() and any(n.startswith(STAGING_PREFIX) for n in os.listdir(model_root))):
            assert proc.poll() is None and time.monotonic() < deadline, "the push never started staging"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole process group, as a node failure would
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert _visible(model_root) == [] and versions(str(model_root)) == []
    assert all(n.startswith(STAGING_PREFIX) for n in os.listdir(model_root))  # only hidden leftovers


def test_models_lists_versions_and_rollback_serves_an_earlier_one(good_model_dir, evaluation_dir, tmp_path, capsys):
    serving = str(tmp_path / "serving")
    push(good_model_dir, evaluation_dir, serving, FAST)
    (tmp_path / "serving" / "radflow" / "2").mkdir()  # a later version, e.g. pushed by hand
    shutil.copytree(tmp_path / "serving" / "radflow" / "1", tmp_path / "serving" / "radflow" / "2",
                    dirs_exist_ok=True)
    assert main(["models", serving]) == 0
    listing = capsys.readouterr().out
    assert "  2" in listing and "live" in listing.splitlines()[-1]

    assert main(["rollback", serving, "--to", "1"]) == 0
    capsys.readouterr()
    infos = list_versions(serving)
    assert [(i.version, i.live, i.rollback_of, i.parent_version) for i in infos] == [
        (1, False, None, None), (2, False, None, None), (3, True, 1, 2)]
    one, three = (tmp_path / "serving" / "radflow" / v / "saved_model.pb" for v in ("1", "3"))
    assert one.read_bytes() == three.read_bytes()
    assert main(["rollback", serving, "--to", "3"]) == 1  # already served
    assert "already the one served" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not published"):
        rollback(serving, 5)


def test_push_refuses_an_unfinished_model(evaluation_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="saved_model"):
        push(str(tmp_path / "empty"), evaluation_dir, str(tmp_path / "serving"))
