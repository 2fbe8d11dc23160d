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
    evaluate,
    read_blessing,
    read_report,
)
from radflow.components.evaluate.gates import Baseline, Evidence, decide_blessing
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


def _evidence(metrics=None, rates=None, intervals=None, names=("NORMAL", "PNEUMONIA"), threshold=0.4):
    base = {"roc_auc": 0.93, "recall": 0.92, "specificity": 0.8, "num_examples": 100.0, "num_patients": 40.0}
    ci = {"roc_auc": (0.88, 0.97), "recall": (0.85, 0.97), "specificity": (0.7, 0.9)}
    return Evidence({**base, **(metrics or {})}, rates or {}, {**ci, **(intervals or {})}, list(names), threshold)


def test_default_gates_refuse_the_model_that_called_80_percent_of_normals_pneumonia():
    """The 2026-12-01 make run: blessed at specificity 0.200 because min_specificity defaulted to 0."""
    bad = _evidence({"roc_auc": 0.94, "recall": 0.99, "specificity": 0.2}, intervals={"specificity": (0.07, 0.37)})
    blessing = decide_blessing(bad, EvaluateConfig())
    assert not blessing.blessed
    assert blessing.gates["specificity"] == {"value": 0.2, "bound": 0.7, "passed": False}
    assert blessing.gates["specificity_ci_lower"]["passed"] is False
    assert "failed specificity, specificity_ci_lower" in blessing.reason


def test_both_error_types_and_their_ci_lower_ends_are_gated():
    good = decide_blessing(_evidence(), EvaluateConfig(), model_root="models/radflow")
    assert good.blessed and good.baseline_version is None and good.decision == "threshold"
    assert set(good.gates) == {"roc_auc", "roc_auc_ci_lower", "sensitivity", "sensitivity_ci_lower", "specificity",
                               "specificity_ci_lower"}
    assert good.gates["roc_auc_ci_lower"] == {"value": 0.88, "bound": 0.75, "passed": True}
    assert "no production model under models/radflow when it was judged" in good.reason
    assert "at its operating threshold 0.400" in good.reason
    shaky = decide_blessing(_evidence(intervals={"recall": (0.6, 0.99)}), EvaluateConfig())
    assert not shaky.blessed and "failed sensitivity_ci_lower" in shaky.reason
    assert not decide_blessing(_evidence({"roc_auc": float("nan")}), EvaluateConfig()).blessed


def test_three_classes_are_gated_class_by_class_not_on_the_macro_average():
    names = ("COVID19", "NORMAL", "PNEUMONIA")
    rates = {"recall/0": 0.97, "recall/1": 0.95, "recall/2": 0.79,  # macro 0.903 would pass 0.85
             "specificity/0": 0.96, "specificity/1": 0.9, "specificity/2": 0.95}
    intervals = {k: (v - 0.05, min(1, v + 0.05)) for k, v in rates.items()}
    evidence = _evidence({"recall": 0.903}, rates, intervals, names, threshold=None)
    blessing = decide_blessing(evidence, EvaluateConfig())
    assert not blessing.blessed and blessing.decision == "argmax"
    assert blessing.gates["sensitivity[PNEUMONIA]"] == {"value": 0.79, "bound": 0.85, "passed": False}
    assert blessing.gates["sensitivity[COVID19]"]["passed"] and "sensitivity" not in blessing.gates
    assert "decides by the highest score (argmax)" in blessing.reason and "the weakest is PNEUMONIA" in blessing.reason
    assert "operating threshold" not in blessing.reason


def test_without_any_gate_nothing_is_blessed():
    zeros = EvaluateConfig(min_roc_auc=0, min_roc_auc_ci_lower=0, min_sensitivity=0, min_sensitivity_ci_lower=0,
                           min_specificity=0, min_specificity_ci_lower=0)
    blessing = decide_blessing(_evidence({"roc_auc": 0.999}), zeros)
    assert not blessing.blessed and "no evaluation gate is configured" in blessing.reason
    assert not decide_blessing(_evidence(), zeros, _baseline(4, -0.2)).blessed  # beating production is no gate


def _baseline(version, low, metrics=None):
    """Production whose paired difference intervals (candidate - production) start at `low` for every metric."""
    m = {"roc_auc": 0.9, "recall": 0.9, "specificity": 0.8, **(metrics or {})}
    return Baseline(version, m, {}, 0.4, {k: (low, low + 0.1) for k in ("roc_auc", "recall", "specificity")})


def test_against_production_the_paired_difference_ci_must_stay_above_the_margin():
    config = EvaluateConfig(max_regression=0.05)
    assert decide_blessing(_evidence(), config, _baseline(4, -0.04), "m/radflow").blessed
    rejected = decide_blessing(_evidence(), config, _baseline(4, -0.07), "m/radflow")
    assert not rejected.blessed and rejected.baseline_version == 4
    gate = rejected.gates["roc_auc_vs_production"]
    assert gate["passed"] is False and gate["bound"] == -0.05 and gate["difference_ci_lower"] == -0.07
    assert gate["value"] == pytest.approx(0.03) and gate["production"] == 0.9
    assert "Judged against production version 4 of m/radflow" in rejected.reason
    assert "may be worse by more than the 0.05 margin" in rejected.reason


@pytest.fixture(scope="module")
def evaluation(good_model_dir, separable_examples_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("evaluation"))
    return out, evaluate(good_model_dir, separable_examples_dir, out, EvaluateConfig(bootstrap_resamples=200))


def test_good_model_is_blessed_with_threshold_chosen_on_validation(evaluation):
    out, result = evaluation
    assert result.blessing.blessed, result.blessing.reason
    assert read_blessing(out) == result.blessing
    report = read_report(out)
    point = report["operating_point"]
    assert report["split"] == "test" and point["source"] == "val" and report["decision"] == "threshold"
    assert report["threshold"] == result.threshold == point["threshold"]
    # The operating threshold reaches the target sensitivity on validation, where it was chosen, and the
    # bootstrap over validation patients says how firm that is.
    assert point["sensitivity"] >= EvaluateConfig().target_sensitivity
    assert point["sensitivity_interval"][0] <= point["sensitivity"] <= point["sensitivity_interval"][1]
    assert point["threshold_interval"][0] <= point["threshold"] <= point["threshold_interval"][1]
    assert point["patients"] == {"positive": 8, "negative": 8}
    # 8 patients per class cannot support a 95% target: said plainly, in metrics.json and the blessing.
    assert any("8 positive patients, too few for a 95% sensitivity target" in w for w in point["warnings"])
    assert "8 positive and 8 negative patients" in result.blessing.reason
    assert any("too few" in x for x in result.blessing.limitations)
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


def test_model_card_is_self_contained_with_every_section(evaluation, good_model_dir, separable_examples_dir):
    out, result = evaluation
    with open(os.path.join(out, MODEL_CARD_FILE)) as f:
        page = f.read()
    for section in ("Intended use and limitations", "not for clinical use", "What was trained, on what",
                    "Images and patients per split and class", "Operating point", "confidence intervals",
                    "Per class, one vs rest", "Gates", "Curves", "Error analysis", "What the model looks at",
                    "CLAIM checklist", "Every training option", "Every evaluation option"):
        assert section in page, section
    training = json.load(open(os.path.join(good_model_dir, "training.json")))
    assert f"{training['parameters']:,} parameters" in page and "baseline_cnn" in page
    assert f"Weights kept from epoch {training['best_epoch']}" in page
    assert "head: " in page and "epochs" in page  # the phases
    assert f"data fingerprint: {ex.read_metadata(separable_examples_dir).input_fingerprint}" in page
    assert "too few for a 95% sensitivity target" in page  # the thin-validation warning
    # ROC, PR, calibration, confusion, training curves, Grad-CAM, filters, feature maps; error analysis if any error
    errors = sum(map(sum, result.confusion_matrix)) - np.trace(result.confusion_matrix)
    assert page.count("src='data:image/png;base64,") == 8 + bool(errors)
    assert "src='http" not in page and "src=\"" not in page
    for plot in ("roc.png", "pr.png", "calibration.png", "confusion_matrix.png", "grad_cam.png",
                 "first_layer_filters.png", "feature_maps.png", "training_curves.png"):
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
    lenient = EvaluateConfig(min_roc_auc=0.4, min_sensitivity=0.4, min_roc_auc_ci_lower=0, min_specificity=0,
                             min_sensitivity_ci_lower=0, min_specificity_ci_lower=0, bootstrap_resamples=50,
                             explain_images=0)
    result = evaluate(worse, separable_examples_dir, str(tmp_path / "eval-worse"), lenient, serving_root=serving_root)
    assert result.metrics["roc_auc"] == pytest.approx(0.5)
    assert result.baseline.version == 1 and result.baseline.metrics["roc_auc"] > 0.9
    assert result.baseline.threshold == pytest.approx(first.threshold, abs=1e-6)  # production's served threshold
    blessing = read_blessing(str(tmp_path / "eval-worse"))
    assert not blessing.blessed and blessing.baseline_version == 1
    assert blessing.gates["roc_auc"]["passed"] and not blessing.gates["roc_auc_vs_production"]["passed"]
    assert blessing.gates["roc_auc_vs_production"]["difference_ci_lower"] < -0.3
    assert "production version 1" in blessing.reason and "may be worse" in blessing.reason


def test_missing_blessing_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=BLESSING_FILE):
        read_blessing(str(tmp_path))


def test_image_level_splits_are_a_limitation_in_the_blessing_and_card():
    from radflow.components.evaluate.evaluate import data_limitations

    metadata = ex.DatasetMetadata(("A", "B"), 16, patient_ids={"none": 90, "pattern": 10}, image_level_splits=True)
    [limit] = data_limitations(metadata)
    assert "image-level" in limit and "90 of 100 images had no patient id" in limit
    blessing = decide_blessing(_evidence(), EvaluateConfig(), limitations=[limit])
    assert blessing.reason.endswith("Limitations: " + limit) and blessing.limitations == [limit]
    assert data_limitations(ex.DatasetMetadata(("A", "B"), 16, patient_ids={"pattern": 10})) == []


def test_validates_shortcut_findings_reach_the_blessing_and_the_model_card(good_model_dir, separable_examples_dir,
                                                                          tmp_path):
    from radflow import fileio
    from radflow.components.validate import validate as v

    line = "feature 'source_format' alone predicts 'PNEUMONIA' at one-feature ROC AUC 1.000 (>= 0.8): PNG in 24 of 24"
    finding = v.ValidationResult(str(tmp_path / "validation"), True, [], {"train": 120}, [line], shortcuts=[line])
    fileio.write_text_atomic(str(tmp_path / "validation" / v.RESULT_FILE), v._to_json(finding))
    result = evaluate(good_model_dir, separable_examples_dir, str(tmp_path / "eval"),
                      EvaluateConfig(bootstrap_resamples=50, explain_images=0, error_analysis_images=0),
                      validation_dir=str(tmp_path / "validation"))
    assert f"Shortcut warning: {line}" in result.blessing.limitations and line in result.blessing.reason
    with open(tmp_path / "eval" / MODEL_CARD_FILE) as f:
        page = f.read()
    assert "Shortcut warnings (validate)" in page and "alone predicts &#x27;PNEUMONIA&#x27;" in page
