"""`radflow compare A B`: two models on the same test images, and whether their difference is real.

A and B are each a pipeline run directory (runs/radflow-<time>/), a train or evaluate output, or a
pushed version (<serving_root>/<model>/<n>/). Both are scored through their exported
`serving_default` on one examples directory's test split, each at its own operating point (its
evaluation's threshold, or the one its version serves), and compared with the same paired patient
bootstrap evaluate uses against production, plus DeLong's test of the two ROC AUCs for binary
models. The config differences say what changed between them.

    radflow compare runs/radflow-2026-12-01-10-00-00 models/radflow/3 --out runs/compare
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from radflow import fileio
from radflow.components.evaluate import metrics as mx
from radflow.components.evaluate.config import EvaluateConfig
from radflow.components.evaluate.evaluate import BLESSING_FILE, EVAL_SPLIT, METRICS_FILE, score_split
from radflow.components.push.layout import LINEAGE_DIR, LINEAGE_FILE
from radflow.components.train.train import RESULT_FILE, SAVED_MODEL_DIR, THRESHOLD_ASSET

COMPARE_FILE = "compare.json"


@dataclass(frozen=True)
class Side:
    """One of the two models: where its servable is, its operating point, and its settings.

    Args:
        name: what the user passed.
        saved_model: the SavedModel scored.
        threshold: its operating threshold (binary); None for argmax models.
        threshold_from: where that threshold came from.
        examples_dir: the examples it was evaluated on, if recorded.
        config: its training and evaluation settings, flattened ("train.epochs": 30, ...).
    """

    name: str
    saved_model: str
    threshold: float | None
    threshold_from: str
    examples_dir: str
    config: dict


def _flat(prefix: str, values: dict | None) -> dict:
    out = {}
    for key, value in (values or {}).items():
        if isinstance(value, dict):
            out.update(_flat(f"{prefix}{key}.", value))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _json(path: str) -> dict:
    return json.loads(fileio.read_text(path)) if tf.io.gfile.exists(path) else {}


def resolve(ref: str) -> Side:
    """Finds the servable, threshold and settings behind a run directory, a stage output or a version.

    Raises:
        FileNotFoundError: `ref` holds none of them.
    """
    lineage = _json(os.path.join(ref, LINEAGE_DIR, LINEAGE_FILE))
    if lineage or tf.io.gfile.exists(os.path.join(ref, "saved_model.pb")):  # a pushed version
        threshold_file = os.path.join(ref, "assets", THRESHOLD_ASSET)
        config = lineage.get("config", {})
        threshold = lineage.get("threshold")
        if threshold is None and tf.io.gfile.exists(threshold_file):
            threshold = float(fileio.read_text(threshold_file).strip())
        return Side(ref, ref, threshold, "the threshold the version serves", lineage.get("data", {}).get(
            "examples_dir", ""), {**_flat("train.", (config.get("training") or {}).get("config")),
                                  **_flat("evaluate.", config.get("evaluate"))})
    train_dir, eval_dir = ref, ref
    if tf.io.gfile.exists(os.path.join(ref, "train")):  # a pipeline run directory
        train_dir = next(iter(sorted(glob.glob(os.path.join(ref, "train", "*", RESULT_FILE)))), "")
        train_dir = os.path.dirname(train_dir)
        eval_dir = os.path.dirname(next(iter(sorted(glob.glob(os.path.join(ref, "evaluate", "*", BLESSING_FILE)))),
                                        ""))
    report = _json(os.path.join(eval_dir, METRICS_FILE)) if eval_dir else {}
    train_dir = report.get("model_dir", train_dir) if not tf.io.gfile.exists(
        os.path.join(train_dir, SAVED_MODEL_DIR)) else train_dir
    saved_model = os.path.join(train_dir, SAVED_MODEL_DIR)
    if not train_dir or not tf.io.gfile.exists(saved_model):
        raise FileNotFoundError(f"compare: {ref!r} is neither a run directory, a train or evaluate output, nor a "
                                "pushed version (no saved_model found)")
    training = _json(os.path.join(train_dir, RESULT_FILE))
    return Side(ref, saved_model, report.get("threshold"),
                "its evaluation" if report else "none (not evaluated): 0.5", report.get("data", {}).get(
                    "examples_dir", ""), {**_flat("train.", training.get("config")),
                                          **_flat("evaluate.", report.get("config"))})


def config_differences(a: Side, b: Side) -> dict[str, tuple]:
    """Every setting whose value differs between A and B (missing on one side counts as different)."""
    keys = sorted(set(a.config) | set(b.config))
    return {k: (a.config.get(k), b.config.get(k)) for k in keys if a.config.get(k) != b.config.get(k)}


def compare(a_ref: str, b_ref: str, examples_dir: str = "", out_dir: str = "",
            config: EvaluateConfig = EvaluateConfig()) -> dict:
    """Scores A and B on the same test images and compares them.

    Args:
        a_ref: model A (run directory, train/evaluate output, or pushed version).
        b_ref: model B.
        examples_dir: the examples whose test split both are scored on; default: A's, else B's.
        out_dir: where compare.json goes; "" writes nothing.
        config: bootstrap resamples, CI level and seed.

    Returns:
        The comparison: each side's metrics with intervals, the paired differences, DeLong's test
        (binary), and the config differences.

    Raises:
        FileNotFoundError: a side cannot be found, or no examples directory is known.
        ValueError: A and B answer different classes.
    """
    a, b = resolve(a_ref), resolve(b_ref)
    examples_dir = examples_dir or a.examples_dir or b.examples_dir
    if not examples_dir:
        raise FileNotFoundError("compare: neither model records the examples it was evaluated on; pass --examples")
    sa = score_split(a.saved_model, examples_dir, EVAL_SPLIT, config.batch_size)
    sb = score_split(b.saved_model, examples_dir, EVAL_SPLIT, config.batch_size)
    if sa.scores.shape != sb.scores.shape:
        raise ValueError(f"compare: A answers {sa.scores.shape[1]} classes and B {sb.scores.shape[1]}: not comparable")
    binary = sa.scores.shape[1] == 2
    ta = (a.threshold if a.threshold is not None else 0.5) if binary else None
    tb = (b.threshold if b.threshold is not None else 0.5) if binary else None
    y, patients = sa.labels, sa.patients
    sides = {}
    for key, side, scored, t in (("a", a, sa, ta), ("b", b, sb, tb)):
        sides[key] = {"name": side.name, "saved_model": side.saved_model, "threshold": t,
                      "threshold_from": side.threshold_from,
                      "metrics": mx.compute_metrics(y, scored.scores, t),
                      "intervals": mx.bootstrap_intervals(y, scored.scores, t, patients, config.bootstrap_resamples,
                                                          config.ci_level, config.seed)}
    result = {
        "examples_dir": examples_dir,
        "images": int(len(y)),
        "patients": int(mx.patient_groups(patients).max() + 1),
        "ci_level": config.ci_level,
        "a": sides["a"],
        "b": sides["b"],
        "difference": {k: v for k, v in mx.paired_differences(
            y, (sa.scores, ta), (sb.scores, tb), patients, config.bootstrap_resamples, config.ci_level,
            config.seed).items() if k in mx.METRIC_NAMES},
        "delong": mx.delong_test(y, sa.scores[:, 1], sb.scores[:, 1]) if binary else None,
        "config_differences": config_differences(a, b),
    }
    if out_dir:
        tf.io.gfile.makedirs(out_dir)
        fileio.write_text_atomic(os.path.join(out_dir, COMPARE_FILE), json.dumps(result, indent=2, default=float))
    return result


def format_comparison(result: dict) -> str:
    """The comparison as a terminal table: metrics side by side, the difference's CI, DeLong, settings."""
    level = f"{result['ci_level']:.0%}"
    a, b, d = result["a"], result["b"], result["difference"]
    def point(side: dict) -> str:
        return "argmax" if side["threshold"] is None else f"threshold {side['threshold']:.4f}, {side['threshold_from']}"

    lines = [f"A: {a['name']} ({point(a)})", f"B: {b['name']} ({point(b)})",
             f"on {result['images']} test images from {result['patients']} patients of {result['examples_dir']}", "",
             f"{'metric':<18} {'A':>8} {'B':>8} {'A - B':>8}  {level} CI of A - B (paired patient bootstrap)"]
    for name in mx.METRIC_NAMES:
        va, vb = a["metrics"][name], b["metrics"][name]
        lo, hi = d[name]
        excludes = "" if not (np.isfinite(lo) and np.isfinite(hi)) or lo <= 0 <= hi else "  (excludes 0)"
        lines.append(f"{name:<18} {va:>8.4f} {vb:>8.4f} {va - vb:>+8.4f}  [{lo:+.4f}, {hi:+.4f}]{excludes}")
    if result["delong"]:
        t = result["delong"]
        lines += ["", f"DeLong's test of the ROC AUCs: difference {t['difference']:+.4f}, SE {t['se']:.4f}, "
                  f"z {t['z']:.3f}, p {t['p_value']:.4g}"]
    diffs = result["config_differences"]
    lines += ["", "settings that differ:" if diffs else "settings that differ: none"]
    lines += [f"  {k}: {va!r} -> {vb!r}" for k, (va, vb) in diffs.items()]
    return "\n".join(lines)
