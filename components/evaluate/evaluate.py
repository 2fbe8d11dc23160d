"""evaluate: test-split metrics of the exported model, its operating threshold, and the blessing that gates push.

The model evaluated is the exported SavedModel, called through `serving_default` on encoded
images, so the numbers describe exactly what TF Serving will answer. The decision threshold is
chosen on the validation split (never test) and recorded for push, which stores it in the
served version. The test metrics at that threshold carry 95% intervals from a bootstrap over
patients. The blessing needs every configured absolute gate to pass and, when a production
model exists, no gated metric to fall more than `max_regression` below production's on the
same test images. Push reads the blessing, as TFX's Pusher does.

    radflow evaluate runs/model runs/examples runs/evaluation --serving-root models
"""

from __future__ import annotations

import base64
import json
import logging
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import tensorflow as tf

from radflow import examples as ex
from radflow import fileio
from radflow.components.evaluate import metrics as mx
from radflow.components.evaluate import model_card
from radflow.components.evaluate.config import EvaluateConfig
from radflow.components.train.train import SAVED_MODEL_DIR, SCORES, SERVING_INPUT, THRESHOLD

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CANARY_FILE = "canary.json"  # encoded test images and the scores evaluate saw: push's infra-validation requests
BLESSING_FILE = "blessing.json"  # written last; push refuses a model without it
EVAL_SPLIT = "test"
THRESHOLD_SPLIT = "val"


@dataclass(frozen=True)
class Blessing:
    """The gate's decision, with every gate's value, bound and outcome, and why in one paragraph.

    Args:
        blessed: push may publish the model.
        reason: one paragraph a reviewer can read.
        gates: gate name -> {"value", "bound", "passed"}; a comparison gate's value is the
            candidate's metric and its bound production's minus the tolerance.
        baseline_version: the production version compared against, None for the first model.
    """

    blessed: bool
    reason: str
    gates: dict[str, dict[str, float | bool]] = field(default_factory=dict)
    baseline_version: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Blessing:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Baseline:
    """The production model's metrics on the same test images, at its own served threshold."""

    version: int
    metrics: dict[str, float]
    threshold: float | None


@dataclass
class Scored:
    """A split scored through `serving_default`."""

    labels: np.ndarray  # (N,) int
    scores: np.ndarray  # (N, K) float
    patients: np.ndarray  # (N,) str patient keys
    served_threshold: float | None  # the `threshold` output; None for exports without one
    encoded: list[bytes]  # the PNG requests of the first `keep_encoded` images
    images: np.ndarray | None = None  # (N, H, W, C) uint8 when asked for


@dataclass(frozen=True)
class EvaluationResult:
    metrics: dict[str, float]  # test metrics at the operating threshold, plus num_examples, num_patients
    intervals: dict[str, tuple[float, float]]  # metric -> bootstrap interval over patients
    threshold: float | None  # operating threshold on the positive score (binary models)
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted class
    label_names: list[str]
    blessing: Blessing
    roc_curve: dict[str, list[float]]  # fpr, tpr, thresholds (binary models; empty otherwise)
    baseline: Baseline | None = None


# Absolute gates: name -> (config field, metric it bounds from below).
ABSOLUTE_GATES = {
    "roc_auc": ("min_roc_auc", "roc_auc"),
    "sensitivity": ("min_sensitivity", "recall"),
    "specificity": ("min_specificity", "specificity"),
    "roc_auc_ci_lower": ("min_roc_auc_ci_lower", "roc_auc"),
}


def score_split(
    saved_model_dir: str, examples_dir: str, split: str, batch_size: int, keep_encoded: int = 0,
    keep_images: bool = False,
) -> Scored:
    """Scores a split through the exported `serving_default` signature on PNG-encoded images.

    Raises:
        ValueError: the split is empty.
    """
    metadata = ex.read_metadata(examples_dir)
    outputs = tf.saved_model.load(saved_model_dir).signatures["serving_default"]
    labels, scores, patients, images, encoded, thresholds = [], [], [], [], [], []
    for batch in ex.iter_split(examples_dir, split, metadata, batch_size):
        requests = [tf.io.encode_png(img).numpy() for img in batch[ex.IMAGE]]
        answer = outputs(**{SERVING_INPUT: tf.constant(requests)})
        scores.append(answer[SCORES].numpy())
        if THRESHOLD in answer:
            thresholds.append(float(answer[THRESHOLD].numpy()[0]))
        labels.append(batch[ex.LABEL])
        patients.append(batch[ex.PATIENT_KEY].astype(str))
        encoded.extend(requests[: max(0, keep_encoded - len(encoded))])
        if keep_images:
            images.append(batch[ex.IMAGE])
    if not labels:
        raise ValueError(f"split {split!r} of {examples_dir} is empty; nothing to evaluate on")
    return Scored(np.concatenate(labels), np.concatenate(scores), np.concatenate(patients),
                  thresholds[0] if thresholds else None, encoded, np.concatenate(images) if keep_images else None)


def choose_operating_threshold(val: Scored, config: EvaluateConfig) -> float | None:
    """The binary decision threshold chosen on the validation split; None for multi-class (argmax)."""
    if val.scores.shape[1] != 2:
        return None
    return mx.choose_threshold(val.labels, val.scores[:, 1], config.threshold_method,
                               config.target_sensitivity, config.fixed_threshold)


def decide_blessing(
    metrics: dict[str, float],
    intervals: dict[str, tuple[float, float]],
    config: EvaluateConfig,
    baseline: Baseline | None = None,
    limitations: list[str] = (),
) -> Blessing:
    """Blesses only when at least one absolute gate is configured and every gate passes.

    Args:
        metrics: the candidate's test metrics at its operating threshold.
        intervals: their bootstrap intervals.
        config: the gates and the tolerance.
        baseline: production's metrics on the same images; None for the first model.
        limitations: what the data's reader must know (`data_limitations`), stated in the reason.

    Returns:
        The blessing, each gate with value, bound and outcome, and a one-paragraph reason.
    """
    gates: dict[str, dict[str, float | bool]] = {}
    for name, (option, metric) in ABSOLUTE_GATES.items():
        bound = getattr(config, option)
        if bound:  # None or 0 bounds nothing
            value = intervals[metric][0] if name.endswith("_ci_lower") else metrics[metric]
            gates[name] = {"value": value, "bound": bound, "passed": bool(np.isfinite(value) and value >= bound)}
    if not gates:
        return Blessing(False, "Not blessed: no absolute evaluation gate is configured (min_roc_auc, "
                        "min_sensitivity, min_specificity, min_roc_auc_ci_lower), and a model is never blessed "
                        "without one.", gates, baseline.version if baseline else None)
    absolute = dict(gates)
    if baseline is not None:
        for name, (_, metric) in ABSOLUTE_GATES.items():
            if name in absolute and not name.endswith("_ci_lower"):
                value, prod = metrics[metric], baseline.metrics[metric]
                bound = prod - config.max_regression
                gates[f"{name}_vs_production"] = {"value": value, "bound": bound, "production": prod,
                                                  "passed": bool(np.isfinite(value) and value >= bound)}
    blessed = all(g["passed"] for g in gates.values())
    reason = _reason(gates, absolute, metrics, intervals, config, baseline)
    if limitations:
        reason += " Limitations: " + " ".join(limitations)
    return Blessing(blessed, reason, gates, baseline.version if baseline else None)


def _reason(gates: dict, absolute: dict, metrics: dict[str, float], intervals: dict[str, tuple[float, float]],
            config: EvaluateConfig, baseline: Baseline | None) -> str:
    failed = [n for n, g in gates.items() if not g["passed"]]
    lo, hi = intervals["roc_auc"]
    summary = (f"On {int(metrics['num_examples'])} test images from {int(metrics['num_patients'])} patients the "
               f"model reaches ROC AUC {metrics['roc_auc']:.3f} ({config.ci_level:.0%} CI {lo:.3f}-{hi:.3f}), "
               f"sensitivity {metrics['recall']:.3f} and specificity {metrics['specificity']:.3f} at its operating "
               "threshold.")
    checks = "; ".join(f"{n} {g['value']:.4f} {'>=' if g['passed'] else '<'} {g['bound']:.4f}"
                       for n, g in absolute.items())
    if baseline is None:
        compared = "There is no production model yet, so it is judged on the absolute gates alone."
    else:
        worse = [f"{n.removesuffix('_vs_production')} {g['value']:.4f} vs production {g['production']:.4f}"
                 for n, g in gates.items() if n.endswith("_vs_production") and not g["passed"]]
        compared = (f"Against production version {baseline.version} on the same images, "
                    + (f"it regresses by more than the {config.max_regression} tolerance: {'; '.join(worse)}."
                       if worse else f"no gated metric falls more than {config.max_regression} below production's."))
    verdict = "Blessed" if not failed else f"Not blessed: failed {', '.join(failed)}"
    return f"{verdict}. {summary} Absolute gates: {checks}. {compared}"


def production_version(serving_root: str | None, model_name: str) -> tuple[int, str] | None:
    """The served (highest) version under <serving_root>/<model_name> and its path, or None."""
    from radflow.components.push.layout import live_version, version_path

    if not serving_root:
        return None
    model_root = os.path.join(serving_root, model_name)
    version = live_version(model_root)
    return None if version is None else (version, version_path(model_root, version))


def score_baseline(version: int, path: str, examples_dir: str, test: Scored, config: EvaluateConfig) -> Baseline:
    """Production's test metrics on the candidate's test images, at the threshold production serves.

    Raises:
        ValueError: production classifies into different classes, so no comparison is meaningful.
    """
    prod = score_split(path, examples_dir, EVAL_SPLIT, config.batch_size)
    if prod.scores.shape != test.scores.shape:
        raise ValueError(f"production version {version} at {path} answers {prod.scores.shape[1]} classes, the "
                         f"candidate {test.scores.shape[1]}; they cannot be compared")
    threshold = prod.served_threshold if prod.served_threshold is not None else config.fixed_threshold
    threshold = threshold if test.scores.shape[1] == 2 else None
    metrics = mx.compute_metrics(prod.labels, prod.scores, threshold)
    return Baseline(version, metrics, threshold)


def data_limitations(metadata: ex.DatasetMetadata) -> list[str]:
    """What a reader of the metrics must know about the data they come from, one sentence each."""
    limits = []
    without = metadata.patient_ids.get("none", 0)
    if metadata.image_level_splits:
        limits.append(f"Splits are image-level: {without} of {sum(metadata.patient_ids.values())} images had no "
                      "patient id (allow_image_level_splits), so one patient's images may sit in train and test "
                      "alike and the test metrics may be optimistic.")
    elif without:
        limits.append(f"{without} images had no patient id and were split as their own patients.")
    return limits


def data_summary(examples_dir: str, val: Scored, test: Scored) -> dict:
    """Counts per split and class, patients in val and test, ingest's input fingerprint and the data's limits."""
    metadata = ex.read_metadata(examples_dir)
    return {
        "counts": metadata.counts,
        "image_size": metadata.image_size,
        "patients": {THRESHOLD_SPLIT: int(len(set(mx.patient_groups(val.patients)))),
                     EVAL_SPLIT: int(len(set(mx.patient_groups(test.patients))))},
        "input_fingerprint": metadata.input_fingerprint,
        "layout": metadata.layout,
        "patient_ids": metadata.patient_ids,
        "image_level_splits": metadata.image_level_splits,
        "limitations": data_limitations(metadata),
        "examples_dir": examples_dir,
    }


def evaluate(
    model_dir: str,
    examples_dir: str,
    out_dir: str,
    config: EvaluateConfig = EvaluateConfig(),
    serving_root: str | None = None,
    model_name: str = "radflow",
) -> EvaluationResult:
    """Chooses the threshold on val, evaluates on test, compares with production, writes the blessing.

    Args:
        model_dir: a train output (holds saved_model/ and model.keras).
        examples_dir: the ingest output the model was trained on.
        out_dir: receives metrics.json, canary.json, plots, model_card.html and, last, blessing.json.
        config: threshold choice, gates, bootstrap.
        serving_root: where production versions live; None or no version means no comparison.
        model_name: the model's directory under serving_root.

    Returns:
        Metrics with intervals, the threshold, the confusion matrix, ROC curve and the blessing.
    """
    metadata = ex.read_metadata(examples_dir)
    saved_model = os.path.join(model_dir, SAVED_MODEL_DIR)
    val = score_split(saved_model, examples_dir, THRESHOLD_SPLIT, config.batch_size)
    threshold = choose_operating_threshold(val, config)
    test = score_split(saved_model, examples_dir, EVAL_SPLIT, config.batch_size, config.canary_images,
                       keep_images=True)

    metrics = mx.compute_metrics(test.labels, test.scores, threshold)
    intervals = mx.bootstrap_intervals(test.labels, test.scores, threshold, test.patients,
                                       config.bootstrap_resamples, config.ci_level, config.seed)
    metrics.update(num_examples=float(len(test.labels)), num_patients=float(mx.patient_groups(test.patients).max() + 1))
    val_metrics = mx.compute_metrics(val.labels, val.scores, threshold)

    production = production_version(serving_root, model_name)
    baseline = score_baseline(*production, examples_dir, test, config) if production else None
    blessing = decide_blessing(metrics, intervals, config, baseline, data_limitations(metadata))
    k = metadata.num_classes
    result = EvaluationResult(
        metrics=metrics,
        intervals=intervals,
        threshold=threshold,
        confusion_matrix=mx.confusion_matrix(test.labels, mx.predict(test.scores, threshold), k).tolist(),
        label_names=list(metadata.label_names),
        blessing=blessing,
        roc_curve=mx.roc_curve(test.labels, test.scores[:, 1]) if k == 2 else {},
        baseline=baseline,
    )
    os.makedirs(out_dir, exist_ok=True)
    summary = data_summary(examples_dir, val, test)
    report = {
        "split": EVAL_SPLIT,
        "metrics": metrics,
        "intervals": {n: list(v) for n, v in intervals.items()},
        "ci_level": config.ci_level,
        "threshold": threshold,
        "threshold_method": config.threshold_method,
        "threshold_split": THRESHOLD_SPLIT,
        "val_metrics_at_threshold": val_metrics,
        "per_class": mx.per_class_metrics(test.labels, test.scores, result.label_names) if k > 2 else {},
        "confusion_matrix": result.confusion_matrix,
        "label_names": result.label_names,
        "baseline": asdict(baseline) if baseline else None,
        "data": summary,
        "config": asdict(config),
    }
    fileio.write_text_atomic(os.path.join(out_dir, METRICS_FILE), json.dumps(report, indent=2))
    fileio.write_text_atomic(os.path.join(out_dir, CANARY_FILE), json.dumps({
        "image_bytes_b64": [base64.b64encode(b).decode() for b in test.encoded],
        "scores": test.scores[: len(test.encoded)].tolist(),
        "threshold": threshold,
    }))
    model_card.write_model_card(out_dir, model_dir, result, report, test, config)
    fileio.write_text_atomic(os.path.join(out_dir, BLESSING_FILE), blessing.to_json())
    log.info("evaluate: threshold %s; %s", threshold, blessing.reason)
    return result


def read_blessing(out_dir: str) -> Blessing:
    """The blessing in an evaluate output.

    Raises:
        FileNotFoundError: evaluate did not finish there.
    """
    path = os.path.join(out_dir, BLESSING_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} not found: {out_dir} is not a finished evaluation")
    return Blessing.from_json(fileio.read_text(path))


def read_report(out_dir: str) -> dict:
    """metrics.json of a finished evaluation: metrics, intervals, threshold, data summary, config."""
    read_blessing(out_dir)  # raises for an unfinished evaluation
    return json.loads(fileio.read_text(os.path.join(out_dir, METRICS_FILE)))
