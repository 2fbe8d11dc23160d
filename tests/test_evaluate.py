import json
import os

import numpy as np
import pytest

from radflow.components.evaluate.config import EvaluateConfig
from radflow.components.evaluate.evaluate import (
    BLESSING_FILE,
    classification_metrics,
    confusion_matrix,
    decide_blessing,
    evaluate,
    read_blessing,
    roc_auc,
    roc_curve,
)


def test_roc_auc_matches_hand_counts():
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)  # 3 of 4 pairs ordered
    assert roc_auc(y, np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(0.5)  # ties count half
    assert roc_auc(y, np.array([0.9, 0.8, 0.1, 0.2])) == 0.0
    assert np.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_roc_curve_runs_from_origin_to_corner():
    curve = roc_curve(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert (curve["fpr"][0], curve["tpr"][0]) == (0.0, 0.0)
    assert (curve["fpr"][-1], curve["tpr"][-1]) == (1.0, 1.0)
    assert curve["tpr"] == [0.0, 0.5, 0.5, 1.0, 1.0]


def test_binary_metrics_at_threshold():
    # 3 positives, 2 negatives; at 0.5: TP=2, FN=1, TN=1, FP=1.
    y = np.array([1, 1, 1, 0, 0])
    p = np.array([0.9, 0.6, 0.2, 0.7, 0.1])
    m = classification_metrics(y, np.stack([1 - p, p], axis=1), threshold=0.5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["roc_auc"] == pytest.approx(4 / 6)
    assert confusion_matrix(y, (p >= 0.5).astype(int), 2).tolist() == [[1, 1], [1, 2]]


def test_multiclass_metrics_are_macro_averages():
    y = np.array([0, 1, 2, 2])
    scores = np.eye(3)[[0, 1, 2, 1]]  # last example wrong: predicted 1
    m = classification_metrics(y, scores, threshold=0.5)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["recall"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["precision"] == pytest.approx((1 + 0.5 + 1) / 3)


def test_blessing_gates():
    assert decide_blessing({"roc_auc": 0.9}, EvaluateConfig(min_roc_auc=0.85)).blessed
    failed = decide_blessing({"roc_auc": 0.8}, EvaluateConfig(min_roc_auc=0.85))
    assert not failed.blessed and "roc_auc 0.8000 < 0.85" in failed.reason
    assert failed.gates["roc_auc"] == {"value": 0.8, "bound": 0.85, "passed": False}
    assert not decide_blessing({"roc_auc": float("nan")}, EvaluateConfig()).blessed
    ungated = decide_blessing({"roc_auc": 0.99}, EvaluateConfig(min_roc_auc=None))
    assert not ungated.blessed and "no evaluation gate" in ungated.reason


def test_evaluate_scores_the_export_and_writes_blessing(model_dir, examples_dir, tmp_path):
    result = evaluate(model_dir, examples_dir, str(tmp_path), EvaluateConfig(min_roc_auc=0.0))
    assert result.blessing.blessed
    assert read_blessing(str(tmp_path)) == result.blessing
    assert sum(map(sum, result.confusion_matrix)) == result.metrics["num_examples"] > 0
    with open(tmp_path / "metrics.json") as f:
        assert json.load(f)["split"] == "test"
    assert os.path.getsize(tmp_path / "roc.png") > 1000 and os.path.getsize(tmp_path / "confusion_matrix.png") > 1000
    strict = evaluate(model_dir, examples_dir, str(tmp_path / "strict"), EvaluateConfig(min_roc_auc=1.01))
    assert not strict.blessing.blessed


def test_missing_blessing_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=BLESSING_FILE):
        read_blessing(str(tmp_path))
