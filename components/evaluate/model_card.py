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
MODEL_CARD_FILE = "model_card.html"
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


def model_card_html(report: dict, result: EvaluationResult, plots: dict[str, str], model_dir: str) -> str:
    """The page: verdict, data, operating point, metrics with CIs, gates, comparison, plots, explanations."""
    b = result.blessing
    data = report["data"]
    level = f"{report['ci_level']:.0%}"
    parts = ["<!doctype html><meta charset='utf-8'><title>radflow model card</title>", _STYLE,
             "<h1>Model card</h1>",
             f"<p class='note'>model: {html.escape(model_dir)}<br>examples: {html.escape(data['examples_dir'])}"
             f"<br>data fingerprint: {html.escape(str(data.get('input_fingerprint') or 'not recorded'))}</p>",
             f"<div class='verdict {'yes' if b.blessed else 'no'}'>{'BLESSED' if b.blessed else 'NOT BLESSED'}</div>",
             f"<p>{html.escape(b.reason)}</p>",
             *([f"<h2>Limitations</h2><ul>{''.join(f'<li>{html.escape(x)}</li>' for x in data['limitations'])}</ul>"]
               if data.get("limitations") else []),
             "<h2>Data</h2>"]
    names = result.label_names
    counts = data["counts"]
    parts.append(_table(["split", *names, "images", "patients"],
                        [[s, *(counts.get(s, {}).get(n, 0) for n in names), sum(counts.get(s, {}).values()),
                          data["patients"].get(s, "")] for s in counts]))
    parts.append("<h2>Operating point</h2>")
    if result.threshold is None:
        parts.append("<p>Multi-class model: the predicted class is the highest-scoring one.</p>")
    else:
        val = report["val_metrics_at_threshold"]
        parts.append(f"<p>Threshold <b>{result.threshold:.4f}</b> on P({html.escape(names[1])}), chosen on the "
                     f"<b>validation</b> split by <code>{html.escape(report['threshold_method'])}</code> "
                     f"(target sensitivity {report['config']['target_sensitivity']}); on validation it gives "
                     f"sensitivity {val['recall']:.3f} and specificity {val['specificity']:.3f}. An image is "
                     f"called {html.escape(names[1])} when its score is at or above the threshold; the served "
                     "model returns this threshold with every answer.</p>")
    parts.append(f"<h2>Test metrics with {level} confidence intervals</h2>"
                 "<p class='note'>Intervals: percentile bootstrap over patients "
                 f"({report['config']['bootstrap_resamples']} resamples), so images of one patient move "
                 "together.</p>")
    parts.append(_table(["metric", "value", f"{level} CI"],
                        [[_METRIC_LABELS[k], _fmt(result.metrics[k]),
                          f"{_fmt(result.intervals[k][0])} - {_fmt(result.intervals[k][1])}"]
                         for k in mx.METRIC_NAMES]))
    if report["per_class"]:
        parts.append("<h3>Per class, one vs rest</h3>")
        keys = ["precision", "recall", "specificity", "f1", "roc_auc", "support"]
        parts.append(_table(["class", *keys],
                            [[c, *(_fmt(m[k]) for k in keys)] for c, m in report["per_class"].items()]))
    parts.append("<h2>Gates</h2>")
    parts.append(_table(["gate", "value", "bound", "passed"],
                        [[n, _fmt(g["value"]), _fmt(g["bound"]), "yes" if g["passed"] else "NO"]
                         for n, g in b.gates.items()]) if b.gates else "<p>No gate configured.</p>")
    if result.baseline is not None:
        base = result.baseline
        parts.append(f"<h3>Against production version {base.version}</h3><p class='note'>Same test images; "
                     f"production at its served threshold {_fmt(base.threshold)}.</p>")
        parts.append(_table(["metric", "candidate", f"production v{base.version}", "difference"],
                            [[_METRIC_LABELS[k], _fmt(result.metrics[k]), _fmt(base.metrics[k]),
                              _fmt(result.metrics[k] - base.metrics[k])] for k in mx.METRIC_NAMES]))
    parts.append("<h2>Curves</h2>")
    parts.extend(embed_png(plots[p], width=420) for p in (ROC_PLOT, PR_PLOT, CALIBRATION_PLOT, CONFUSION_PLOT)
                 if p in plots)
    parts.append("<h2>What the model looks at</h2>")
    if GRAD_CAM_PLOT in plots:
        parts.append("<p class='note'>Grad-CAM heatmaps (red: strongest evidence for the predicted class) for the "
                     "most confident correct and incorrect test predictions. They show where the network looked, "
                     "not why; a heatmap outside the lungs is a warning sign of shortcut learning.</p>")
        parts.extend(embed_png(plots[p]) for p in (GRAD_CAM_PLOT, FILTERS_PLOT, FEATURE_MAPS_PLOT))
    else:
        parts.append("<p>No Keras model was found beside the export, so no explanations were made.</p>")
    parts.append("<h2>Limitations</h2><p class='note'>Figures describe this test split only; a different "
                 "hospital, scanner or population can behave differently. The threshold was chosen for a target "
                 "sensitivity on a small validation split, so test sensitivity can fall below the target.</p>")
    return "\n".join(parts)


def write_model_card(
    out_dir: str, model_dir: str, result: EvaluationResult, report: dict, test: Scored, config: EvaluateConfig
) -> str:
    """Writes the plots and model_card.html into out_dir; returns the page's path."""
    from radflow import fileio
    from radflow.components.train.train import KERAS_MODEL_FILE, RESULT_FILE

    plots = {name: os.path.join(out_dir, name) for name in (ROC_PLOT, PR_PLOT, CALIBRATION_PLOT, CONFUSION_PLOT)}
    plot_roc(result, test, plots[ROC_PLOT])
    plot_pr(result, test, plots[PR_PLOT])
    plot_calibration(result, test, config.calibration_bins, plots[CALIBRATION_PLOT])
    plot_confusion(result, plots[CONFUSION_PLOT])
    keras_model = os.path.join(model_dir, KERAS_MODEL_FILE)
    if os.path.exists(keras_model) and config.explain_images > 0:
        training = os.path.join(model_dir, RESULT_FILE)
        layer = json.loads(fileio.read_text(training)).get("last_conv_layer") if os.path.exists(training) else None
        for name in plot_explanations(keras_model, result, test, config.explain_images, out_dir, layer):
            plots[name] = os.path.join(out_dir, name)
    else:
        log.warning("evaluate: no %s in %s; the model card has no explanations", KERAS_MODEL_FILE, model_dir)
    path = os.path.join(out_dir, MODEL_CARD_FILE)
    fileio.write_text_atomic(path, model_card_html(report, result, plots, model_dir))
    return path
