"""Classification metrics, operating thresholds and patient-level bootstrap intervals, in numpy.

Every metric takes optional per-image weights. A bootstrap resample of patients is then just a
weight vector (each image weighted by how often its patient was drawn), so point estimates and
confidence intervals share one code path and no resample copies the data.

Binary models (K = 2) are scored on the positive class (label 1) at a threshold: an image is
called positive when its positive score is >= the threshold. Multi-class models predict by
argmax and report macro averages of one-vs-rest metrics, plus each class's own.
"""

from __future__ import annotations

from typing import get_args

import numpy as np

from radflow.components.evaluate.config import ThresholdMethod

# The metrics of `compute_metrics`, in report order; "recall" is the sensitivity.
METRIC_NAMES = ("accuracy", "balanced_accuracy", "precision", "npv", "recall", "specificity", "f1", "mcc",
                "roc_auc", "pr_auc", "brier", "ece")
# Lower is better for these; every other metric is better when higher.
LOWER_IS_BETTER = frozenset({"brier", "ece"})
THRESHOLD_METHODS = get_args(ThresholdMethod)


def _div(a: np.ndarray | float, b: np.ndarray | float) -> float:
    return float(a / b) if b else 0.0


def _weights(n: int, w: np.ndarray | None) -> np.ndarray:
    return np.ones(n) if w is None else np.asarray(w, dtype=float)


def roc_auc(y_true: np.ndarray, score: np.ndarray, w: np.ndarray | None = None) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic: P(score_pos > score_neg), ties count half.

    Args:
        y_true: 0/1 labels (N,).
        score: scores (N,), higher meaning more likely positive.
        w: optional weights (N,): a weight-2 image counts as two copies.

    Returns:
        The AUC, or NaN when either class has no weight.
    """
    w = _weights(len(score), w)
    pos_w, neg_w = w * (y_true == 1), w * (y_true != 1)
    total_pos, total_neg = pos_w.sum(), neg_w.sum()
    if total_pos == 0 or total_neg == 0:
        return float("nan")
    _, inverse = np.unique(score, return_inverse=True)  # groups of tied scores, ascending
    neg_per_value = np.bincount(inverse, weights=neg_w)
    pos_per_value = np.bincount(inverse, weights=pos_w)
    neg_below = np.cumsum(neg_per_value) - neg_per_value
    return float((pos_per_value * (neg_below + 0.5 * neg_per_value)).sum() / (total_pos * total_neg))


def roc_curve(y_true: np.ndarray, score: np.ndarray) -> dict[str, list[float]]:
    """False- and true-positive rates at every distinct score used as a threshold (score >= t), highest first."""
    values, inverse = np.unique(score, return_inverse=True)
    pos = np.bincount(inverse, weights=(y_true == 1).astype(float), minlength=len(values))[::-1]
    neg = np.bincount(inverse, weights=(y_true != 1).astype(float), minlength=len(values))[::-1]
    tpr = np.concatenate([[0.0], np.cumsum(pos) / max(1.0, pos.sum())])
    fpr = np.concatenate([[0.0], np.cumsum(neg) / max(1.0, neg.sum())])
    thresholds = np.concatenate([[1.0], np.minimum(values[::-1], 1.0)])  # first point: nothing called positive
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thresholds.tolist()}


def pr_curve(y_true: np.ndarray, score: np.ndarray, w: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Precision and recall at every distinct score used as a threshold, highest threshold first."""
    w = _weights(len(score), w)
    values, inverse = np.unique(score, return_inverse=True)
    tp = np.cumsum(np.bincount(inverse, weights=w * (y_true == 1), minlength=len(values))[::-1])
    called = np.cumsum(np.bincount(inverse, weights=w, minlength=len(values))[::-1])
    precision = np.divide(tp, called, out=np.ones_like(tp), where=called > 0)
    recall = tp / tp[-1] if tp[-1] > 0 else np.zeros_like(tp)
    return {"precision": precision, "recall": recall, "thresholds": values[::-1]}


def average_precision(y_true: np.ndarray, score: np.ndarray, w: np.ndarray | None = None) -> float:
    """PR AUC as average precision: the sum of precision times each step in recall (no interpolation)."""
    if not (_weights(len(score), w) * (y_true == 1)).any():
        return float("nan")
    curve = pr_curve(y_true, score, w)
    steps = np.diff(np.concatenate([[0.0], curve["recall"]]))
    return float((steps * curve["precision"]).sum())


def calibration_curve(
    y_true: np.ndarray, prob: np.ndarray, bins: int = 10, w: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Reliability curve: per equal-width probability bin, mean predicted probability and observed frequency.

    Returns:
        confidence, frequency and weight (number of images) per bin; empty bins have weight 0.
    """
    w = _weights(len(prob), w)
    idx = np.clip((prob * bins).astype(int), 0, bins - 1)
    weight = np.bincount(idx, weights=w, minlength=bins)
    conf = np.bincount(idx, weights=w * prob, minlength=bins)
    freq = np.bincount(idx, weights=w * y_true, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"confidence": conf / weight, "frequency": freq / weight, "weight": weight}


def expected_calibration_error(
    y_true: np.ndarray, prob: np.ndarray, bins: int = 10, w: np.ndarray | None = None
) -> float:
    """ECE: the image-weighted mean |observed frequency - mean confidence| over probability bins."""
    curve = calibration_curve(y_true, prob, bins, w)
    filled = curve["weight"] > 0
    gaps = np.abs(curve["frequency"][filled] - curve["confidence"][filled])
    return float((gaps * curve["weight"][filled]).sum() / curve["weight"].sum())


def predict(scores: np.ndarray, threshold: float | None) -> np.ndarray:
    """Predicted labels: positive score >= threshold for binary models, argmax otherwise."""
    if scores.shape[1] == 2:
        return (scores[:, 1] >= threshold).astype(int)
    return scores.argmax(axis=1)


def confusion_matrix(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, w: np.ndarray | None = None
) -> np.ndarray:
    """Rows: true class, columns: predicted class; integer counts without weights."""
    cm = np.zeros((num_classes, num_classes), dtype=float if w is not None else int)
    np.add.at(cm, (y_true, y_pred), 1 if w is None else w)
    return cm


def _mcc(cm: np.ndarray) -> float:
    """Matthews correlation for any number of classes (Gorodkin's R_K); 0 when undefined."""
    n, correct = cm.sum(), np.trace(cm)
    true_per, pred_per = cm.sum(axis=1), cm.sum(axis=0)
    num = correct * n - (true_per * pred_per).sum()
    den = np.sqrt(n**2 - (pred_per**2).sum()) * np.sqrt(n**2 - (true_per**2).sum())
    return _div(num, den)


def _one_vs_rest(cm: np.ndarray, c: int) -> dict[str, float]:
    tp = cm[c, c]
    fp, fn = cm[:, c].sum() - tp, cm[c, :].sum() - tp
    tn = cm.sum() - tp - fp - fn
    precision, recall = _div(tp, tp + fp), _div(tp, tp + fn)
    return {"precision": precision, "npv": _div(tn, tn + fn), "recall": recall, "specificity": _div(tn, tn + fp),
            "f1": _div(2 * precision * recall, precision + recall)}


def compute_metrics(
    y_true: np.ndarray, scores: np.ndarray, threshold: float | None, w: np.ndarray | None = None
) -> dict[str, float]:
    """Every metric of METRIC_NAMES at one operating point.

    Args:
        y_true: int labels (N,).
        scores: class probabilities (N, K).
        threshold: decision threshold on the positive score (binary); ignored for K > 2.
        w: optional per-image weights (a bootstrap resample).

    Returns:
        Metric name -> value. Binary: for the positive class. Multi-class: macro averages; Brier
        is the mean squared distance to the one-hot label, ECE uses the top-class confidence.
    """
    k = scores.shape[1]
    w = _weights(len(y_true), w)
    cm = confusion_matrix(y_true, predict(scores, threshold), k, w)
    per_class = [_one_vs_rest(cm, c) for c in range(k)]
    chosen = [per_class[1]] if k == 2 else per_class
    m = {name: float(np.mean([p[name] for p in chosen])) for name in chosen[0]}
    m["accuracy"] = _div(np.trace(cm), cm.sum())
    m["balanced_accuracy"] = float(np.mean([p["recall"] for p in per_class]))
    m["mcc"] = _mcc(cm)
    onehot = np.eye(k)[y_true]
    if k == 2:
        m["roc_auc"] = roc_auc(y_true, scores[:, 1], w)
        m["pr_auc"] = average_precision(y_true, scores[:, 1], w)
        m["ece"] = expected_calibration_error(y_true.astype(float), scores[:, 1], w=w)
    else:
        m["roc_auc"] = float(np.mean([roc_auc((y_true == c).astype(int), scores[:, c], w) for c in range(k)]))
        m["pr_auc"] = float(np.mean([average_precision((y_true == c).astype(int), scores[:, c], w) for c in range(k)]))
        top = scores.argmax(axis=1)
        m["ece"] = expected_calibration_error((top == y_true).astype(float), scores.max(axis=1), w=w)
    squared = ((scores - onehot) ** 2).sum(axis=1)
    m["brier"] = float((w * (squared / 2 if k == 2 else squared)).sum() / w.sum())  # binary: on the positive score
    return {name: m[name] for name in METRIC_NAMES}


def per_class_metrics(y_true: np.ndarray, scores: np.ndarray, label_names: list[str]) -> dict[str, dict[str, float]]:
    """One-vs-rest metrics of each class at argmax (multi-class models)."""
    cm = confusion_matrix(y_true, scores.argmax(axis=1), scores.shape[1])
    out = {}
    for c, name in enumerate(label_names):
        m = _one_vs_rest(cm, c)
        m["roc_auc"] = roc_auc((y_true == c).astype(int), scores[:, c])
        m["support"] = float((y_true == c).sum())
        out[name] = m
    return out


def patient_groups(patients: np.ndarray) -> np.ndarray:
    """Group index (0..P-1) of each image; images without a patient key are each their own patient."""
    keys = np.asarray(patients).astype(str)
    unknown = keys == ""
    keys = np.where(unknown, np.char.add("\0image-", np.arange(len(keys)).astype(str)), keys)
    return np.unique(keys, return_inverse=True)[1]


def class_rates(
    y_true: np.ndarray, scores: np.ndarray, threshold: float | None, w: np.ndarray | None = None
) -> dict[str, float]:
    """Each class's recall and one-vs-rest specificity at the operating point, as "recall/<c>" and
    "specificity/<c>" (c the class index): what the gates bound class by class, so that a class the
    model misses cannot hide behind the others' average."""
    k = scores.shape[1]
    cm = confusion_matrix(y_true, predict(scores, threshold), k, _weights(len(y_true), w))
    out = {}
    for c in range(k):
        rates = _one_vs_rest(cm, c)
        out[f"recall/{c}"], out[f"specificity/{c}"] = rates["recall"], rates["specificity"]
    return out


def _resample_weights(patients: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, N) image weights: how often each image's patient was drawn in each resample."""
    groups = patient_groups(patients)
    n_patients = int(groups.max()) + 1
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_patients, np.full(n_patients, 1.0 / n_patients), size=n_resamples)[:, groups]


def _percentiles(samples: list[dict[str, float]], level: float) -> dict[str, tuple[float, float]]:
    alpha = (1 - level) / 2
    out = {}
    for name in samples[0]:
        values = np.array([s[name] for s in samples], dtype=float)
        values = values[np.isfinite(values)]
        out[name] = (float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))) if len(values) else (
            float("nan"), float("nan"))
    return out


def bootstrap_intervals(
    y_true: np.ndarray,
    scores: np.ndarray,
    threshold: float | None,
    patients: np.ndarray,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals that resample patients, not images.

    Images of one patient are correlated (same anatomy, same scanner), so resampling images
    would treat them as independent evidence and give intervals that are too narrow. Here each
    resample draws patients with replacement and carries all of a drawn patient's images.

    Args:
        y_true: int labels (N,).
        scores: class probabilities (N, K).
        threshold: the operating threshold (binary).
        patients: patient key of each image (N,); "" means unknown, its own patient.
        n_resamples: bootstrap resamples.
        level: coverage of the interval.
        seed: random seed, for reproducible reports.

    Returns:
        Metric name -> (low, high), for METRIC_NAMES and `class_rates`' keys. Resamples where a
        metric is undefined (e.g. no positive drawn) are left out of that metric's interval.
    """
    samples = [compute_metrics(y_true, scores, threshold, w) | class_rates(y_true, scores, threshold, w)
               for w in _resample_weights(patients, n_resamples, seed)]
    return _percentiles(samples, level)


def paired_differences(
    y_true: np.ndarray,
    candidate: tuple[np.ndarray, float | None],
    reference: tuple[np.ndarray, float | None],
    patients: np.ndarray,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Intervals of candidate minus reference for every metric, both scored on each same resample.

    Pairing is what makes the comparison sharp: both models meet the same lucky or unlucky draw
    of patients, so the interval of the difference is far narrower than two separate intervals.

    Args:
        y_true: int labels (N,) of the images both models scored.
        candidate: its scores (N, K) and operating threshold.
        reference: the other model's scores (N, K) and threshold.
        patients: patient key of each image.
        n_resamples: bootstrap resamples (of patients).
        level: coverage.
        seed: random seed.

    Returns:
        Metric name -> (low, high) of the difference, for METRIC_NAMES and `class_rates`' keys.
    """
    def both(w):
        a = compute_metrics(y_true, *candidate, w) | class_rates(y_true, *candidate, w)
        b = compute_metrics(y_true, *reference, w) | class_rates(y_true, *reference, w)
        return {k: a[k] - b[k] for k in a}

    return _percentiles([both(w) for w in _resample_weights(patients, n_resamples, seed)], level)


def delong_test(y_true: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> dict[str, float]:
    """DeLong's test of two correlated ROC AUCs on the same images (DeLong, DeLong and Clarke-Pearson 1988).

    Each positive's and negative's placement value (the share of the other class it beats, ties
    half) gives the structural components; their covariance across the two models is the
    variance of the AUC difference. Computed from midranks, O(N log N) (Sun and Xu 2014).

    Args:
        y_true: 0/1 labels (N,).
        score_a: model A's positive scores (N,).
        score_b: model B's positive scores (N,).

    Returns:
        auc_a, auc_b, difference (a - b), its standard error, z and the two-sided p-value.

    Raises:
        ValueError: a class is missing.
    """
    pos, neg = y_true == 1, y_true != 1
    m, n = int(pos.sum()), int(neg.sum())
    if not m or not n:
        raise ValueError("DeLong's test needs both classes among the images")
    v10, v01 = [], []
    for score in (score_a, score_b):
        ranks_all = _midranks(score)
        ranks_pos, ranks_neg = _midranks(score[pos]), _midranks(score[neg])
        v10.append((ranks_all[pos] - ranks_pos) / n)  # for each positive: share of negatives below it
        v01.append(1.0 - (ranks_all[neg] - ranks_neg) / m)  # for each negative: share of positives above it
    aucs = [float(v.mean()) for v in v10]
    s10, s01 = np.cov(np.vstack(v10)), np.cov(np.vstack(v01))
    variance = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    diff = aucs[0] - aucs[1]
    se = float(np.sqrt(max(variance, 0.0)))
    z = diff / se if se > 0 else (0.0 if diff == 0 else float("inf") * np.sign(diff))
    from math import erfc, sqrt

    return {"auc_a": aucs[0], "auc_b": aucs[1], "difference": diff, "se": se, "z": float(z),
            "p_value": float(erfc(abs(z) / sqrt(2))) if np.isfinite(z) else 0.0}


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their mean rank."""
    values, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inverse]


def threshold_interval(
    y_true: np.ndarray, positive_score: np.ndarray, patients: np.ndarray, method: str, target_sensitivity: float,
    n_resamples: int = 1000, level: float = 0.95, seed: int = 0,
) -> tuple[float, float]:
    """How far the operating threshold moves when it is chosen again on resampled validation patients."""
    chosen = []
    for w in _resample_weights(patients, n_resamples, seed):
        keep = w > 0
        y = np.repeat(y_true[keep], w[keep])
        if (y == 1).any() and (y != 1).any():
            chosen.append(choose_threshold(y, np.repeat(positive_score[keep], w[keep]), method, target_sensitivity))
    alpha = (1 - level) / 2
    return (float(np.quantile(chosen, alpha)), float(np.quantile(chosen, 1 - alpha))) if chosen else (
        float("nan"), float("nan"))


def choose_threshold(
    y_true: np.ndarray, positive_score: np.ndarray, method: str, target_sensitivity: float = 0.95,
    fixed: float = 0.5,
) -> float:
    """The operating threshold of a binary model, chosen on the validation split.

    Args:
        y_true: 0/1 validation labels.
        positive_score: validation scores of the positive class.
        method: "target_sensitivity": the highest threshold whose sensitivity reaches the
            target, i.e. the most specific operating point that still finds the target share
            of positives (walking the threshold down from 1, the first one that reaches it);
            "youden": the threshold maximising sensitivity + specificity - 1;
            "fixed": `fixed`.
        target_sensitivity: for "target_sensitivity".
        fixed: for "fixed".

    Returns:
        A threshold t: an image is positive when its score >= t.

    Raises:
        ValueError: unknown method, or no positives to choose on.
    """
    if method == "fixed":
        return float(fixed)
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"unknown threshold method {method!r}; valid: {list(THRESHOLD_METHODS)}")
    if not (y_true == 1).any():
        raise ValueError("the validation split has no positive example; a threshold cannot be chosen on it")
    curve = roc_curve(y_true, positive_score)
    tpr, fpr, thresholds = (np.array(curve[k]) for k in ("tpr", "fpr", "thresholds"))
    tpr, fpr, thresholds = tpr[1:], fpr[1:], thresholds[1:]  # drop the "nothing positive" point
    if method == "youden":
        return float(thresholds[int(np.argmax(tpr - fpr))])
    return float(thresholds[int(np.argmax(tpr >= target_sensitivity - 1e-12))])
