import base64
import json
import os

import keras
import numpy as np
import pytest

from radflow import examples as ex
from radflow.components.evaluate import metrics as mx
from radflow.components.evaluate.config import EvaluateConfig
from radflow.components.evaluate.evaluate import (
    BLESSING_FILE,
    CANARY_FILE,
    Baseline,
    decide_blessing,
    evaluate,
    read_blessing,
    read_report,
)
from radflow.components.evaluate.model_card import MODEL_CARD_FILE
from radflow.components.train.train import KERAS_MODEL_FILE, SAVED_MODEL_DIR, export_serving

# 3 positives, 2 negatives; at 0.5: TP=2 (0.9, 0.6), FN=1 (0.2), FP=1 (0.7), TN=1 (0.1).
Y = np.array([1, 1, 1, 0, 0])
P = np.array([0.9, 0.6, 0.2, 0.7, 0.1])
SCORES = np.stack([1 - P, P], axis=1)


def test_roc_auc_matches_hand_counts():
    y = np.array([0, 0, 1, 1])
    assert mx.roc_auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)  # 3 of 4 pairs ordered
    assert mx.roc_auc(y, np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(0.5)  # ties count half
    assert mx.roc_auc(y, np.array([0.9, 0.8, 0.1, 0.2])) == 0.0
    assert np.isnan(mx.roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_roc_curve_runs_from_origin_to_corner():
    curve = mx.roc_curve(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert (curve["fpr"][0], curve["tpr"][0]) == (0.0, 0.0)
    assert (curve["fpr"][-1], curve["tpr"][-1]) == (1.0, 1.0)
    assert curve["tpr"] == [0.0, 0.5, 0.5, 1.0, 1.0]


def test_binary_metrics_at_threshold_match_hand_values():
    m = mx.compute_metrics(Y, SCORES, threshold=0.5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["npv"] == pytest.approx(1 / 2)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["mcc"] == pytest.approx((2 * 1 - 1 * 1) / np.sqrt(3 * 3 * 2 * 2))  # (TP.TN - FP.FN) / sqrt(...)
    assert m["roc_auc"] == pytest.approx(4 / 6)
    # Ranked 0.9+, 0.7-, 0.6+, 0.2+, 0.1-: AP = 1/3 * (1 + 2/3 + 3/4).
    assert m["pr_auc"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert m["brier"] == pytest.approx((0.01 + 0.16 + 0.64 + 0.49 + 0.01) / 5)
    assert m["ece"] == pytest.approx((0.1 + 0.4 + 0.8 + 0.7 + 0.1) / 5)  # one image per bin
    assert mx.confusion_matrix(Y, mx.predict(SCORES, 0.5), 2).tolist() == [[1, 1], [1, 2]]


def test_weights_act_as_copies_of_images():
    w = np.array([2, 1, 3, 1, 2])
    copies = np.repeat(np.arange(5), w)
    weighted = mx.compute_metrics(Y, SCORES, 0.5, w.astype(float))
    assert weighted == pytest.approx(mx.compute_metrics(Y[copies], SCORES[copies], 0.5))


def test_multiclass_metrics_are_macro_averages_with_per_class_detail():
    y = np.array([0, 1, 2, 2])
    scores = np.eye(3)[[0, 1, 2, 1]] * 0.8 + 0.2 / 3  # last example wrong: predicted 1
    m = mx.compute_metrics(y, scores, threshold=None)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["recall"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["precision"] == pytest.approx((1 + 0.5 + 1) / 3)
    per_class = mx.per_class_metrics(y, scores, ["a", "b", "c"])
    assert per_class["c"]["recall"] == 0.5 and per_class["b"]["precision"] == 0.5 and per_class["c"]["support"] == 2


def test_thresholds_chosen_by_hand():
    y = np.array([1, 1, 1, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.4, 0.3, 0.5, 0.1])
    # Walking down: 0.9 -> 1/4, 0.8 -> 2/4, 0.5 -> 2/4, 0.4 -> 3/4 of positives found.
    assert mx.choose_threshold(y, s, "target_sensitivity", target_sensitivity=0.75) == pytest.approx(0.4)
    assert mx.choose_threshold(y, s, "target_sensitivity", target_sensitivity=1.0) == pytest.approx(0.3)
    assert mx.choose_threshold(y, s, "youden") == pytest.approx(0.8)  # J = 0.5 - 0, the first maximum
    assert mx.choose_threshold(y, s, "fixed", fixed=0.42) == 0.42
    with pytest.raises(ValueError, match="unknown threshold method"):
        mx.choose_threshold(y, s, "median")
    with pytest.raises(ValueError, match="no positive"):
        mx.choose_threshold(np.zeros(3, int), s[:3], "youden")


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 1.0])
def test_chosen_threshold_meets_the_target_sensitivity_on_its_split(target):
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    t = mx.choose_threshold(y, s, "target_sensitivity", target_sensitivity=target)
    assert (s[y == 1] >= t).mean() >= target
    # ... and it is the most specific such threshold: the next score above it misses the target.
    above = s[s > t]
    if len(above):
        assert (s[y == 1] >= above.min()).mean() < target


def _clustered(n_patients: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three images per patient that share the patient's label and (almost) its score."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n_patients)
    score = np.clip(rng.normal(0.4 + 0.2 * label, 0.2), 0, 1)
    y = np.repeat(label, 3)
    s = np.clip(np.repeat(score, 3) + rng.normal(0, 0.01, 3 * n_patients), 0, 1)
    return y, np.stack([1 - s, s], axis=1), np.repeat([f"p{i}" for i in range(n_patients)], 3)


def test_confidence_intervals_narrow_as_data_grows():
    widths = []
    for n in (30, 300):
        y, scores, patients = _clustered(n, seed=n)
        ci = mx.bootstrap_intervals(y, scores, 0.5, patients, n_resamples=300)
        point = mx.compute_metrics(y, scores, 0.5)
        assert ci["roc_auc"][0] <= point["roc_auc"] <= ci["roc_auc"][1]
        widths.append({k: ci[k][1] - ci[k][0] for k in ("roc_auc", "recall", "specificity")})
    for metric in widths[0]:
        assert widths[1][metric] < 0.6 * widths[0][metric], metric  # ~1/sqrt(10) in theory


def test_bootstrap_resamples_patients_not_images():
    y, scores, patients = _clustered(60, seed=1)
    by_patient = mx.bootstrap_intervals(y, scores, 0.5, patients, n_resamples=300)
    by_image = mx.bootstrap_intervals(y, scores, 0.5, np.array([""] * len(y)), n_resamples=300)  # each its own
    # Three near-copies per patient are one piece of evidence, not three: the honest interval is wider.
    assert by_patient["roc_auc"][1] - by_patient["roc_auc"][0] > 1.4 * (by_image["roc_auc"][1] - by_image["roc_auc"][0])
    assert mx.patient_groups(np.array(["a", "", "a", ""])).tolist().count(0) + 1 == 2  # "" never groups


def _metrics(**overrides):
    base = {"roc_auc": 0.9, "recall": 0.92, "specificity": 0.7, "num_examples": 100.0, "num_patients": 40.0}
    return {**base, **overrides}


INTERVALS = {"roc_auc": (0.86, 0.94), "recall": (0.85, 0.97), "specificity": (0.6, 0.8)}


def test_absolute_gates_record_value_bound_and_outcome():
    blessing = decide_blessing(_metrics(), INTERVALS, EvaluateConfig())
    assert blessing.blessed and blessing.baseline_version is None
    assert blessing.gates["roc_auc_ci_lower"] == {"value": 0.86, "bound": 0.75, "passed": True}
    assert "no production model" in blessing.reason
    failed = decide_blessing(_metrics(recall=0.7), INTERVALS, EvaluateConfig())
    assert not failed.blessed and failed.gates["sensitivity"] == {"value": 0.7, "bound": 0.8, "passed": False}
    assert "failed sensitivity" in failed.reason and "sensitivity 0.7000 < 0.8000" in failed.reason
    low_ci = decide_blessing(_metrics(), {**INTERVALS, "roc_auc": (0.7, 0.95)}, EvaluateConfig())
    assert not low_ci.blessed and "roc_auc_ci_lower" in low_ci.reason
    assert not decide_blessing(_metrics(roc_auc=float("nan")), INTERVALS, EvaluateConfig()).blessed


def test_without_any_absolute_gate_nothing_is_blessed():
    ungated = EvaluateConfig(min_roc_auc=None, min_sensitivity=None, min_specificity=None, min_roc_auc_ci_lower=None)
    blessing = decide_blessing(_metrics(roc_auc=0.999), INTERVALS, ungated)
    assert not blessing.blessed and "no absolute evaluation gate" in blessing.reason
    # A production baseline the candidate beats does not bless it either.
    worse = Baseline(1, _metrics(roc_auc=0.5, recall=0.5, specificity=0.5), 0.5)
    assert not decide_blessing(_metrics(), INTERVALS, ungated, worse).blessed
    # A bound of 0 bounds nothing, so it does not count as a gate (KFP parameters cannot carry None).
    zeros = EvaluateConfig(min_roc_auc=0, min_sensitivity=0, min_specificity=0, min_roc_auc_ci_lower=0)
    assert not decide_blessing(_metrics(), INTERVALS, zeros).blessed


def test_regression_against_production_beyond_tolerance_is_rejected_with_reason():
    config = EvaluateConfig(max_regression=0.02)
    near = Baseline(4, _metrics(roc_auc=0.915, recall=0.93), 0.4)  # within 0.02 on both
    assert decide_blessing(_metrics(), INTERVALS, config, near).blessed
    better = Baseline(4, _metrics(roc_auc=0.95), 0.4)
    rejected = decide_blessing(_metrics(), INTERVALS, config, better)
    assert not rejected.blessed and rejected.baseline_version == 4
    assert rejected.gates["roc_auc_vs_production"]["passed"] is False
    assert rejected.gates["roc_auc_vs_production"]["bound"] == pytest.approx(0.93)
    assert "production version 4" in rejected.reason and "roc_auc 0.9000 vs production 0.9500" in rejected.reason


@pytest.fixture(scope="module")
def evaluation(good_model_dir, separable_examples_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("evaluation"))
    return out, evaluate(good_model_dir, separable_examples_dir, out, EvaluateConfig(bootstrap_resamples=200))


def test_good_model_is_blessed_with_threshold_chosen_on_validation(evaluation):
    out, result = evaluation
    assert result.blessing.blessed, result.blessing.reason
    assert read_blessing(out) == result.blessing
    report = read_report(out)
    assert report["split"] == "test" and report["threshold_split"] == "val"
    assert report["threshold"] == result.threshold
    # The operating threshold reaches the target sensitivity on validation, where it was chosen.
    assert report["val_metrics_at_threshold"]["recall"] >= EvaluateConfig().target_sensitivity
    assert sum(map(sum, result.confusion_matrix)) == result.metrics["num_examples"] == 48
    assert result.metrics["num_patients"] == 16
    for name in mx.METRIC_NAMES:
        low, high = result.intervals[name]
        assert low <= result.metrics[name] + 1e-9 and result.metrics[name] <= high + 1e-9, name


def test_canary_requests_are_real_encoded_test_images_with_their_scores(evaluation):
    out, result = evaluation
    with open(os.path.join(out, CANARY_FILE)) as f:
        canary = json.load(f)
    first = base64.b64decode(canary["image_bytes_b64"][0])
    assert first[:8] == b"\x89PNG\r\n\x1a\n" and len(canary["scores"]) == EvaluateConfig().canary_images
    assert canary["threshold"] == result.threshold


def test_model_card_is_self_contained_with_every_section(evaluation):
    out, _ = evaluation
    with open(os.path.join(out, MODEL_CARD_FILE)) as f:
        page = f.read()
    for section in ("Data", "Operating point", "confidence intervals", "Gates", "Curves", "What the model looks at"):
        assert section in page, section
    assert page.count("src='data:image/png;base64,") == 7  # ROC, PR, calibration, confusion, Grad-CAM, filters, maps
    assert "src='http" not in page and "src=\"" not in page
    for plot in ("roc.png", "pr.png", "calibration.png", "confusion_matrix.png", "grad_cam.png",
                 "first_layer_filters.png", "feature_maps.png"):
        assert os.path.getsize(os.path.join(out, plot)) > 3000, plot


def test_explained_examples_take_classes_in_turn_and_the_most_confident_errors():
    from types import SimpleNamespace

    from radflow.components.evaluate.model_card import _pick_examples

    p = np.array([0.95, 0.9, 0.8, 0.1, 0.4, 0.7, 0.05])
    labels = np.array([1, 1, 1, 0, 1, 0, 1])  # at 0.5: 0.4 and 0.05 are missed positives, 0.7 a false positive
    test = SimpleNamespace(scores=np.stack([1 - p, p], axis=1), labels=labels)
    correct, wrong = _pick_examples(SimpleNamespace(threshold=0.5), test, 3)
    assert correct == [3, 0, 1]  # NORMAL's only correct image, then PNEUMONIA's most confident ones
    assert wrong == [6, 5, 4]  # farthest from the threshold first


def _worse_copy(good_model_dir: str, metadata: ex.DatasetMetadata, out: str) -> str:
    """The good model with its output layer's weights zeroed: a constant predictor, ROC AUC 0.5."""
    model = keras.models.load_model(os.path.join(good_model_dir, KERAS_MODEL_FILE), compile=False)
    kernel, bias = model.get_layer("scores").get_weights()
    model.get_layer("scores").set_weights([np.zeros_like(kernel), bias])
    export_serving(model, metadata, os.path.join(out, SAVED_MODEL_DIR))
    return out


def test_model_worse_than_production_is_rejected_with_the_reason(good_model_dir, separable_examples_dir, tmp_path):
    from radflow.components.push.push import push

    serving_root = str(tmp_path / "serving")
    first = evaluate(good_model_dir, separable_examples_dir, str(tmp_path / "eval-good"),
                     EvaluateConfig(bootstrap_resamples=50, explain_images=0), serving_root=serving_root)
    assert first.blessing.blessed and first.baseline is None
    assert push(good_model_dir, str(tmp_path / "eval-good"), serving_root).version == 1

    worse = _worse_copy(good_model_dir, ex.read_metadata(separable_examples_dir), str(tmp_path / "worse"))
    lenient = EvaluateConfig(min_roc_auc=0.4, min_sensitivity=0.4, min_roc_auc_ci_lower=None,
                             bootstrap_resamples=50, explain_images=0)
    result = evaluate(worse, separable_examples_dir, str(tmp_path / "eval-worse"), lenient, serving_root=serving_root)
    assert result.metrics["roc_auc"] == pytest.approx(0.5)
    assert result.baseline.version == 1 and result.baseline.metrics["roc_auc"] > 0.9
    assert result.baseline.threshold == pytest.approx(first.threshold, abs=1e-6)  # production's served threshold
    blessing = read_blessing(str(tmp_path / "eval-worse"))
    assert not blessing.blessed
    assert blessing.gates["roc_auc"]["passed"] and not blessing.gates["roc_auc_vs_production"]["passed"]
    assert "production version 1" in blessing.reason and "regresses" in blessing.reason


def test_missing_blessing_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=BLESSING_FILE):
        read_blessing(str(tmp_path))


def test_image_level_splits_are_a_limitation_in_the_blessing_and_card():
    from radflow.components.evaluate.evaluate import data_limitations, decide_blessing

    metadata = ex.DatasetMetadata(("A", "B"), 16, patient_ids={"none": 90, "pattern": 10}, image_level_splits=True)
    [limit] = data_limitations(metadata)
    assert "image-level" in limit and "90 of 100 images had no patient id" in limit
    metrics = {"roc_auc": 0.95, "recall": 0.9, "specificity": 0.9, "num_examples": 40.0, "num_patients": 40.0}
    blessing = decide_blessing(metrics, {"roc_auc": (0.9, 0.99)}, EvaluateConfig(), limitations=[limit])
    assert blessing.reason.endswith("Limitations: " + limit)
    assert data_limitations(ex.DatasetMetadata(("A", "B"), 16, patient_ids={"pattern": 10})) == []
