"""train: fit the configured model on the ingested examples under the machine's tf.distribute strategy, export it.

One code path for a CPU, one or several GPUs, a TPU and several workers: `choose_strategy` reads
the machine (and TF_CONFIG), the global batch scales with the replicas, and mixed precision and
XLA switch on where there is an accelerator. The model is the baseline CNN or a
keras.applications backbone (models.py); a pretrained backbone trains in two phases. With
`cv_folds` the stage first cross-validates (cv.py) and then does the final fit. The export's
signatures run the same `radflow.preprocessing` functions as training (export.py).

    radflow train runs/examples runs/model --class-balance runs/class_balance
    radflow train runs/examples runs/model --model mobilenet_v2 --weights gs://b/mobilenet_v2.weights.h5
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass

import keras
import numpy as np
import tensorflow as tf

from radflow import examples as ex
from radflow import fileio
from radflow.components.class_balance.class_balance import ClassBalance
from radflow.components.train import cv
from radflow.components.train.config import BACKUP_DIR, TrainConfig
from radflow.components.train.data import make_dataset  # noqa: F401  (the stage's public API)
from radflow.components.train.export import (  # noqa: F401  (the export contract, imported from here by other stages)
    CLASSES,
    KERAS_MODEL_FILE,
    LABELS_ASSET,
    PIXELS_INPUT,
    PIXELS_SIGNATURE,
    SAVED_MODEL_DIR,
    SCORES,
    SERVING_INPUT,
    SERVING_SIGNATURE,
    THRESHOLD,
    THRESHOLD_ASSET,
    WARMUP_DIR,
    WARMUP_FILE,
    export_serving,
    read_labels,
)
from radflow.components.train.fit import fit_model
from radflow.components.train.models import last_conv_layer_name
from radflow.components.train.strategy import acceleration, choose_strategy, device_kind, strategy_name
from radflow.ensemble import ensemble_members, ensemble_model

log = logging.getLogger(__name__)

HISTORY_FILE = "history.json"
CURVES_FILE = "training_curves.png"
LOGS_DIR = "logs"  # TensorBoard event files
RESULT_FILE = "training.json"  # written last: the model directory is complete when it exists


@dataclass(frozen=True)
class TrainResult:
    """What was trained, on what, and how well it did on validation.

    Args:
        model_dir: the output directory.
        strategy: the tf.distribute strategy's class name.
        replicas: replicas in sync (devices over all workers).
        epochs_run: epochs over all phases, including those before a restart.
        best_epoch: the 1-based epoch whose weights were kept.
        best_val_auc: its validation ROC AUC.
        seconds: wall time of this process.
        model: the architecture (config.model).
        last_conv_layer: the layer Grad-CAM reads in model.keras.
        global_batch: examples per step over all replicas.
        dtype_policy: Keras dtype policy (mixed_float16 on GPU by default).
        jit_compile: whether the step was XLA-compiled.
        class_balance: how imbalance was handled (class_weights, oversample, none).
        phases: training phases run ("head", then "fine_tune" for a pretrained backbone).
        resumed_from_epoch: the epoch this process resumed after (0: it started fresh).
        weights_sha256: digest of the final weights; equal on every worker of a multi-worker run.
        cv: cross-validation summary (mean and std per metric, the folds), or None.
        parameters: the model's weights, trainable or not.
        phase_epochs: epochs each phase ran, in the order of `phases`.
        ensemble: members of an ensemble of cross-validation folds (ensemble_folds); 0 for one model.
        config: every training option, as given.
    """

    model_dir: str
    strategy: str
    replicas: int
    epochs_run: int
    best_epoch: int
    best_val_auc: float
    seconds: float
    model: str = ""
    last_conv_layer: str = ""
    global_batch: int = 0
    dtype_policy: str = "float32"
    jit_compile: bool = False
    class_balance: str = ""
    phases: tuple[str, ...] = ()
    resumed_from_epoch: int = 0
    weights_sha256: str = ""
    cv: dict | None = None
    parameters: int = 0
    phase_epochs: tuple[int, ...] = ()
    ensemble: int = 0
    config: dict | None = None


def weights_digest(weights: list[np.ndarray]) -> str:
    """SHA-256 over every weight array's bytes, in model order."""
    digest = hashlib.sha256()
    for w in weights:
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()


def plot_history(history: dict[str, list[float]], path: str, best_epoch: int = 0,
                 phase_epochs: tuple[int, ...] = ()) -> None:
    """Loss and AUC per epoch, train against validation, with the kept epoch and the phase changes marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, metric in zip(axes, ("loss", "auc"), strict=True):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + metric in history:
                ax.plot(range(1, len(history[prefix + metric]) + 1), history[prefix + metric], style,
                        label=(prefix or "train_").rstrip("_"))
        if best_epoch:
            ax.axvline(best_epoch, color="black", lw=1, ls=":", label=f"kept: epoch {best_epoch}")
        for boundary in np.cumsum(phase_epochs)[:-1]:
            ax.axvline(boundary + 0.5, color="grey", lw=4, alpha=0.3, label="fine-tuning starts")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def model_metadata(result: TrainResult) -> dict:
    """What the KFP Model artifact shows about a training run."""
    metadata = {"framework": "tensorflow", "model": result.model, "strategy": result.strategy,
                "replicas": result.replicas, "epochs_run": result.epochs_run, "best_val_auc": result.best_val_auc,
                "best_epoch": result.best_epoch, "last_conv_layer": result.last_conv_layer}
    if result.cv:
        metadata["cv_val_auc"] = result.cv["metrics"]["val_auc"]
    return metadata


def train(
    examples_dir: str, out_dir: str, balance: ClassBalance, config: TrainConfig = TrainConfig(),
    fold_results: list[dict] | None = None,
) -> TrainResult:
    """Trains the configured model and exports it.

    Every worker of a multi-worker run calls this with its own `out_dir` (a TFJob gives each
    worker OUT/worker-<index>); all of them end with the same weights.

    Args:
        examples_dir: a finished ingest output with non-empty train and val splits.
        out_dir: receives saved_model/, model.keras, history.json, training_curves.png, logs/,
            cv.json (with cv_folds) and, last, training.json.
        balance: class weights, initial bias and balancing strategy from class_balance.
        config: hyperparameters.
        fold_results: the cv_folds folds' results when separate tasks fitted them (`cv.fit_fold`);
            then they are summarised instead of fitted again here.

    Returns:
        What was trained, on what, and how well it did on validation.

    Raises:
        ValueError: an invalid config (unknown model, "imagenet" without a file, ...).
    """
    strategy = choose_strategy()  # first: a multi-worker strategy must exist before other TF work
    started = time.monotonic()
    metadata = ex.read_metadata(examples_dir)
    accel = acceleration(device_kind(strategy), config.mixed_precision, config.xla)
    replicas = strategy.num_replicas_in_sync
    keras.utils.set_random_seed(config.seed)
    log.info("train: %s with %d replica(s), global batch %d, %s, jit_compile=%s", strategy_name(strategy),
             replicas, config.batch_size * replicas, accel.policy, accel.jit_compile)
    tf.io.gfile.makedirs(out_dir)
    backup_root = config.backup_dir or os.path.join(out_dir, BACKUP_DIR)
    summary, per_fold = None, []
    if fold_results is not None:
        summary, per_fold = cv.summarize(fold_results, config.cv_folds), fold_results
        cv.write_summary(out_dir, summary)
        cv.write_oof(out_dir, per_fold)
    elif config.cv_folds:
        summary, per_fold = cv.cross_validate(examples_dir, out_dir, metadata, balance, config, strategy, accel,
                                              os.path.join(backup_root, "cv"))
    if config.ensemble_folds:
        model = ensemble_model([keras.models.load_model(f["model"], compile=False)
                                for f in sorted(per_fold, key=lambda f: f["fold"])])
        history, best_epoch, best_auc, phases, phase_epochs, resumed = {}, 0, summary["metrics"]["val_auc"]["mean"], (
            "ensemble",), (), 0
        log.info("train: the model is the mean of %d fold models (cross-validation val_auc %.4f ± %.4f)",
                 len(per_fold), best_auc, summary["metrics"]["val_auc"]["std"])
    else:
        fitted = fit_model(examples_dir, metadata, balance, config, strategy, accel,
                           os.path.join(backup_root, "final"), log_dir=os.path.join(out_dir, LOGS_DIR))
        model, history, best_epoch, best_auc = fitted.model, fitted.history, fitted.best_epoch, fitted.best_val_auc
        phases, phase_epochs, resumed = tuple(fitted.phases), tuple(fitted.phase_epochs), fitted.resumed_from_epoch

    export_serving(model, metadata, os.path.join(out_dir, SAVED_MODEL_DIR))
    model.save(os.path.join(out_dir, KERAS_MODEL_FILE))
    fileio.write_text_atomic(os.path.join(out_dir, HISTORY_FILE), json.dumps(history, indent=2))
    if history:
        plot_history(history, os.path.join(out_dir, CURVES_FILE), best_epoch, phase_epochs)
    result = TrainResult(
        model_dir=out_dir,
        strategy=strategy_name(strategy),
        replicas=replicas,
        epochs_run=len(history.get("loss", [])),
        best_epoch=best_epoch,
        best_val_auc=best_auc,
        seconds=round(time.monotonic() - started, 1),
        model=config.model,
        last_conv_layer=last_conv_layer_name(ensemble_members(model)[0]),
        global_batch=config.batch_size * replicas,
        dtype_policy=accel.policy,
        jit_compile=accel.jit_compile,
        class_balance=balance.strategy,
        phases=phases,
        resumed_from_epoch=resumed,
        weights_sha256=weights_digest(model.get_weights()),
        cv=summary,
        parameters=int(model.count_params()),
        phase_epochs=phase_epochs,
        ensemble=len(per_fold) if config.ensemble_folds else 0,
        config=asdict(config),
    )
    # The run is complete: its resume state must not make a later run with the same backup_dir
    # skip its phases, and the default state under OUT must not be published with the model.
    if tf.io.gfile.exists(backup_root):
        tf.io.gfile.rmtree(backup_root)
    fileio.write_text_atomic(os.path.join(out_dir, RESULT_FILE), json.dumps(asdict(result), indent=2))
    log.info("train: %s", result)
    return result
