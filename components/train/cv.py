"""Patient-grouped, stratified k-fold cross-validation over train+val.

With small medical sets one validation split gives a noisy estimate. Before the final fit, train
pools train and val, splits the pool into k folds so that no patient (the `patient_key` group;
an image without one is its own group) is in two folds and every fold holds about the same share
of each class, fits one model per fold on the other k-1, and reports the mean and standard
deviation of the validation metrics at each fold's best epoch. Each fold model also scores its
held-out fold: pooled, those out-of-fold predictions cover all of train+val, each scored by a
model that never saw it, and evaluate can choose the operating threshold on them
(threshold_source: oof). With ensemble_folds the fold models are kept and their mean is the model.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter, defaultdict
from dataclasses import replace

import keras
import numpy as np
import tensorflow as tf

from radflow import examples as ex
from radflow import fileio
from radflow.components.class_balance.class_balance import ClassBalance, class_weights, initial_bias
from radflow.components.train.config import TrainConfig
from radflow.components.train.data import CLASS_WEIGHTS, OVERSAMPLE, read_index, scoring_batches
from radflow.components.train.fit import MONITOR, fit_model
from radflow.components.train.strategy import Acceleration

log = logging.getLogger(__name__)

CV_FILE = "cv.json"
FOLD_FILE = "folds.json"  # fold results of one fold task, or of several once merged
OOF_FILE = "oof_predictions.json"  # every train+val example scored by the fold model that never saw it
FOLD_MODEL = "fold-{fold}.keras"  # a fold's fitted model, kept for an ensemble (train.ensemble_folds)
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


def _held_out_predictions(model: keras.Model, examples_dir: str, metadata: ex.DatasetMetadata,
                          groups: set[str], batch_size: int) -> dict[str, list]:
    """A fold model's scores (in serving's (N, K) form) on the examples of its held-out groups."""
    labels, scores, patients = [], [], []
    for x, y, key in scoring_batches(examples_dir, POOLED_SPLITS, metadata, batch_size, groups):
        probs = model(x, training=False).numpy().astype(np.float64)
        scores.extend((np.concatenate([1 - probs, probs], axis=1) if probs.shape[1] == 1 else probs).tolist())
        labels.extend(y.numpy().tolist())
        patients.extend(k.decode() for k in key.numpy())
    return {"labels": labels, "scores": scores, "patients": patients}


def _fit_fold(examples_dir: str, metadata: ex.DatasetMetadata, balance: ClassBalance, config: TrainConfig,
              strategy: tf.distribute.Strategy, accel: Acceleration, work_dir: str, keys: list[str],
              labels: np.ndarray, fold_of: dict[str, int], fold: int, model_dir: str) -> dict:
    """Fits fold `fold` on the other folds; returns its validation metrics at its best epoch and its
    out-of-fold predictions, and keeps its model in `model_dir` when the folds make an ensemble."""
    example_folds = np.asarray([fold_of[g] for g in keys])
    val_groups = {g for g, f in fold_of.items() if f == fold}
    in_train = example_folds != fold
    log.info("train: cross-validation fold %d/%d: %d train, %d validation examples", fold + 1, config.cv_folds,
             int(in_train.sum()), int((~in_train).sum()))
    fitted = fit_model(examples_dir, metadata, _fold_balance(balance, labels[in_train], metadata.num_classes),
                       replace(config, cv_folds=0, ensemble_folds=False), strategy, accel,
                       os.path.join(work_dir, f"fold-{fold}"),
                       train_split=POOLED_SPLITS, val_split=POOLED_SPLITS, train_groups=set(fold_of) - val_groups,
                       val_groups=val_groups, train_size=int(in_train.sum()), verbose=0)
    best = fitted.best_epoch - 1
    log.info("train: fold %d %s=%.4f", fold + 1, MONITOR, fitted.best_val_auc)
    result = {"fold": fold, "train_examples": int(in_train.sum()), "val_examples": int((~in_train).sum()),
              "best_epoch": fitted.best_epoch, "groups": len(fold_of),
              **{m: fitted.history[m][best] for m in REPORTED if m in fitted.history},
              "oof": _held_out_predictions(fitted.model, examples_dir, metadata, val_groups, config.batch_size)}
    if config.ensemble_folds:
        path = os.path.join(model_dir, FOLD_MODEL.format(fold=fold))
        fitted.model.save(path)
        result["model"] = path
    return result


def summarize(per_fold: list[dict], folds: int) -> dict:
    """Mean and standard deviation of each reported metric over the folds.

    Raises:
        ValueError: the fold results are not exactly folds 0..folds-1 (a fold missing or run twice).
    """
    found = sorted(f["fold"] for f in per_fold)
    if found != list(range(folds)):
        raise ValueError(f"cross-validation expected folds {list(range(folds))}, got {found}")
    per_fold = sorted(per_fold, key=lambda f: f["fold"])
    metrics = {m: {"mean": float(np.mean([f[m] for f in per_fold])), "std": float(np.std([f[m] for f in per_fold]))}
               for m in REPORTED if all(m in f for f in per_fold)}
    log.info("train: cross-validation %s", {m: f"{v['mean']:.4f} ± {v['std']:.4f}" for m, v in metrics.items()})
    return {"folds": folds, "groups": per_fold[0]["groups"], "metrics": metrics,
            "per_fold": [{k: v for k, v in f.items() if k != "oof"} for f in per_fold]}


def write_oof(out_dir: str, per_fold: list[dict]) -> None:
    """Pools the folds' out-of-fold predictions into OOF_FILE: all of train+val, each scored once."""
    pooled = {"labels": [], "scores": [], "patients": [], "folds": []}
    for f in sorted(per_fold, key=lambda f: f["fold"]):
        for key in ("labels", "scores", "patients"):
            pooled[key].extend(f["oof"][key])
        pooled["folds"].extend([f["fold"]] * len(f["oof"]["labels"]))
    fileio.write_text_atomic(os.path.join(out_dir, OOF_FILE), json.dumps(pooled))


def read_oof(model_dir: str) -> dict[str, np.ndarray]:
    """A train output's out-of-fold predictions: labels (N,), scores (N, K), patients (N,), folds (N,)."""
    raw = json.loads(fileio.read_text(os.path.join(model_dir, OOF_FILE)))
    return {"labels": np.asarray(raw["labels"], np.int64), "scores": np.asarray(raw["scores"], np.float64),
            "patients": np.asarray(raw["patients"], str), "folds": np.asarray(raw["folds"], np.int64)}


def cross_validate(examples_dir: str, out_dir: str, metadata: ex.DatasetMetadata, balance: ClassBalance,
                   config: TrainConfig, strategy: tf.distribute.Strategy, accel: Acceleration,
                   work_dir: str) -> tuple[dict, list[dict]]:
    """Fits config.cv_folds models one after another; writes their summary (OUT/cv.json) and OOF_FILE.

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
        The summary, {"folds": k, "groups": n, "metrics": {name: {"mean", "std"}}, "per_fold": [...]},
        and every fold's full result (with its out-of-fold predictions and, for an ensemble, its model).
    """
    keys, labels = read_index(examples_dir, POOLED_SPLITS, metadata)
    fold_of = assign_folds(keys, labels, config.cv_folds, config.seed)
    per_fold = [_fit_fold(examples_dir, metadata, balance, config, strategy, accel, work_dir, keys, labels, fold_of,
                          fold, out_dir) for fold in range(config.cv_folds)]
    summary = summarize(per_fold, config.cv_folds)
    write_summary(out_dir, summary)
    write_oof(out_dir, per_fold)
    return summary, per_fold


def write_summary(out_dir: str, summary: dict) -> None:
    fileio.write_text_atomic(os.path.join(out_dir, CV_FILE), json.dumps(summary, indent=2))


def fit_fold(examples_dir: str, out_dir: str, balance: ClassBalance, config: TrainConfig, fold: int) -> dict:
    """One fold of the cross-validation, on its own: what a cluster runs as a separate KFP task.

    Every fold task assigns the folds the same way (same examples, cv_folds and seed), so k tasks
    running in parallel together cover exactly the k folds `cross_validate` would fit in turn.

    Args:
        examples_dir: an ingest output.
        out_dir: receives fold.json: a one-element list with this fold's metrics.
        balance: class_balance's output.
        config: hyperparameters, with cv_folds >= 2.
        fold: which fold to hold out, in [0, cv_folds).

    Returns:
        The fold's metrics.
    """
    from radflow.components.train.strategy import acceleration, choose_strategy, device_kind

    if not 0 <= fold < config.cv_folds:
        raise ValueError(f"fold {fold} is outside [0, cv_folds={config.cv_folds})")
    strategy = choose_strategy()
    metadata = ex.read_metadata(examples_dir)
    accel = acceleration(device_kind(strategy), config.mixed_precision, config.xla)
    keys, labels = read_index(examples_dir, POOLED_SPLITS, metadata)
    fold_of = assign_folds(keys, labels, config.cv_folds, config.seed)
    work_dir = os.path.join(out_dir, ".fit")
    result = _fit_fold(examples_dir, metadata, balance, config, strategy, accel, work_dir, keys, labels, fold_of, fold,
                       out_dir)
    if tf.io.gfile.exists(work_dir):
        tf.io.gfile.rmtree(work_dir)
    fileio.write_text_atomic(os.path.join(out_dir, FOLD_FILE), json.dumps([result], indent=2))
    return result


def read_folds(out_dir: str) -> list[dict]:
    """The fold results in a fold_fit or merge_folds output."""
    return json.loads(fileio.read_text(os.path.join(out_dir, FOLD_FILE)))


def merge_folds(first_dir: str, second_dir: str, out_dir: str) -> list[dict]:
    """Concatenates two outputs' fold results: the fan-in that lets parallel fold tasks meet
    without ParallelFor, which kfp.local cannot run."""
    merged = read_folds(first_dir) + read_folds(second_dir)
    fileio.write_text_atomic(os.path.join(out_dir, FOLD_FILE), json.dumps(merged, indent=2))
    return merged
