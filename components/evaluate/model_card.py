"""The evaluation's model card: plots and one self-contained HTML page a clinical reviewer can read.

The page embeds every image (base64 PNG), so it can be mailed, archived with the version, or
shown by the KFP UI as an HTML artifact without any other file.
"""

from __future__ import annotations

import html
import itertools
import json
import logging
import os
from typing import TYPE_CHECKING

import numpy as np

from radflow.components.evaluate import metrics as mx
from radflow.report import embed_png

if TYPE_CHECKING:
    from radflow.components.evaluate.config import EvaluateConfig
    from radflow.components.evaluate.evaluate import EvaluationResult, Scored

log = logging.getLogger(__name__)

ROC_PLOT = "roc.png"
PR_PLOT = "pr.png"
CALIBRATION_PLOT = "calibration.png"
CONFUSION_PLOT = "confusion_matrix.png"
GRAD_CAM_PLOT = "grad_cam.png"
FILTERS_PLOT = "first_layer_filters.png"
FEATURE_MAPS_PLOT = "feature_maps.png"
ERRORS_PLOT = "error_analysis.png"
TRAINING_CURVES = "training_curves.png"  # train's, copied in: loss and AUC per epoch, the kept epoch marked
MODEL_CARD_FILE = "model_card.html"
# What the card answers of the CLAIM checklist (Mongan et al. 2020), by the checklist's headings.
CLAIM_ITEMS = (
    ("Data: sources, inclusion and exclusion (quarantine), preprocessing", "What was trained, on what (inputs)"),
    ("Data: de-identification", "ingest's header allow-list and keyed patient ids (docs/ingest.md)"),
    ("Ground truth: definition of the labels", "Model card title and classes; labels from folders or a manifest"),
    ("Data partitions: patient-level splits, sizes per class", "Images and patients per split and class"),
    ("Model: architecture, parameters", "What was trained, on what"),
    ("Training: options, phases, model selection", "Every training option; phases; kept epoch; cross-validation"),
    ("Evaluation: metrics, uncertainty (CIs), operating point", "Operating point; Test metrics; Gates"),
    ("Evaluation: comparison with a reference model", "Against production"),
    ("Results: failure analysis", "Error analysis"),
    ("Interpretability: saliency", "Error analysis; What the model looks at"),
    ("Discussion: limitations and intended use", "Intended use and limitations"),
)
_METRIC_LABELS = {
    "accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "precision": "precision (PPV)",
    "npv": "NPV", "recall": "sensitivity (recall)", "specificity": "specificity", "f1": "F1", "mcc": "MCC",
    "roc_auc": "ROC AUC", "pr_auc": "PR AUC (average precision)", "brier": "Brier score (lower is better)",
    "ece": "expected calibration error (lower is better)",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)


def _one_vs_rest(test: Scored, label_names: list[str]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, 0/1 labels, scores) of each curve to draw: the positive class, or every class."""
    k = test.scores.shape[1]
    classes = [1] if k == 2 else range(k)
    return [(label_names[c], (test.labels == c).astype(int), test.scores[:, c]) for c in classes]


def plot_roc(result: EvaluationResult, test: Scored, path: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, y, s in _one_vs_rest(test, result.label_names):
        curve = mx.roc_curve(y, s)
        ax.plot(curve["fpr"], curve["tpr"], label=f"{name}: AUC {mx.roc_auc(y, s):.3f}")
    if result.threshold is not None:
        m = result.metrics
        ax.plot([1 - m["specificity"]], [m["recall"]], "o", color="black",
                label=f"operating point (t={result.threshold:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC, test split")
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def plot_pr(result: EvaluationResult, test: Scored, path: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, y, s in _one_vs_rest(test, result.label_names):
        curve = mx.pr_curve(y, s)
        ax.step(curve["recall"], curve["precision"], where="post",
                label=f"{name}: AP {mx.average_precision(y, s):.3f}")
        ax.axhline(y.mean(), ls=":", color="grey")
    if result.threshold is not None:
        ax.plot([result.metrics["recall"]], [result.metrics["precision"]], "o", color="black", label="operating point")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="Precision-recall, test split",
           xlim=(0, 1.02), ylim=(0, 1.02))
    ax.legend(loc="lower left", fontsize=8)
    _save(fig, path)


def plot_calibration(result: EvaluationResult, test: Scored, bins: int, path: str) -> None:
    """Reliability curve over the histogram of predicted probabilities."""
    plt = _pyplot()
    if test.scores.shape[1] == 2:
        y, p, what = test.labels.astype(float), test.scores[:, 1], f"P({result.label_names[1]})"
    else:
        y, p, what = (test.scores.argmax(1) == test.labels).astype(float), test.scores.max(1), "top-class confidence"
    curve = mx.calibration_curve(y, p, bins)
    filled = curve["weight"] > 0
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(4.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    ax.plot(curve["confidence"][filled], curve["frequency"][filled], "o-",
            label=f"model (ECE {result.metrics['ece']:.3f}, Brier {result.metrics['brier']:.3f})")
    ax.set(ylabel="observed frequency", title="Calibration, test split", ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    hist.hist(p, bins=bins, range=(0, 1), color="grey")
    hist.set(xlabel=what, ylabel="images")
    _save(fig, path)


def plot_confusion(result: EvaluationResult, path: str) -> None:
    plt = _pyplot()
    cm = np.array(result.confusion_matrix)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.imshow(cm, cmap="Blues")
    for (i, j), n in np.ndenumerate(cm):
        ax.text(j, i, str(n), ha="center", va="center", fontsize=12,
                color="white" if n > cm.max() / 2 else "black")
    names = result.label_names
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    at = f" at threshold {result.threshold:.3f}" if result.threshold is not None else " (argmax)"
    ax.set(xlabel="predicted", ylabel="true", title=f"Confusion matrix{at}")
    _save(fig, path)


def _pick_examples(result: EvaluationResult, test: Scored, n: int) -> tuple[list[int], list[int]]:
    """The n most confidently correct test images (taking the classes in turn) and the n most confidently wrong.

    Confidence is the distance from the threshold for binary models, the top score otherwise.
    """
    predicted = mx.predict(test.scores, result.threshold)
    if result.threshold is not None:
        confidence = np.abs(test.scores[:, 1] - result.threshold)
    else:
        confidence = test.scores.max(axis=1)
    order = np.argsort(-confidence, kind="stable")
    wrong = [int(i) for i in order if predicted[i] != test.labels[i]][:n]
    per_class = [[int(i) for i in order if predicted[i] == test.labels[i] == c] for c in range(test.scores.shape[1])]
    correct = [i for turn in itertools.zip_longest(*per_class) for i in turn if i is not None]
    return correct[:n], wrong


def plot_explanations(
    model_path: str, result: EvaluationResult, test: Scored, n: int, out_dir: str, layer_name: str | None = None
) -> list[str]:
    """Grad-CAM of correct and incorrect test images, first-layer filters, and one image's feature maps.

    Args:
        layer_name: the layer Grad-CAM reads (train records it); None finds the last convolutional one.

    Returns:
        The plots written.
    """
    import keras
    import tensorflow as tf

    from radflow import explain
    from radflow.preprocessing import preprocess_pixels

    plt = _pyplot()
    model = keras.models.load_model(model_path, compile=False)
    layer_name = layer_name or explain.last_conv_layer(model)
    size = test.images.shape[1]
    correct, wrong = _pick_examples(result, test, n)
    rows = [("correct", correct), ("incorrect", wrong)]
    fig, axes = plt.subplots(2, 2 * n, figsize=(2.2 * 2 * n, 5.2), squeeze=False)
    for r, (kind, picks) in enumerate(rows):
        for c in range(n):
            image_ax, cam_ax = axes[r, 2 * c], axes[r, 2 * c + 1]
            image_ax.axis("off")
            cam_ax.axis("off")
            if c >= len(picks):
                if c == 0:
                    image_ax.set_title(f"no {kind} test images", fontsize=9)
                continue
            i = picks[c]
            image = preprocess_pixels(tf.constant(test.images[i]), size).numpy()
            predicted = int(mx.predict(test.scores[i : i + 1], result.threshold)[0])
            heat = explain.grad_cam(model, image, class_index=predicted, layer_name=layer_name)
            image_ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
            image_ax.set_title(f"{kind}: true {result.label_names[test.labels[i]]}", fontsize=8)
            cam_ax.imshow(explain.overlay(image, heat))
            shown = 1 if result.threshold is not None else predicted  # binary: always P(positive)
            cam_ax.set_title(f"pred {result.label_names[predicted]}, P({result.label_names[shown]})="
                             f"{test.scores[i, shown]:.3f}", fontsize=8)
    fig.suptitle(f"Grad-CAM for the predicted class (layer {layer_name})", fontsize=10)
    _save(fig, os.path.join(out_dir, GRAD_CAM_PLOT))

    filters = explain.first_layer_filters(model)
    cols = min(8, len(filters))
    rows_needed = int(np.ceil(len(filters) / cols))
    fig, axes = plt.subplots(rows_needed, cols, figsize=(1.1 * cols, 1.2 * rows_needed + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, f in zip(axes.flat, filters, strict=False):
        ax.imshow(f, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    fig.suptitle(f"First-layer filters ({explain.first_conv_layer(model).name}), averaged over input channels",
                 fontsize=9)
    _save(fig, os.path.join(out_dir, FILTERS_PLOT))

    i = (correct + wrong)[0] if correct + wrong else 0
    image = preprocess_pixels(tf.constant(test.images[i]), size).numpy()
    maps = explain.feature_maps(model, image)
    shown = maps[: min(15, len(maps))]
    cols = 4
    grid_rows = int(np.ceil((len(shown) + 1) / cols))
    fig, axes = plt.subplots(grid_rows, cols, figsize=(2.0 * cols, 2.0 * grid_rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
    axes.flat[0].set_title(f"input ({result.label_names[test.labels[i]]})", fontsize=8)
    for j, (ax, fmap) in enumerate(zip(axes.flat[1:], shown, strict=False)):
        ax.imshow(fmap, cmap="viridis")
        ax.set_title(f"channel {j}", fontsize=8)
    fig.suptitle(f"Feature maps of {explain.first_conv_layer(model).name}", fontsize=10)
    _save(fig, os.path.join(out_dir, FEATURE_MAPS_PLOT))
    return [GRAD_CAM_PLOT, FILTERS_PLOT, FEATURE_MAPS_PLOT]


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not np.isfinite(value)) else (
        f"{value:.4f}" if isinstance(value, float) else str(value))


_STYLE = """<style>
body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}.verdict{padding:.6em 1em;border-radius:4px;font-weight:bold}
.yes{background:#e3f5e1;border:1px solid #4a4}.no{background:#fbe4e4;border:1px solid #c44}
img{max-width:100%;margin:4px}.note{color:#555;font-size:.9em}
</style>"""


def _error_cases(result: EvaluationResult, test: Scored, n: int) -> list[tuple[str, int]]:
    """The test images the model got most wrong, false negatives first: (kind, index) pairs.

    Binary: missed positives by lowest positive score, then false alarms by highest. Beyond two
    classes: every error by the score it gave the true class, lowest first.
    """
    predicted = mx.predict(test.scores, result.threshold)
    wrong = np.flatnonzero(predicted != test.labels)
    if result.threshold is not None:
        misses = sorted((i for i in wrong if test.labels[i] == 1), key=lambda i: test.scores[i, 1])
        alarms = sorted((i for i in wrong if test.labels[i] == 0), key=lambda i: -test.scores[i, 1])
        cases = [("false negative", int(i)) for i in misses] + [("false positive", int(i)) for i in alarms]
    else:
        cases = [("error", int(i)) for i in sorted(wrong, key=lambda i: test.scores[i, test.labels[i]])]
    return cases[:n]


def plot_error_analysis(model_path: str, result: EvaluationResult, test: Scored, n: int, path: str,
                        layer_name: str | None = None) -> bool:
    """The most wrong test images beside their Grad-CAM for the predicted class; False when there are none."""
    import keras
    import tensorflow as tf

    from radflow import explain
    from radflow.preprocessing import preprocess_pixels

    cases = _error_cases(result, test, n)
    if not cases:
        return False
    plt = _pyplot()
    model = keras.models.load_model(model_path, compile=False)
    size = test.images.shape[1]
    fig, axes = plt.subplots(len(cases), 2, figsize=(5.2, 2.6 * len(cases)), squeeze=False)
    for row, (kind, i) in enumerate(cases):
        image = preprocess_pixels(tf.constant(test.images[i]), size).numpy()
        predicted = int(mx.predict(test.scores[i: i + 1], result.threshold)[0])
        heat = explain.grad_cam(model, image, class_index=predicted, layer_name=layer_name)
        true = result.label_names[test.labels[i]]
        axes[row, 0].imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
        axes[row, 0].set_title(f"{kind}: true {true}", fontsize=8)
        axes[row, 1].imshow(explain.overlay(image, heat))
        score = test.scores[i, test.labels[i]]
        axes[row, 1].set_title(f"called {result.label_names[predicted]}; P({true})={score:.3f}", fontsize=8)
        for ax in axes[row]:
            ax.axis("off")
    fig.suptitle("Most wrong test images, Grad-CAM of the class called", fontsize=9)
    _save(fig, path)
    return True


def _kv(values: dict) -> str:
    return _table(["option", "value"], [[k, json.dumps(v) if isinstance(v, (list, dict, tuple)) else v]
                                        for k, v in values.items()])


def _ci_text(value: float, interval) -> str:
    return f"{_fmt(value)} ({_fmt(interval[0])} - {_fmt(interval[1])})"


def model_card_html(report: dict, result: EvaluationResult, plots: dict[str, str], model_dir: str) -> str:
    """The page, in the order a reviewer reads it: verdict, intended use and limitations, what was trained on
    what, the operating point, test metrics with CIs, gates, the comparison, curves, error analysis, and
    the CLAIM items it covers."""
    b, data, training, op = result.blessing, report["data"], report.get("training") or {}, result.operating_point
    level = f"{report['ci_level']:.0%}"
    names = result.label_names
    what = data.get("modality") or "medical"
    parts = ["<!doctype html><meta charset='utf-8'><title>radflow model card</title>", _STYLE,
             f"<h1>Model card: {html.escape(' / '.join(names))} from {html.escape(what)} images</h1>",
             f"<p class='note'>model: {html.escape(model_dir)}<br>examples: {html.escape(data['examples_dir'])}"
             f"<br>data fingerprint: {html.escape(str(data.get('input_fingerprint') or 'not recorded'))}</p>",
             f"<div class='verdict {'yes' if b.blessed else 'no'}'>{'BLESSED' if b.blessed else 'NOT BLESSED'}</div>",
             f"<p>{html.escape(b.reason)}</p>",
             "<h2>Intended use and limitations</h2>",
             f"<p>Research and evaluation of a classifier of {html.escape(what)} images into "
             f"{html.escape(', '.join(names))}. Not a medical device and <b>not for clinical use</b>: a radiologist "
             "decides. " + ("It decides by the highest score (argmax), not by a threshold." if result.threshold is None
                            else f"It calls an image {html.escape(names[1])} when P({html.escape(names[1])}) is at "
                                 f"or above {result.threshold:.4f}.") + "</p>",
             "<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in report.get("limitations", [])) +
             "<li>Figures describe this test split only; another hospital, scanner or population can behave "
             "differently.</li></ul>"]

    parts.append("<h2>What was trained, on what</h2>")
    if training:
        arch = (f"an ensemble of {training['ensemble']} cross-validation fold models of {training['model']}, "
                "scores averaged" if training.get("ensemble") else html.escape(str(training.get("model"))))
        phases = ", ".join(f"{p}: {e} epochs" for p, e in zip(training.get("phases", []),
                                                               training.get("phase_epochs", []), strict=False))
        parts.append(f"<p>Architecture: {arch}; {training.get('parameters', 0):,} parameters; trained under "
                     f"{html.escape(str(training.get('strategy')))} ({training.get('replicas')} replica(s), "
                     f"{html.escape(str(training.get('dtype_policy')))}). Phases: {html.escape(phases or 'n/a')}. "
                     + (f"Weights kept from epoch {training['best_epoch']} (validation AUC "
                        f"{_fmt(training.get('best_val_auc'))})." if training.get("best_epoch") else "") + "</p>")
        cv = training.get("cv")
        if cv:
            parts.append(f"<h3>Cross-validation ({cv['folds']} patient-grouped folds over train+val)</h3>")
            parts.append(_table(["metric", "mean", "sd"], [[m, _fmt(v["mean"]), _fmt(v["std"])]
                                                         for m, v in cv["metrics"].items()]))
            parts.append(_table(["fold", "train images", "held-out images", "best epoch", "val_auc"],
                                [[f["fold"], f["train_examples"], f["val_examples"], f["best_epoch"],
                                  _fmt(f.get("val_auc"))] for f in cv["per_fold"]]))
        if training.get("config"):
            parts.append("<details><summary>Every training option</summary>" + _kv(training["config"]) + "</details>")
    else:
        parts.append("<p>No training.json beside the model: architecture and training options not recorded.</p>")
    if TRAINING_CURVES in plots:
        parts.append(embed_png(plots[TRAINING_CURVES], width=700))
    counts, patients = data["counts"], data.get("patients_per_class", {})
    parts.append("<h3>Images and patients per split and class</h3>")
    parts.append(_table(["split", *(f"{n} images" for n in names), *(f"{n} patients" for n in names)],
                        [[s, *(counts.get(s, {}).get(n, 0) for n in names),
                          *(patients.get(s, {}).get(n, "") for n in names)] for s in counts]))
    ids = data.get("patient_ids") or {}
    parts.append(f"<p class='note'>Inputs: {html.escape(json.dumps(data.get('states', {})))}; quarantine reasons: "
                 f"{html.escape(json.dumps(data.get('quarantine_reasons', {})))}; patient ids from "
                 f"{html.escape(json.dumps(ids))}; layout {html.escape(str(data.get('layout')))}; images stored at "
                 f"{data.get('image_size')} px ({html.escape(str(data.get('resize_policy')))}).</p>")
    if report.get("shortcuts"):
        parts.append("<h3>Shortcut warnings (validate)</h3><ul>" +
                     "".join(f"<li>{html.escape(x)}</li>" for x in report["shortcuts"]) + "</ul>")

    parts.append("<h2>Operating point</h2>")
    if result.threshold is None:
        parts.append("<p>Multi-class model: it decides by the highest score (argmax); no threshold is used.</p>")
    else:
        parts.append(f"<p>Threshold <b>{result.threshold:.4f}</b> on P({html.escape(names[1])}). "
                     f"{html.escape(op.sentence(report['ci_level']))}</p>")
        parts.extend(f"<p class='note'>{html.escape(w)}</p>" for w in op.warnings)
    parts.append("<details><summary>Every evaluation option</summary>" + _kv(report["config"]) + "</details>")

    parts.append(f"<h2>Test metrics with {level} confidence intervals</h2>"
                 "<p class='note'>Intervals: percentile bootstrap over patients "
                 f"({report['config']['bootstrap_resamples']} resamples), so images of one patient move "
                 "together.</p>")
    parts.append(_table(["metric", "value", f"{level} CI"],
                        [[_METRIC_LABELS[k], _fmt(result.metrics[k]),
                          f"{_fmt(result.intervals[k][0])} - {_fmt(result.intervals[k][1])}"]
                         for k in mx.METRIC_NAMES]))
    parts.append("<h3>Per class, one vs rest</h3>")
    parts.append(_table(["class", f"sensitivity ({level} CI)", f"specificity ({level} CI)"],
                        [[n, _ci_text(result.rates[f"recall/{c}"], result.intervals[f"recall/{c}"]),
                          _ci_text(result.rates[f"specificity/{c}"], result.intervals[f"specificity/{c}"])]
                         for c, n in enumerate(names)]))
    parts.append("<h2>Gates</h2>")
    parts.append(_table(["gate", "value", "bound", "passed"],
                        [[n, _fmt(g["value"]), _fmt(g["bound"]), "yes" if g["passed"] else "NO"]
                         for n, g in b.gates.items()]) if b.gates else "<p>No gate configured.</p>")
    if result.baseline is not None:
        base = result.baseline
        parts.append(f"<h3>Against production version {base.version}</h3><p class='note'>Same test images; "
                     f"production at its served threshold {_fmt(base.threshold)}; the interval is a paired "
                     "patient bootstrap of candidate minus production.</p>")
        parts.append(_table(["metric", "candidate", f"production v{base.version}", f"difference ({level} CI)"],
                            [[_METRIC_LABELS[k], _fmt(result.metrics[k]), _fmt(base.metrics[k]),
                              _ci_text(result.metrics[k] - base.metrics[k], base.differences.get(k, (None, None)))]
                             for k in mx.METRIC_NAMES]))
    parts.append("<h2>Curves</h2>")
    parts.extend(embed_png(plots[p], width=420) for p in (ROC_PLOT, PR_PLOT, CALIBRATION_PLOT, CONFUSION_PLOT)
                 if p in plots)
    parts.append("<h2>Error analysis</h2>")
    if ERRORS_PLOT in plots:
        parts.append("<p class='note'>The test images the model got most wrong, false negatives first, each with "
                     "Grad-CAM of the class it called (red: the strongest evidence). A heat map outside the anatomy "
                     "that matters is a warning sign of a shortcut.</p>" + embed_png(plots[ERRORS_PLOT]))
    else:
        cm = np.array(result.confusion_matrix)
        parts.append("<p>No test image was misclassified.</p>" if cm.sum() == np.trace(cm)
                     else "<p>No Keras model beside the export: no error analysis images.</p>")
    parts.append("<h2>What the model looks at</h2>")
    if GRAD_CAM_PLOT in plots:
        parts.append("<p class='note'>Grad-CAM heatmaps for the most confident correct and incorrect test "
                     "predictions. They show where the network looked, not why.</p>")
        parts.extend(embed_png(plots[p]) for p in (GRAD_CAM_PLOT, FILTERS_PLOT, FEATURE_MAPS_PLOT) if p in plots)
    else:
        parts.append("<p>No Keras model was found beside the export, so no explanations were made.</p>")
    parts.append("<h2>CLAIM checklist items covered</h2><p class='note'>Checklist for Artificial Intelligence in "
                 "Medical Imaging (Mongan, Moy and Kahn, Radiology: Artificial Intelligence 2020).</p>")
    parts.append(_table(["CLAIM item", "where"], [[item, where] for item, where in CLAIM_ITEMS]))
    return "\n".join(parts)


def write_model_card(
    out_dir: str, model_dir: str, result: EvaluationResult, report: dict, test: Scored, config: EvaluateConfig
) -> str:
    """Writes the plots and model_card.html into out_dir; returns the page's path."""
    import shutil

    from radflow import fileio
    from radflow.components.train.train import CURVES_FILE, KERAS_MODEL_FILE

    plots = {name: os.path.join(out_dir, name) for name in (ROC_PLOT, PR_PLOT, CALIBRATION_PLOT, CONFUSION_PLOT)}
    plot_roc(result, test, plots[ROC_PLOT])
    plot_pr(result, test, plots[PR_PLOT])
    plot_calibration(result, test, config.calibration_bins, plots[CALIBRATION_PLOT])
    plot_confusion(result, plots[CONFUSION_PLOT])
    curves = os.path.join(model_dir, CURVES_FILE)
    if os.path.exists(curves):
        plots[TRAINING_CURVES] = shutil.copy(curves, os.path.join(out_dir, TRAINING_CURVES))
    keras_model = os.path.join(model_dir, KERAS_MODEL_FILE)
    layer = (report.get("training") or {}).get("last_conv_layer") or None
    if os.path.exists(keras_model):
        if config.explain_images > 0:
            for name in plot_explanations(keras_model, result, test, config.explain_images, out_dir, layer):
                plots[name] = os.path.join(out_dir, name)
        if config.error_analysis_images > 0 and plot_error_analysis(
                keras_model, result, test, config.error_analysis_images, os.path.join(out_dir, ERRORS_PLOT), layer):
            plots[ERRORS_PLOT] = os.path.join(out_dir, ERRORS_PLOT)
    else:
        log.warning("evaluate: no %s in %s; the model card has no explanations", KERAS_MODEL_FILE, model_dir)
    path = os.path.join(out_dir, MODEL_CARD_FILE)
    fileio.write_text_atomic(path, model_card_html(report, result, plots, model_dir))
    return path
