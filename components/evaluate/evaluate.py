"""evaluate: test-split metrics of the exported model, its operating threshold, and the blessing that gates push.

The model evaluated is the exported SavedModel, called through `serving_default` on encoded
images, so the numbers describe exactly what TF Serving will answer. The decision threshold of a
binary model is chosen on the validation split, or on the out-of-fold predictions of train's
cross-validation (never on test), with its own bootstrap uncertainty, and recorded for push,
which stores it in the served version; a model of more than two classes decides by the highest
score. The test metrics carry 95% intervals from a bootstrap over patients. The gates
(gates.py) bound sensitivity and specificity (per class beyond two) and their interval's lower
ends as well as ROC AUC and, against a production model, the paired interval of each
difference. Push reads the blessing, as TFX's Pusher does.

    radflow evaluate runs/model runs/examples runs/evaluation --serving-root models
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import tensorflow as tf

from radflow import examples as ex
from radflow import fileio
from radflow.components.evaluate import metrics as mx
from radflow.components.evaluate import model_card
from radflow.components.evaluate.config import EvaluateConfig
from radflow.components.evaluate.gates import ARGMAX, Baseline, Blessing, Evidence, decide_blessing
from radflow.components.train.train import SAVED_MODEL_DIR, SCORES, SERVING_INPUT, THRESHOLD

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CANARY_FILE = "canary.json"  # encoded test images and the scores evaluate saw: push's infra-validation requests
BLESSING_FILE = "blessing.json"  # written last; push refuses a model without it
EVAL_SPLIT = "test"
THRESHOLD_SPLIT = "val"


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
class OperatingPoint:
    """How a binary model's threshold was chosen, and how firmly it stands.

    Args:
        threshold: the operating threshold on the positive score; None for argmax models.
        source: "val", or "oof" (train's out-of-fold predictions); "" for argmax models.
        method: EvaluateConfig.threshold_method.
        patients: positive and negative patients it was chosen on.
        sensitivity, specificity: what it gives on that data, each with a patient-bootstrap interval.
        threshold_interval: where the threshold lands when it is chosen again on resampled patients.
        warnings: plain sentences when the data is too thin to support the target.
    """

    threshold: float | None
    source: str = ""
    method: str = ""
    patients: dict[str, int] = field(default_factory=dict)
    sensitivity: float = float("nan")
    sensitivity_interval: tuple[float, float] = (float("nan"), float("nan"))
    specificity: float = float("nan")
    specificity_interval: tuple[float, float] = (float("nan"), float("nan"))
    threshold_interval: tuple[float, float] = (float("nan"), float("nan"))
    warnings: list[str] = field(default_factory=list)

    def sentence(self, level: float) -> str:
        """One sentence for the blessing and the model card."""
        if self.threshold is None:
            return ""
        where = "the validation split" if self.source == "val" else "train's out-of-fold predictions"
        lo, hi = self.threshold_interval
        return (f"The threshold was chosen on {where} ({self.patients['positive']} positive and "
                f"{self.patients['negative']} negative patients) by {self.method}; there it gives sensitivity "
                f"{self.sensitivity:.3f} ({level:.0%} CI {self.sensitivity_interval[0]:.3f}-"
                f"{self.sensitivity_interval[1]:.3f}) and specificity {self.specificity:.3f} "
                f"({self.specificity_interval[0]:.3f}-{self.specificity_interval[1]:.3f}), and chosen again on "
                f"resampled patients it lands between {lo:.3f} and {hi:.3f}.")


@dataclass(frozen=True)
class EvaluationResult:
    metrics: dict[str, float]  # test metrics at the operating threshold, plus num_examples, num_patients
    intervals: dict[str, tuple[float, float]]  # metric (and class rate) -> bootstrap interval over patients
    threshold: float | None  # operating threshold on the positive score (binary models)
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted class
    label_names: list[str]
    blessing: Blessing
    roc_curve: dict[str, list[float]]  # fpr, tpr, thresholds (binary models; empty otherwise)
    baseline: Baseline | None = None
    rates: dict[str, float] = field(default_factory=dict)  # each class's recall and specificity
    operating_point: OperatingPoint = field(default_factory=lambda: OperatingPoint(None))


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


def patients_needed(target_sensitivity: float) -> int:
    """Patients of a class needed before one of them moves a rate by less than 1 - target: 20 for 95%."""
    return math.ceil(1 / max(1e-9, 1 - target_sensitivity) - 1e-9)


def choose_operating_point(chosen_on: Scored, source: str, config: EvaluateConfig) -> OperatingPoint:
    """The binary decision threshold, chosen on `chosen_on` (val or out-of-fold, never test), with its
    uncertainty and a plain warning when that data holds too few patients of a class for the target.

    Args:
        chosen_on: the scored examples to choose on.
        source: "val" or "oof", recorded.
        config: the method, target and bootstrap settings.

    Returns:
        The operating point; threshold None for a model of more than two classes (argmax).
    """
    if chosen_on.scores.shape[1] != 2:
        return OperatingPoint(None)
    y, score = chosen_on.labels, chosen_on.scores[:, 1]
    threshold = mx.choose_threshold(y, score, config.threshold_method, config.target_sensitivity,
                                    config.fixed_threshold)
    groups = mx.patient_groups(chosen_on.patients)
    patients = {"positive": len(set(groups[y == 1])), "negative": len(set(groups[y != 1]))}
    intervals = mx.bootstrap_intervals(y, chosen_on.scores, threshold, chosen_on.patients,
                                       config.bootstrap_resamples, config.ci_level, config.seed)
    at = mx.compute_metrics(y, chosen_on.scores, threshold)
    needed = patients_needed(config.target_sensitivity)
    warnings = []
    if config.threshold_method != "fixed" and patients["positive"] < needed:
        warnings.append(f"The threshold was chosen on {patients['positive']} positive patients, too few for a "
                        f"{config.target_sensitivity:.0%} sensitivity target: one missed patient moves "
                        f"sensitivity by {1 / max(1, patients['positive']):.0%}, and {needed} are needed.")
    if patients["negative"] < needed:
        warnings.append(f"The specificity at this threshold rests on {patients['negative']} negative patients; "
                        f"with fewer than {needed} it may not hold on new data.")
    return OperatingPoint(
        threshold=threshold, source=source, method=config.threshold_method, patients=patients,
        sensitivity=at["recall"], sensitivity_interval=intervals["recall"], specificity=at["specificity"],
        specificity_interval=intervals["specificity"],
        threshold_interval=mx.threshold_interval(y, score, chosen_on.patients, config.threshold_method,
                                                 config.target_sensitivity, config.bootstrap_resamples,
                                                 config.ci_level, config.seed) if config.threshold_method != "fixed"
        else (threshold, threshold),
        warnings=warnings)


def production_version(serving_root: str | None, model_name: str) -> tuple[int, str] | None:
    """The served (highest) version under <serving_root>/<model_name> and its path, or None."""
    from radflow.components.push.layout import live_version, version_path

    if not serving_root:
        return None
    model_root = os.path.join(serving_root, model_name)
    version = live_version(model_root)
    return None if version is None else (version, version_path(model_root, version))


def score_baseline(version: int, path: str, examples_dir: str, test: Scored, candidate_threshold: float | None,
                   config: EvaluateConfig) -> Baseline:
    """Production on the candidate's test images at the threshold it serves, with the paired intervals of
    candidate minus production.

    Raises:
        ValueError: production classifies into different classes, so no comparison is meaningful.
    """
    prod = score_split(path, examples_dir, EVAL_SPLIT, config.batch_size)
    if prod.scores.shape != test.scores.shape:
        raise ValueError(f"production version {version} at {path} answers {prod.scores.shape[1]} classes, the "
                         f"candidate {test.scores.shape[1]}; they cannot be compared")
    threshold = prod.served_threshold if prod.served_threshold is not None else config.fixed_threshold
    threshold = threshold if test.scores.shape[1] == 2 else None
    differences = mx.paired_differences(test.labels, (test.scores, candidate_threshold), (prod.scores, threshold),
                                        test.patients, config.bootstrap_resamples, config.ci_level, config.seed)
    return Baseline(version, mx.compute_metrics(prod.labels, prod.scores, threshold),
                    mx.class_rates(prod.labels, prod.scores, threshold), threshold, differences)


def data_limitations(metadata: ex.DatasetMetadata) -> list[str]:
    """What a reader of the metrics must know about the data they come from, one sentence each."""
    limits = []
    if metadata.synthetic:
        limits.append("The data is synthetic (radflow synth): the figures show that the pipeline works, not how a "
                      "model would do on radiographs.")
    without = metadata.patient_ids.get("none", 0)
    if metadata.image_level_splits:
        limits.append(f"Splits are image-level: {without} of {sum(metadata.patient_ids.values())} images had no "
                      "patient id (allow_image_level_splits), so one patient's images may sit in train and test "
                      "alike and the test metrics may be optimistic.")
    elif without:
        limits.append(f"{without} images had no patient id and were split as their own patients.")
    return limits


def patients_per_class(examples_dir: str, metadata: ex.DatasetMetadata) -> dict[str, dict[str, int]]:
    """Distinct patients per split and class (an image without a patient key is its own patient)."""
    from radflow.components.train.data import read_index

    out = {}
    for split in ex.SPLITS:
        if not ex.split_files(examples_dir, split):
            continue
        keys, labels = read_index(examples_dir, (split,), metadata)
        out[split] = {name: len({k for k, y in zip(keys, labels.tolist(), strict=True) if y == c})
                      for c, name in enumerate(metadata.label_names)}
    return out


def data_summary(examples_dir: str, test: Scored) -> dict:
    """Images and patients per split and class, ingest's input fingerprint, and the data's limits."""
    metadata = ex.read_metadata(examples_dir)
    return {
        "counts": metadata.counts,
        "patients_per_class": patients_per_class(examples_dir, metadata),
        "image_size": metadata.image_size,
        "channels": metadata.channels,
        "resize_policy": metadata.resize_policy,
        "patients": {EVAL_SPLIT: int(len(set(mx.patient_groups(test.patients))))},
        "input_fingerprint": metadata.input_fingerprint,
        "layout": metadata.layout,
        "states": metadata.states,
        "quarantine_reasons": metadata.quarantine_reasons,
        "patient_ids": metadata.patient_ids,
        "image_level_splits": metadata.image_level_splits,
        "synthetic": metadata.synthetic,
        "modality": metadata.modality,
        "examples_dir": examples_dir,
    }


def _chosen_on(model_dir: str, saved_model: str, examples_dir: str, training: dict, config: EvaluateConfig) -> Scored:
    """What the threshold is chosen on: val, or train's pooled out-of-fold predictions.

    Raises:
        ValueError: "oof" without out-of-fold predictions, or "val" for an ensemble of folds,
            which trained on val and would choose its threshold on its own training data.
    """
    from radflow.components.train.cv import OOF_FILE, read_oof

    if config.threshold_source == "oof":
        if not tf.io.gfile.exists(os.path.join(model_dir, OOF_FILE)):
            raise ValueError(f"evaluate.threshold_source: 'oof' needs out-of-fold predictions, and {model_dir} has "
                             f"no {OOF_FILE}: train with train.cv_folds >= 2, or choose on 'val'")
        oof = read_oof(model_dir)
        return Scored(oof["labels"], oof["scores"], oof["patients"], None, [])
    if training.get("ensemble"):
        raise ValueError(f"evaluate.threshold_source: the model at {model_dir} is an ensemble of cross-validation "
                         "folds that trained on train+val, so val is not held out from it; set threshold_source: "
                         "oof")
    return score_split(saved_model, examples_dir, THRESHOLD_SPLIT, config.batch_size)


def evaluate(
    model_dir: str,
    examples_dir: str,
    out_dir: str,
    config: EvaluateConfig = EvaluateConfig(),
    serving_root: str | None = None,
    model_name: str = "radflow",
    validation_dir: str | None = None,
) -> EvaluationResult:
    """Chooses the operating point off test, evaluates on test, compares with production, writes the blessing.

    Args:
        model_dir: a train output (holds saved_model/, model.keras and training.json).
        examples_dir: the ingest output the model was trained on.
        out_dir: receives metrics.json, canary.json, plots, model_card.html and, last, blessing.json.
        config: threshold choice, gates, bootstrap.
        serving_root: where production versions live; None or no version means no comparison.
        model_name: the model's directory under serving_root.
        validation_dir: validate's output, whose shortcut findings the model card and blessing state.

    Returns:
        Metrics with intervals, the operating point, the confusion matrix, ROC curve and the blessing.
    """
    from radflow.components.train.train import RESULT_FILE

    metadata = ex.read_metadata(examples_dir)
    saved_model = os.path.join(model_dir, SAVED_MODEL_DIR)
    training_file = os.path.join(model_dir, RESULT_FILE)
    training = json.loads(fileio.read_text(training_file)) if tf.io.gfile.exists(training_file) else {}
    point = choose_operating_point(_chosen_on(model_dir, saved_model, examples_dir, training, config),
                                   config.threshold_source, config)
    threshold = point.threshold
    test = score_split(saved_model, examples_dir, EVAL_SPLIT, config.batch_size, config.canary_images,
                       keep_images=True)

    metrics = mx.compute_metrics(test.labels, test.scores, threshold)
    rates = mx.class_rates(test.labels, test.scores, threshold)
    intervals = mx.bootstrap_intervals(test.labels, test.scores, threshold, test.patients,
                                       config.bootstrap_resamples, config.ci_level, config.seed)
    metrics.update(num_examples=float(len(test.labels)), num_patients=float(mx.patient_groups(test.patients).max() + 1))
    evidence = Evidence(metrics, rates, intervals, list(metadata.label_names), threshold)

    production = production_version(serving_root, model_name)
    baseline = score_baseline(*production, examples_dir, test, threshold, config) if production else None
    model_root = os.path.join(serving_root, model_name) if serving_root else ""
    shortcuts = read_shortcuts(validation_dir) if validation_dir else []
    limitations = data_limitations(metadata) + point.warnings + [f"Shortcut warning: {line}" for line in shortcuts]
    blessing = decide_blessing(evidence, config, baseline, model_root, limitations, point.sentence(config.ci_level))
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
        rates=rates,
        operating_point=point,
    )
    os.makedirs(out_dir, exist_ok=True)
    report = {
        "split": EVAL_SPLIT,
        "model_dir": model_dir,
        "decision": blessing.decision,
        "metrics": metrics,
        "class_rates": {name: {"sensitivity": rates[f"recall/{c}"], "specificity": rates[f"specificity/{c}"]}
                        for c, name in enumerate(metadata.label_names)},
        "intervals": {n: list(v) for n, v in intervals.items()},
        "ci_level": config.ci_level,
        "threshold": threshold,
        "threshold_method": config.threshold_method if threshold is not None else ARGMAX,
        "operating_point": asdict(point),
        "per_class": mx.per_class_metrics(test.labels, test.scores, result.label_names) if k > 2 else {},
        "confusion_matrix": result.confusion_matrix,
        "label_names": result.label_names,
        "baseline": asdict(baseline) if baseline else None,
        "data": data_summary(examples_dir, test),
        "shortcuts": shortcuts,
        "limitations": limitations,
        "training": training,
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


def read_shortcuts(validation_dir: str) -> list[str]:
    """validate's shortcut findings (one line per feature that alone predicts the label), if it recorded any."""
    from radflow.components.validate.validate import read_result

    try:
        return list(read_result(validation_dir).shortcuts)
    except FileNotFoundError:
        return []


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
