"""Shortcuts: per-image metadata that alone predicts the label, so a model could learn it instead of the disease.

COVID-19 radiograph models have been shown to learn the data source rather than the finding
(DeGrave, Janizek and Lee, Nature Machine Intelligence 2021): when one class comes from one
hospital, scanner or export, its file format, bit depth, size or exposure gives the class away.
For each stored feature this measures how well the feature alone ranks every class against the
rest: the one-feature ROC AUC (either direction), the best over classes. A numeric feature is its
own score; a categorical one is scored by its categories' class rates, cross-fitted over folds so
that a feature with as many values as images cannot look predictive by memorising them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from radflow import examples as ex
from radflow.components.evaluate.metrics import roc_auc

NUMERIC = (ex.ORIG_HEIGHT, ex.ORIG_WIDTH, ex.ASPECT_RATIO, ex.MEAN_INTENSITY, ex.STD_INTENSITY, ex.P05_INTENSITY,
           ex.P50_INTENSITY, ex.P95_INTENSITY, ex.NEAR_BLACK_FRACTION, ex.NEAR_WHITE_FRACTION)
CATEGORICAL = (ex.SOURCE_FORMAT, ex.BIT_DEPTH, *ex.HEADER_FEATURES.values())
FOLDS = 5  # cross-fitting folds of the categorical scores


@dataclass(frozen=True)
class Shortcut:
    """A feature whose values alone tell the classes apart.

    Args:
        feature: the feature's name in the example format.
        auc: its one-feature ROC AUC for the class it predicts best, in [0.5, 1].
        label: that class.
        detail: what gives it away, e.g. "PNG in 40 of 40 COVID19 images, 0 of 80 others".
    """

    feature: str
    auc: float
    label: str
    detail: str

    def describe(self, threshold: float) -> str:
        return (f"feature {self.feature!r} alone predicts {self.label!r} at one-feature ROC AUC {self.auc:.3f} "
                f"(>= {threshold}): {self.detail}; a model may learn it instead of the finding")


def read_features(examples_dir: str, splits: tuple[str, ...], metadata: ex.DatasetMetadata) -> dict[str, np.ndarray]:
    """The label and the per-image metadata features of `splits`, without the pixels' decode."""
    spec = {k: v for k, v in ex.feature_spec(metadata).items() if k != ex.IMAGE}
    files = [f for s in splits for f in ex.split_files(examples_dir, s)]
    columns: dict[str, list] = {k: [] for k in spec}
    if files:
        for batch in tf.data.TFRecordDataset(files).batch(1024).map(lambda b: tf.io.parse_example(b, spec)):
            for k in spec:
                columns[k].extend(batch[k].numpy().tolist())
    return {k: np.asarray([v.decode() if isinstance(v, bytes) else v for v in values]) for k, values in columns.items()}


def _best_auc(score: np.ndarray, labels: np.ndarray, k: int) -> tuple[float, int]:
    """The best one-vs-rest AUC of a score over the classes, either direction, and the class it points to.

    A binary score that ranks the positive class low points to the negative one; beyond two
    classes, low values of a numeric feature may give a class away as well as high ones.
    """
    best = (0.5, 1 if k == 2 else 0)
    for c in ([1] if k == 2 else range(k)):
        auc = roc_auc((labels == c).astype(int), score if score.ndim == 1 else score[:, c])
        if not np.isfinite(auc):
            continue
        points_to = c if auc >= 0.5 or k > 2 else 1 - c
        if max(auc, 1 - auc) > best[0]:
            best = (max(auc, 1 - auc), points_to)
    return best


def _cross_fitted_rates(values: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(N, K): each image's class rates among images with its value in the other folds (add-one smoothed)."""
    folds = np.arange(len(values)) % FOLDS
    out = np.empty((len(values), k))
    for f in range(FOLDS):
        rest = folds != f
        counts: dict[str, Counter] = {}
        for v, y in zip(values[rest], labels[rest], strict=True):
            counts.setdefault(v, Counter())[int(y)] += 1
        for i in np.flatnonzero(~rest):
            seen = counts.get(values[i], Counter())
            total = sum(seen.values())
            out[i] = [(seen[c] + 1) / (total + k) for c in range(k)]
    return out


def find_shortcuts(
    columns: dict[str, np.ndarray], label_names: tuple[str, ...], threshold: float, min_examples: int = 20
) -> list[Shortcut]:
    """Every stored feature whose one-feature ROC AUC reaches `threshold`, strongest first.

    Args:
        columns: `read_features`' output.
        label_names: the class names.
        threshold: the AUC at or above which a feature is reported.
        min_examples: fewer examples than this prove nothing; none are reported.

    Returns:
        The shortcuts found.
    """
    labels = columns[ex.LABEL].astype(int)
    k = len(label_names)
    if len(labels) < min_examples or len(set(labels.tolist())) < 2:
        return []
    found = []
    for name in NUMERIC + CATEGORICAL:
        values = columns.get(name)
        if values is None or len(set(values.tolist())) < 2:
            continue
        if name in NUMERIC:
            auc, c = _best_auc(values.astype(float), labels, k)
            inside, outside = values[labels == c].astype(float), values[labels != c].astype(float)
            detail = (f"median {np.median(inside):.3g} in {label_names[c]} images, {np.median(outside):.3g} in "
                      "the others")
        else:
            values = values.astype(str)
            auc, c = _best_auc(_cross_fitted_rates(values, labels, k), labels, k)
            inside, outside = Counter(values[labels == c]), Counter(values[labels != c])
            top = max(inside, key=lambda v: inside[v] / max(1, sum(inside.values())) - outside[v] / max(
                1, sum(outside.values())))
            detail = (f"{top or '(empty)'} in {inside[top]} of {sum(inside.values())} {label_names[c]} images, "
                      f"{outside[top]} of {sum(outside.values())} others")
        if auc >= threshold:
            found.append(Shortcut(name, float(auc), label_names[c], detail))
    return sorted(found, key=lambda s: -s.auc)
