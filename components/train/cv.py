"""Patient-grouped, stratified k-fold cross-validation over train+val.

With small medical sets one validation split gives a noisy estimate. Before the final fit, train
pools train and val, splits the pool into k folds so that no patient (the `patient_key` group;
an image without one is its own group) is in two folds and every fold holds about the same share
of each class, fits one model per fold on the other k-1, and reports the mean and standard
deviation of the validation metrics at each fold's best epoch.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter, defaultdict
from dataclasses import replace

import numpy as np
import tensorflow as tf

from radflow import examples as ex
from radflow import fileio
from radflow.components.class_balance.class_balance import ClassBalance, class_weights, initial_bias
from radflow.components.train.config import TrainConfig
from radflow.components.train.data import CLASS_WEIGHTS, OVERSAMPLE, read_index
from radflow.components.train.fit import MONITOR, fit_model
from radflow.components.train.strategy import Acceleration

log = logging.getLogger(__name__)

CV_FILE = "cv.json"
POOLED_SPLITS = ("train", "val")
REPORTED = ("val_auc", "val_loss", "val_accuracy")


def assign_folds(groups: list[str], labels: np.ndarray, k: int, seed: int = 0) -> dict[str, int]:
    """Stratified group k-fold: group -> fold in [0, k).

    A group's stratum is its most frequent label (ties go to the higher label, the finding).
    Within each stratum, groups are placed largest first (seeded order among equals) into the
    fold that so far holds the fewest examples of that stratum, then the fewest overall.

    Args:
        groups: the group key of every example.
        labels: the label of every example.
        k: number of folds, >= 2.
        seed: order among groups of equal size.

    Raises:
        ValueError: k < 2, or a class has fewer groups than k (some fold would lack it).
    """
    if k < 2:
        raise ValueError(f"cv_folds must be at least 2, got {k}")
    per_group: dict[str, Counter] = defaultdict(Counter)
    for g, y in zip(groups, labels.tolist(), strict=True):
        per_group[g][y] += 1
    strata: dict[int, list[str]] = defaultdict(list)
    for g, counts in per_group.items():
        strata[max(counts, key=lambda y: (counts[y], y))].append(g)
    thin = {y: len(gs) for y, gs in strata.items() if len(gs) < k}
    if thin:
        raise ValueError(f"cv_folds={k} but label(s) {sorted(thin)} have only {thin} patient group(s); "
                         "every fold needs each class: lower cv_folds")
    rng = random.Random(seed)
    fold_of: dict[str, int] = {}
    total = [0] * k
    for y in sorted(strata):
        in_stratum = [0] * k
        ordered = sorted(strata[y])
        rng.shuffle(ordered)
        for g in sorted(ordered, key=lambda g: -sum(per_group[g].values())):  # stable: keeps the seeded order
            size = sum(per_group[g].values())
            fold = min(range(k), key=lambda f: (in_stratum[f], total[f], f))
            fold_of[g] = fold
            in_stratum[fold] += size
            total[fold] += size
    return fold_of


def _fold_balance(balance: ClassBalance, labels: np.ndarray, num_classes: int) -> ClassBalance:
    """The class balance of a fold's training part: same strategy, weights and bias from its counts."""
    counts = [int((labels == c).sum()) for c in range(num_classes)]
    weights = class_weights(counts) if balance.strategy == CLASS_WEIGHTS else [1.0] * num_classes
    # Oversampled batches are balanced, so the prior the output bias encodes is uniform.
    bias = initial_bias([1] * num_classes if balance.strategy == OVERSAMPLE else counts)
    return replace(balance, class_weights=dict(enumerate(weights)), initial_bias=bias)


def cross_validate(examples_dir: str, out_dir: str, metadata: ex.DatasetMetadata, balance: ClassBalance,
                   config: TrainConfig, strategy: tf.distribute.Strategy, accel: Acceleration,
                   work_dir: str) -> dict:
    """Fits config.cv_folds models and writes their summary to OUT/cv.json.

    Args:
        examples_dir: an ingest output.
        out_dir: receives cv.json.
        metadata: the examples' metadata.
        balance: class_balance's output (its strategy; weights are recomputed per fold).
        config: hyperparameters, with cv_folds >= 2.
        strategy: the distribution strategy.
        accel: dtype policy and XLA.
        work_dir: resumable state of each fold's fit.

    Returns:
        {"folds": k, "groups": n, "metrics": {name: {"mean", "std"}}, "per_fold": [...]}.
    """
    keys, labels = read_index(examples_dir, POOLED_SPLITS, metadata)
    fold_of = assign_folds(keys, labels, config.cv_folds, config.seed)
    example_folds = np.asarray([fold_of[g] for g in keys])
    per_fold = []
    for fold in range(config.cv_folds):
        val_groups = {g for g, f in fold_of.items() if f == fold}
        train_groups = set(fold_of) - val_groups
        in_train = example_folds != fold
        log.info("train: cross-validation fold %d/%d: %d train, %d validation examples", fold + 1, config.cv_folds,
                 int(in_train.sum()), int((~in_train).sum()))
        fitted = fit_model(examples_dir, metadata, _fold_balance(balance, labels[in_train], metadata.num_classes),
                           replace(config, cv_folds=0), strategy, accel, os.path.join(work_dir, f"fold-{fold}"),
                           train_split=POOLED_SPLITS, val_split=POOLED_SPLITS, train_groups=train_groups,
                           val_groups=val_groups, train_size=int(in_train.sum()), verbose=0)
        best = fitted.best_epoch - 1
        per_fold.append({"fold": fold, "train_examples": int(in_train.sum()), "val_examples": int((~in_train).sum()),
                         "best_epoch": fitted.best_epoch,
                         **{m: fitted.history[m][best] for m in REPORTED if m in fitted.history}})
        log.info("train: fold %d %s=%.4f", fold + 1, MONITOR, fitted.best_val_auc)
    metrics = {m: {"mean": float(np.mean([f[m] for f in per_fold])), "std": float(np.std([f[m] for f in per_fold]))}
               for m in REPORTED if all(m in f for f in per_fold)}
    summary = {"folds": config.cv_folds, "groups": len(fold_of), "metrics": metrics, "per_fold": per_fold}
    fileio.write_text_atomic(os.path.join(out_dir, CV_FILE), json.dumps(summary, indent=2))
    log.info("train: cross-validation %s", {m: f"{v['mean']:.4f} ± {v['std']:.4f}" for m, v in metrics.items()})
    return summary
