"""Fitting one model: one or two phases, each resumable after the process is killed.

A phase ("head", then "fine_tune" for a pretrained backbone) keeps its state under
`<work_dir>/<phase>/`:

    state/            BackupAndRestore: weights and epoch after every epoch (two generations)
    history.csv       CSVLogger, appended: every epoch's logs, surviving restarts
    best.weights.h5   ModelCheckpoint: the best weights by validation AUC so far
    done.weights.h5, done.json   written when the phase ends; a rerun then skips the phase

A restarted process therefore resumes a killed phase at its last finished epoch, with the
best-so-far threshold and the full history, and the final weights are the best checkpoint's
even when the best epoch ran before the restart.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field

import keras
import tensorflow as tf

from radflow import examples as ex
from radflow import fileio
from radflow.components.class_balance.class_balance import ClassBalance
from radflow.components.train import data
from radflow.components.train.config import LR_SCHEDULES, TrainConfig
from radflow.components.train.models import build_model, is_pretrained, set_trainable
from radflow.components.train.strategy import Acceleration, dtype_policy, trainer_for

log = logging.getLogger(__name__)

MONITOR = "val_auc"
HEAD, FINE_TUNE = "head", "fine_tune"
STATE_METADATA = "training_metadata.json"  # BackupAndRestore's record of the last finished epoch


def learning_rate(epoch: int, lr0: float, schedule: str, decay_epochs: float, epochs: int) -> float:
    """The step size of an epoch (0-based).

    constant: lr0. exponential: lr0 * 0.1 ** (epoch / decay_epochs), a tenfold decay every
    `decay_epochs`. cosine: lr0 * (1 + cos(pi * epoch / epochs)) / 2, from lr0 towards 0.

    Raises:
        ValueError: unknown schedule.
    """
    if schedule == "constant":
        return lr0
    if schedule == "exponential":
        return lr0 * 0.1 ** (epoch / decay_epochs)
    if schedule == "cosine":
        return lr0 * 0.5 * (1.0 + math.cos(math.pi * min(epoch, epochs) / epochs))
    raise ValueError(f"unknown lr_schedule {schedule!r}; choose one of {LR_SCHEDULES}")


@dataclass
class FitResult:
    """A fitted model and how it got there.

    Args:
        model: the plain functional model, holding the best weights.
        history: metric -> per-epoch values over all phases, resumed epochs included.
        best_epoch: 1-based epoch (over all phases) with the best validation AUC.
        best_val_auc: that AUC.
        resumed_from_epoch: the epoch (over all phases) this process resumed after; 0 for a fresh run.
        phases: the phases run, in order.
        phase_epochs: epochs each phase ran, in the same order.
    """

    model: keras.Model
    history: dict[str, list[float]]
    best_epoch: int
    best_val_auc: float
    resumed_from_epoch: int
    phases: list[str]
    phase_epochs: list[int] = field(default_factory=list)


def _read_history(path: str) -> dict[str, list[float]]:
    """CSVLogger's rows, keeping the last row of an epoch logged twice around a restart."""
    if not tf.io.gfile.exists(path):
        return {}
    rows = {int(row["epoch"]): row for row in csv.DictReader(io.StringIO(fileio.read_text(path)))}
    ordered = [rows[e] for e in sorted(rows)]
    keys = [k for k in (ordered[0] if ordered else {}) if k != "epoch"]
    return {k: [float(row[k]) for row in ordered] for k in keys}


def _resumed_epoch(state_dir: str) -> int:
    path = os.path.join(state_dir, STATE_METADATA)
    return int(json.loads(fileio.read_text(path))["epoch"]) if tf.io.gfile.exists(path) else 0


@dataclass(frozen=True)
class _Phase:
    name: str
    epochs: int
    learning_rate: float


def _phases(config: TrainConfig) -> list[_Phase]:
    phases = [_Phase(HEAD, config.epochs, config.learning_rate)]
    if is_pretrained(config) and config.fine_tune_epochs > 0:
        phases.append(_Phase(FINE_TUNE, config.fine_tune_epochs, config.fine_tune_learning_rate))
    return phases


def _what_learns(model: keras.Model, config: TrainConfig, phase: str) -> str:
    """Which weights a phase trains, for the log line that announces it."""
    trainable = sum(int(math.prod(w.shape)) for w in model.trainable_weights)
    total = sum(int(math.prod(w.shape)) for w in model.weights)
    share = f"{trainable:,} of {total:,} weights"
    if not is_pretrained(config):
        return f"every layer learns ({share})"
    if phase == HEAD:
        return f"the pretrained {config.model} is frozen, the head learns ({share})"
    unfrozen = f"the layers named {config.unfreeze_block}..." if config.unfreeze_block else \
        f"the top {config.unfreeze_layers} {config.model} layers"
    return f"fine-tuning: {unfrozen} learn too, BatchNormalization stays frozen ({share})"


def _run_phase(phase: _Phase, model: keras.Model, trainer: keras.Model, strategy: tf.distribute.Strategy,
               config: TrainConfig, metadata: ex.DatasetMetadata, accel: Acceleration, datasets: tuple,
               steps: int, work_dir: str, log_dir: str | None, verbose: int,
               previous: tuple[float, str] | None) -> tuple[dict, int]:
    """Fits one phase, or restores it when a previous process finished it.

    `previous` is the best validation AUC of the phases before and the file holding those
    weights: a phase that never beats it hands them on unchanged. Returns (history, resumed epoch).
    """
    phase_dir = os.path.join(work_dir, phase.name)
    done_weights, done_record = os.path.join(phase_dir, "done.weights.h5"), os.path.join(phase_dir, "done.json")
    set_trainable(model, config, phase.name)
    if tf.io.gfile.exists(done_record):
        model.load_weights(done_weights)
        log.info("train: phase %s finished before a restart; restored it", phase.name)
        history = json.loads(fileio.read_text(done_record))
        return history, len(history.get("loss", []))
    log.info("train: phase %s: %s; up to %d epochs at learning rate %g", phase.name,
             _what_learns(model, config, phase.name), phase.epochs, phase.learning_rate)
    tf.io.gfile.makedirs(phase_dir)
    state_dir, history_file = os.path.join(phase_dir, "state"), os.path.join(phase_dir, "history.csv")
    best_file = os.path.join(phase_dir, "best.weights.h5")
    resumed = _resumed_epoch(state_dir)
    earlier = _read_history(history_file).get(MONITOR, []) + ([previous[0]] if previous else [])
    if resumed:
        log.info("train: phase %s resumes after epoch %d", phase.name, resumed)
    with strategy.scope():
        trainer.compile(
            optimizer=keras.optimizers.Adam(phase.learning_rate),
            loss="binary_crossentropy" if metadata.num_classes == 2 else "categorical_crossentropy",
            metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")
                     if metadata.num_classes == 2 else keras.metrics.CategoricalAccuracy(name="accuracy")],
            jit_compile=accel.jit_compile,
        )
    callbacks = [
        keras.callbacks.LearningRateScheduler(lambda epoch: learning_rate(
            epoch, phase.learning_rate, config.lr_schedule, config.lr_decay_epochs, phase.epochs)),
        keras.callbacks.EarlyStopping(monitor=MONITOR, mode="max", patience=config.patience,
                                      start_from_epoch=config.warmup_epochs, restore_best_weights=True),
        keras.callbacks.ModelCheckpoint(best_file, monitor=MONITOR, mode="max", save_best_only=True,
                                        save_weights_only=True, initial_value_threshold=max(earlier, default=None)),
        # CSVLogger before BackupAndRestore: an epoch is logged before it counts as finished, so a
        # kill in between repeats (and re-logs) an epoch rather than losing its row.
        keras.callbacks.CSVLogger(history_file, append=True),
        keras.callbacks.BackupAndRestore(state_dir, double_checkpoint=True),
    ]
    if log_dir:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(log_dir, phase.name)))
    train_ds, val_ds = datasets
    trainer.fit(train_ds, validation_data=val_ds, epochs=phase.epochs, steps_per_epoch=steps, callbacks=callbacks,
                shuffle=False, verbose=verbose)  # the dataset shuffles itself
    if tf.io.gfile.exists(best_file):
        model.load_weights(best_file)
    elif previous:
        model.load_weights(previous[1])
    history = _read_history(history_file)
    model.save_weights(done_weights)
    fileio.write_text_atomic(done_record, json.dumps(history))
    return history, resumed


def fit_model(
    examples_dir: str,
    metadata: ex.DatasetMetadata,
    balance: ClassBalance,
    config: TrainConfig,
    strategy: tf.distribute.Strategy,
    accel: Acceleration,
    work_dir: str,
    *,
    train_split: str | tuple[str, ...] = "train",
    val_split: str | tuple[str, ...] = "val",
    train_groups: set[str] | None = None,
    val_groups: set[str] | None = None,
    train_size: int | None = None,
    log_dir: str | None = None,
    verbose: int = 2,
) -> FitResult:
    """Builds and fits the configured model on one train/validation selection.

    Args:
        examples_dir: an ingest output.
        metadata: its metadata.
        balance: class_balance's output; its strategy picks class weights, oversampling or neither.
        config: hyperparameters.
        strategy: the distribution strategy (choose_strategy()).
        accel: dtype policy and XLA for the strategy's device.
        work_dir: phase state for resuming (see the module docstring).
        train_split, val_split: split name(s) to read.
        train_groups, val_groups: keep only these group keys (cross-validation folds).
        train_size: examples in the training selection (default: the splits' sizes); sets the
            epoch length of an oversampled stream.
        log_dir: TensorBoard logs, or None.
        verbose: Keras fit verbosity.

    Returns:
        The fitted model and its history.
    """
    global_batch = config.batch_size * strategy.num_replicas_in_sync
    mode = balance.strategy
    train_ds = data.make_dataset(examples_dir, train_split, metadata, global_batch, training=True, seed=config.seed,
                                 augment=data.augmentation(config), balance=mode,
                                 class_weights=balance.class_weights, groups=train_groups)
    val_ds = data.make_dataset(examples_dir, val_split, metadata, global_batch, training=False, groups=val_groups)
    # One pass over train is an epoch, drawn from an endless stream (oversampling's already is):
    # one iterator lives through the whole fit, where a finite set would have Keras build and delete
    # one every epoch, and a deleted tf.distribute iterator waits out its background thread (on the
    # sample 2.2-2.4 s at the start of one epoch in three).
    splits = (train_split,) if isinstance(train_split, str) else train_split
    steps = data.steps_per_epoch(train_size or sum(metadata.split_size(s) for s in splits), global_batch)
    if mode != data.OVERSAMPLE:
        train_ds = train_ds.repeat()
    with dtype_policy(accel.policy), strategy.scope():
        model = build_model(metadata, config, balance.initial_bias)
        trainer = trainer_for(model, strategy)
    history: dict[str, list[float]] = {}
    resumed_total, offset, phases, phase_epochs, previous = 0, 0, [], [], None
    for phase in _phases(config):
        phase_history, resumed = _run_phase(phase, model, trainer, strategy, config, metadata, accel,
                                            (train_ds, val_ds), steps, work_dir, log_dir, verbose, previous)
        previous = (max(history.get(MONITOR, []) + phase_history[MONITOR]),
                    os.path.join(work_dir, phase.name, "done.weights.h5"))
        if resumed and not resumed_total:
            resumed_total = offset + resumed
        offset += len(phase_history.get("loss", []))
        phase_epochs.append(len(phase_history.get("loss", [])))
        for key, values in phase_history.items():
            history.setdefault(key, []).extend(values)
        phases.append(phase.name)
    auc = history[MONITOR]
    best = max(range(len(auc)), key=auc.__getitem__)
    return FitResult(model, history, best + 1, auc[best], resumed_total, phases, phase_epochs)
