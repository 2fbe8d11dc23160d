"""In-process prediction through an exported model's `serving_default` signature.

The same contract TF Serving exposes: encoded image bytes in; per-class `scores` and
`classes` out. Used at the end of `radflow run` to show one real prediction, and as the
in-process floor that network serving is measured against.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from radflow import dicom
from radflow.components.train.train import CLASSES, SCORES, SERVING_INPUT, THRESHOLD


@dataclass(frozen=True)
class Prediction:
    path: str
    label: str  # the highest-scoring class
    scores: dict[str, float]  # class name -> probability
    threshold: float | None = None  # binary models: the operating threshold the model returns
    decision: str = ""  # binary: the positive (second) class when its score reaches the threshold; else `label`


def served_bytes(data: bytes) -> bytes:
    """What serving_default is sent for a file: the file itself, a DICOM rendered to PNG as ingest renders it."""
    return dicom.to_png(data) if dicom.is_dicom(data) else data


def predict_files(saved_model_dir: str, paths: list[str]) -> list[Prediction]:
    """Scores image files (JPEG, PNG, BMP, GIF, DICOM) with an exported model.

    Args:
        saved_model_dir: a SavedModel exported by train, e.g. <serving_root>/radflow/3.
        paths: image files, local or gs://.

    Returns:
        One prediction per file, in order.
    """
    serve = tf.saved_model.load(saved_model_dir).signatures["serving_default"]
    images = tf.constant([served_bytes(tf.io.gfile.GFile(p, "rb").read()) for p in paths])
    out = serve(**{SERVING_INPUT: images})
    thresholds = out[THRESHOLD].numpy() if THRESHOLD in out else [None] * len(paths)
    predictions = []
    for path, scores, classes, t in zip(paths, out[SCORES].numpy(), out[CLASSES].numpy(), thresholds, strict=True):
        named = {c.decode(): float(s) for c, s in zip(classes, scores, strict=True)}
        label = max(named, key=named.get)
        names = list(named)
        binary = len(names) == 2 and t is not None
        decision = (names[1] if named[names[1]] >= t else names[0]) if binary else label
        predictions.append(Prediction(path, label, named, float(t) if binary else None, decision))
    return predictions
