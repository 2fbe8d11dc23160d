"""train: the baseline CNN on the ingested examples, under a tf.distribute strategy, exported for TF Serving.

One code path for one CPU, one GPU and several GPUs: `choose_strategy` reads the machine, and
the global batch scales with the number of replicas. The export's `serving_default` signature
takes encoded image bytes and runs the same `radflow.preprocessing` functions as training.

    radflow train runs/examples runs/model --class-balance runs/class_balance
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass

import keras
import tensorflow as tf

from radflow import examples as ex
from radflow import fileio
from radflow.components.class_balance.class_balance import ClassBalance
from radflow.components.train.config import TrainConfig
from radflow.preprocessing import preprocess_encoded, preprocess_pixels

log = logging.getLogger(__name__)

SAVED_MODEL_DIR = "saved_model"  # the servable: what push publishes as <serving_root>/<name>/<version>/
KERAS_MODEL_FILE = "model.keras"  # kept beside the export for explanation (Grad-CAM)
HISTORY_FILE = "history.json"
CURVES_FILE = "training_curves.png"
RESULT_FILE = "training.json"  # written last: the model directory is complete when it exists
LABELS_ASSET = "labels.txt"  # in saved_model/assets/, one class name per line, in score order
SERVING_INPUT = "image_bytes"
THRESHOLD_ASSET = "threshold.txt"  # in saved_model/assets/: the operating threshold, rewritten by push
SCORES, CLASSES, THRESHOLD = "scores", "classes", "threshold"
CACHE_LIMIT_BYTES = 2 * 2**30  # cache a split in memory when its records are smaller than this


@dataclass(frozen=True)
class TrainResult:
    model_dir: str
    strategy: str
    replicas: int
    epochs_run: int
    best_epoch: int
    best_val_auc: float
    seconds: float


def choose_strategy() -> tf.distribute.Strategy:
    """Several GPUs: MirroredStrategy; otherwise one device, GPU if there is one."""
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")


def make_dataset(
    examples_dir: str,
    split: str,
    metadata: ex.DatasetMetadata,
    batch_size: int,
    training: bool,
    seed: int = 0,
) -> tf.data.Dataset:
    """(image, label) batches for Keras: float32 (N, size, size, C) and float32 labels.

    Labels are (N, 1) for a binary head and one-hot (N, K) for a softmax head.
    """
    files = ex.split_files(examples_dir, split)
    if not files:
        raise FileNotFoundError(f"no shards for split {split!r} in {examples_dir}")
    ds = tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE)
    if metadata.split_size(split) * (metadata.image_size**2 * metadata.channels) < CACHE_LIMIT_BYTES:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(min(10_000, max(1, metadata.split_size(split))), seed=seed, reshuffle_each_iteration=True)
    size, k = metadata.image_size, metadata.num_classes

    def to_inputs(serialized):
        parsed = ex.parse_examples(serialized, metadata)
        images = preprocess_pixels(parsed[ex.IMAGE], size)
        labels = parsed[ex.LABEL]
        y = tf.cast(labels[:, None], tf.float32) if k == 2 else tf.one_hot(labels, k)
        return images, y

    return ds.batch(batch_size).map(to_inputs, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def build_baseline_cnn(metadata: ex.DatasetMetadata, config: TrainConfig, bias: list[float]) -> keras.Model:
    """Conv/pool blocks, global pooling, dense; a sigmoid unit for two classes, softmax beyond.

    The first convolution has stride 2: radiographs are smooth at the pixel scale, and it
    quarters the cost of the widest layer.
    """
    binary = metadata.num_classes == 2
    inputs = keras.Input((metadata.image_size, metadata.image_size, metadata.channels), name="image")
    x = inputs
    for i, f in enumerate(config.filters):
        x = keras.layers.Conv2D(f, 3, strides=2 if i == 0 else 1, padding="same", use_bias=False)(x)
        # momentum 0.9, not Keras' 0.99: small medical sets give few steps per epoch, and the
        # moving statistics used at validation time must settle within a few epochs.
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(config.dropout)(x)
    x = keras.layers.Dense(config.dense_units, activation="relu")(x)
    outputs = keras.layers.Dense(
        1 if binary else metadata.num_classes,
        activation="sigmoid" if binary else "softmax",
        bias_initializer=keras.initializers.Constant(bias),
        dtype="float32",  # keep the output in float32 even under mixed precision
        name="scores",
    )(x)
    return keras.Model(inputs, outputs, name="baseline_cnn")


class _ServingModule(tf.Module):
    """The exported graph: the Keras model behind the shared preprocessing.

    The decision threshold is read from an asset file at request time rather than baked into
    the graph, because it is chosen after training (on the validation split) and written into
    the version directory when the model is pushed; the server then answers with the same
    threshold every client applies.
    """

    def __init__(self, model: keras.Model, metadata: ex.DatasetMetadata, threshold_file: str):
        super().__init__()
        self.model = model
        self.threshold_asset = tf.saved_model.Asset(threshold_file)
        self._size, self._channels = metadata.image_size, metadata.channels
        self._names = list(metadata.label_names)

    def _outputs(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        probs = self.model(images, training=False)
        scores = tf.concat([1.0 - probs, probs], axis=1) if len(self._names) == 2 else probs
        n = tf.shape(scores)[0]
        threshold = tf.strings.to_number(tf.strings.strip(tf.io.read_file(self.threshold_asset)), tf.float32)
        return {
            SCORES: scores,
            CLASSES: tf.tile(tf.constant(self._names)[None, :], [n, 1]),
            THRESHOLD: tf.fill([n], threshold),
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=SERVING_INPUT)])
    def serve_encoded(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.map_fn(
            lambda b: preprocess_encoded(b, self._size, self._channels),
            image_bytes,
            fn_output_signature=tf.TensorSpec([self._size, self._size, self._channels], tf.float32),
        )
        return self._outputs(images)


def export_serving(model: keras.Model, metadata: ex.DatasetMetadata, path: str, threshold: float = 0.5) -> None:
    """Writes a SavedModel whose `serving_default` takes a batch of encoded images.

    Inputs: `image_bytes`, tf.string (N,), JPEG/PNG/BMP/GIF. Outputs: `scores`, float32 (N, K),
    one probability per class; `classes`, tf.string (N, K), the class names in score order;
    `threshold`, float32 (N,), the operating threshold on the positive-class score (binary models).
    """
    with tempfile.TemporaryDirectory() as tmp:
        staged = os.path.join(tmp, THRESHOLD_ASSET)
        with open(staged, "w") as f:
            f.write(f"{threshold}\n")
        module = _ServingModule(model, metadata, staged)
        tf.saved_model.save(module, path, signatures={"serving_default": module.serve_encoded})
    fileio.write_text_atomic(os.path.join(path, "assets", LABELS_ASSET), "\n".join(metadata.label_names) + "\n")


def plot_history(history: dict[str, list[float]], path: str) -> None:
    """Loss and AUC per epoch, train against validation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, metric in zip(axes, ("loss", "auc"), strict=True):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + metric in history:
                ax.plot(range(1, len(history[prefix + metric]) + 1), history[prefix + metric], style,
                        label=(prefix or "train_").rstrip("_"))
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train(
    examples_dir: str, out_dir: str, balance: ClassBalance, config: TrainConfig = TrainConfig()
) -> TrainResult:
    """Trains the baseline CNN and exports it.

    Args:
        examples_dir: a finished ingest output with non-empty train and val splits.
        out_dir: receives saved_model/, model.keras, history.json, training_curves.png and,
            last, training.json.
        balance: class weights and initial bias from class_balance.
        config: hyperparameters.

    Returns:
        What was trained, on what, and how well it did on validation.
    """
    started = time.monotonic()
    metadata = ex.read_metadata(examples_dir)
    keras.utils.set_random_seed(config.seed)
    strategy = choose_strategy()
    replicas = strategy.num_replicas_in_sync
    global_batch = config.batch_size * replicas
    log.info("train: %s with %d replica(s), global batch %d", type(strategy).__name__, replicas, global_batch)

    train_ds = make_dataset(examples_dir, "train", metadata, global_batch, training=True, seed=config.seed)
    val_ds = make_dataset(examples_dir, "val", metadata, global_batch, training=False)
    with strategy.scope():
        model = build_baseline_cnn(metadata, config, balance.initial_bias)
        model.compile(
            optimizer=keras.optimizers.Adam(config.learning_rate),
            loss="binary_crossentropy" if metadata.num_classes == 2 else "categorical_crossentropy",
            metrics=[keras.metrics.AUC(name="auc"), "accuracy"],
        )
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_auc",
        mode="max",
        patience=config.patience,
        start_from_epoch=config.warmup_epochs,
        restore_best_weights=True,
    )
    fit = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=config.epochs,
        class_weight=balance.class_weights,
        callbacks=[stopper],
        shuffle=False,  # the dataset shuffles itself; Keras cannot shuffle a tf.data pipeline
        verbose=2,
    )
    history = {k: [float(v) for v in vs] for k, vs in fit.history.items()}
    best_epoch = int(max(range(len(history["val_auc"])), key=history["val_auc"].__getitem__)) + 1

    os.makedirs(out_dir, exist_ok=True)
    export_serving(model, metadata, os.path.join(out_dir, SAVED_MODEL_DIR))
    model.save(os.path.join(out_dir, KERAS_MODEL_FILE))
    fileio.write_text_atomic(os.path.join(out_dir, HISTORY_FILE), json.dumps(history, indent=2))
    plot_history(history, os.path.join(out_dir, CURVES_FILE))
    result = TrainResult(
        model_dir=out_dir,
        strategy=type(strategy).__name__,
        replicas=replicas,
        epochs_run=len(history["loss"]),
        best_epoch=best_epoch,
        best_val_auc=history["val_auc"][best_epoch - 1],
        seconds=round(time.monotonic() - started, 1),
    )
    fileio.write_text_atomic(os.path.join(out_dir, RESULT_FILE), json.dumps(asdict(result), indent=2))
    log.info("train: %s", result)
    return result


def read_labels(saved_model_dir: str) -> list[str]:
    """The class names of an exported model, in score order."""
    return fileio.read_text(os.path.join(saved_model_dir, "assets", LABELS_ASSET)).splitlines()
