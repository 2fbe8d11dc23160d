"""evaluate: test-split metrics of the exported model, and the blessing that gates push.

The model evaluated is the exported SavedModel, called through `serving_default` on encoded
images, so the numbers describe exactly what TF Serving will answer. The blessing records the
decision and its reason; push reads it, as TFX's Pusher reads a blessing.

    radflow evaluate runs/model runs/examples runs/evaluation
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import tensorflow as tf

from radflow import examples as ex
from radflow import fileio
from radflow.components.evaluate.config import EvaluateConfig
from radflow.components.train.train import SAVED_MODEL_DIR, SCORES, SERVING_INPUT

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
BLESSING_FILE = "blessing.json"  # written last; push refuses a model without it
ROC_PLOT = "roc.png"
CONFUSION_PLOT = "confusion_matrix.png"
EVAL_SPLIT = "test"


@dataclass(frozen=True)
class Blessing:
    blessed: bool
    reason: str
    gates: dict[str, dict[str, float | bool]] = field(default_factory=dict)  # name -> value, bound, passed

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Blessing:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class EvaluationResult:
    metrics: dict[str, float]
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted class
    label_names: list[str]
    blessing: Blessing
    roc_curve: dict[str, list[float]]  # fpr, tpr, thresholds (binary models; empty otherwise)


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic: P(score_pos > score_neg), ties count half."""
    pos, neg = score[y_true == 1], score[y_true == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = _average_ranks(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    ranks = np.empty(len(values))
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def roc_curve(y_true: np.ndarray, score: np.ndarray) -> dict[str, list[float]]:
    """False- and true-positive rates at every distinct score used as a threshold (score >= t)."""
    thresholds = np.concatenate([[np.inf], np.unique(score)[::-1]])
    pos, neg = max(1, (y_true == 1).sum()), max(1, (y_true == 0).sum())
    tpr = [float(((score >= t) & (y_true == 1)).sum() / pos) for t in thresholds]
    fpr = [float(((score >= t) & (y_true == 0)).sum() / neg) for t in thresholds]
    return {"fpr": fpr, "tpr": tpr, "thresholds": [float(min(t, 1.0)) for t in thresholds]}


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    cm = np.zeros((num_classes, num_classes), dtype=int)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def _safe_div(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def classification_metrics(y_true: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, precision, recall, specificity, F1 and ROC AUC.

    Binary (K = 2): for the positive class (label 1) at `threshold`. Multi-class: macro averages
    over one-vs-rest, predictions by argmax.

    Args:
        y_true: int labels (N,).
        scores: class probabilities (N, K).
        threshold: decision threshold on the positive score, binary only.

    Returns:
        Metric name -> value.
    """
    k = scores.shape[1]
    y_pred = (scores[:, 1] >= threshold).astype(int) if k == 2 else scores.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, k)
    per_class = []
    for c in range(k):
        tp = cm[c, c]
        fp = cm[:, c].sum() - tp
        fn = cm[c, :].sum() - tp
        tn = cm.sum() - tp - fp - fn
        precision, recall = _safe_div(tp, tp + fp), _safe_div(tp, tp + fn)
        per_class.append({
            "precision": precision,
            "recall": recall,
            "specificity": _safe_div(tn, tn + fp),
            "f1": _safe_div(2 * precision * recall, precision + recall),
            "roc_auc": roc_auc((y_true == c).astype(int), scores[:, c]),
        })
    chosen = [per_class[1]] if k == 2 else per_class
    metrics = {name: float(np.mean([m[name] for m in chosen])) for name in chosen[0]}
    metrics["accuracy"] = _safe_div(np.trace(cm), cm.sum())
    metrics["num_examples"] = float(len(y_true))
    return metrics


def decide_blessing(metrics: dict[str, float], config: EvaluateConfig) -> Blessing:
    """Blesses only when at least one gate is configured and every configured gate passes."""
    gates = {}
    if config.min_roc_auc is not None:
        value = metrics["roc_auc"]
        gates["roc_auc"] = {"value": value, "bound": config.min_roc_auc,
                            "passed": bool(np.isfinite(value) and value >= config.min_roc_auc)}
    if not gates:
        return Blessing(False, "no evaluation gate is configured, so the model cannot be blessed", gates)
    failed = [f"{name} {g['value']:.4f} < {g['bound']}" for name, g in gates.items() if not g["passed"]]
    if failed:
        return Blessing(False, "failed gate(s): " + "; ".join(failed), gates)
    return Blessing(True, "passed: " + "; ".join(f"{n} {g['value']:.4f} >= {g['bound']}" for n, g in gates.items()),
                    gates)


def predict_split(
    saved_model_dir: str, examples_dir: str, split: str, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Scores a split through the exported `serving_default` signature on PNG-encoded images.

    Returns:
        (labels (N,), scores (N, K)).
    """
    metadata = ex.read_metadata(examples_dir)
    serve = tf.saved_model.load(saved_model_dir).signatures["serving_default"]
    labels, scores = [], []
    for batch in ex.iter_split(examples_dir, split, metadata, batch_size):
        encoded = tf.stack([tf.io.encode_png(img) for img in batch[ex.IMAGE]])
        scores.append(serve(**{SERVING_INPUT: encoded})[SCORES].numpy())
        labels.append(batch[ex.LABEL])
    if not labels:
        raise ValueError(f"split {split!r} of {examples_dir} is empty; nothing to evaluate on")
    return np.concatenate(labels), np.concatenate(scores)


def _plot(result: EvaluationResult, out_dir: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if result.roc_curve:
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.plot(result.roc_curve["fpr"], result.roc_curve["tpr"], label=f"AUC {result.metrics['roc_auc']:.3f}")
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        ax.set_title(f"ROC, {EVAL_SPLIT} split")
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, ROC_PLOT), dpi=100)
        plt.close(fig)
    cm = np.array(result.confusion_matrix)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(cm, cmap="Blues")
    for (i, j), n in np.ndenumerate(cm):
        ax.text(j, i, str(n), ha="center", va="center", color="white" if n > cm.max() / 2 else "black")
    ax.set_xticks(range(len(result.label_names)), result.label_names)
    ax.set_yticks(range(len(result.label_names)), result.label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, CONFUSION_PLOT), dpi=100)
    plt.close(fig)


def evaluate(
    model_dir: str, examples_dir: str, out_dir: str, config: EvaluateConfig = EvaluateConfig()
) -> EvaluationResult:
    """Evaluates the exported model on the test split and writes the blessing.

    Args:
        model_dir: a train output (holds saved_model/).
        examples_dir: the ingest output the model was trained on.
        out_dir: receives metrics.json, the plots and, last, blessing.json.
        config: gates and threshold.

    Returns:
        Metrics, confusion matrix, ROC curve and the blessing.
    """
    metadata = ex.read_metadata(examples_dir)
    saved_model = os.path.join(model_dir, SAVED_MODEL_DIR)
    y_true, scores = predict_split(saved_model, examples_dir, EVAL_SPLIT, config.batch_size)
    metrics = classification_metrics(y_true, scores, config.threshold)
    k = metadata.num_classes
    y_pred = (scores[:, 1] >= config.threshold).astype(int) if k == 2 else scores.argmax(axis=1)
    result = EvaluationResult(
        metrics=metrics,
        confusion_matrix=confusion_matrix(y_true, y_pred, k).tolist(),
        label_names=list(metadata.label_names),
        blessing=decide_blessing(metrics, config),
        roc_curve=roc_curve(y_true, scores[:, 1]) if k == 2 else {},
    )
    os.makedirs(out_dir, exist_ok=True)
    _plot(result, out_dir)
    fileio.write_text_atomic(os.path.join(out_dir, METRICS_FILE), json.dumps(
        {"metrics": metrics, "confusion_matrix": result.confusion_matrix, "label_names": result.label_names,
         "threshold": config.threshold, "split": EVAL_SPLIT}, indent=2))
    fileio.write_text_atomic(os.path.join(out_dir, BLESSING_FILE), result.blessing.to_json())
    log.info("evaluate: %s; %s", {k: round(v, 4) for k, v in metrics.items()}, result.blessing.reason)
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
