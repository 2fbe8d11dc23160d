"""Train-stage throughput: the tf.data input pipeline against Keras' ImageDataGenerator, and training steps.

Measured in one run on the same images and the same augmentation, so the ratios are fair on any
machine (other processes sharing the CPU slow both sides alike):

1. input: images/s delivered by `make_dataset` (ingested TFRecords, augmentation on) against
   `ImageDataGenerator.flow_from_directory` on the source JPEGs with the equivalent rotation,
   zoom, shift and contrast (Keras 3 keeps ImageDataGenerator as a legacy class, reached as
   `tf.keras.preprocessing.image.ImageDataGenerator`). Ingest's one-off cost is reported too.
2. training: baseline-CNN images/s for each strategy this machine offers, fed by the real
   pipeline and by one cached batch repeated (an input pipeline that costs nothing); the gap is
   the share of step time spent waiting on input.
3. on a GPU machine also MobileNetV2 at 224 px under mixed precision (skipped without a GPU).

    python benchmarks/train_benchmark.py [--images 600] [--size 224] [--epochs 2]
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402  (TF_CPP_MIN_LOG_LEVEL must be set before TensorFlow loads)
import tensorflow as tf  # noqa: E402

from radflow import examples as ex  # noqa: E402
from radflow.components.class_balance.class_balance import compute_class_balance  # noqa: E402
from radflow.components.class_balance.config import ClassBalanceConfig  # noqa: E402
from radflow.components.ingest.config import IngestConfig  # noqa: E402
from radflow.components.ingest.ingest import ingest  # noqa: E402
from radflow.components.train.config import TrainConfig  # noqa: E402
from radflow.components.train.data import augmentation, make_dataset  # noqa: E402
from radflow.components.train.models import build_model  # noqa: E402
from radflow.components.train.strategy import MIRRORED, ONE_DEVICE, acceleration, device_kind, dtype_policy  # noqa: E402
from radflow.synth import synthesize  # noqa: E402

log = logging.getLogger("train_benchmark")


def _rate(it, n_batches: int) -> float:
    """Images per second over the next `n_batches` batches of iterator `it`."""
    seen, start = 0, time.perf_counter()
    for _ in range(n_batches):
        seen += len(next(it)[0])
    return seen / (time.perf_counter() - start)


def idg_iterator(folder: str, config: TrainConfig, size: int, batch: int):
    """ImageDataGenerator with the augmentation `data.augmentation(config)` applies."""
    gen_cls = tf.keras.preprocessing.image.ImageDataGenerator
    rng = np.random.default_rng(config.seed)

    def contrast(image: np.ndarray) -> np.ndarray:  # RandomContrast's arithmetic; IDG has no contrast option
        mean = image.mean()
        return np.clip((image - mean) * rng.uniform(1 - config.contrast, 1 + config.contrast) + mean, 0, 255)

    gen = gen_cls(rotation_range=config.rotation * 360, zoom_range=config.zoom, width_shift_range=config.translation,
                  height_shift_range=config.translation, fill_mode="constant", cval=0.0, rescale=1 / 255,
                  preprocessing_function=contrast)
    return gen.flow_from_directory(folder, target_size=(size, size), color_mode="grayscale", class_mode="binary",
                                   batch_size=batch, shuffle=True, seed=config.seed)


def ingested_train_folder(examples: str, out: str) -> str:
    """Links the source files ingest put in the train split into <out>/<label>/: exactly the images tf.data reads."""
    with open(os.path.join(examples, ex.MANIFEST_FILE)) as f:
        for row in csv.DictReader(f):
            if row["state"] == "ingested" and row["split"] == "train":
                os.makedirs(os.path.join(out, row["label"]), exist_ok=True)
                os.symlink(row["path"], os.path.join(out, row["label"], os.path.basename(row["path"])))
    return out


def train_rate(strategy: tf.distribute.Strategy, examples: str, metadata: ex.DatasetMetadata, config: TrainConfig,
               steps: int, synthetic: bool) -> float:
    """Training images/s of config.model under `strategy`, on the real pipeline or one repeated batch."""
    accel = acceleration(device_kind(strategy), config.mixed_precision, config.xla)
    batch = config.batch_size * strategy.num_replicas_in_sync
    ds = make_dataset(examples, "train", metadata, batch, training=True, augment=augmentation(config))
    ds = ds.map(lambda x, y, *_: (x, y)).repeat()
    if synthetic:
        ds = ds.take(1).cache().repeat()
    balance = compute_class_balance(metadata, ClassBalanceConfig())
    with dtype_policy(accel.policy), strategy.scope():
        model = build_model(metadata, config, balance.initial_bias)
        model.compile(optimizer="adam", loss="binary_crossentropy", jit_compile=accel.jit_compile)
    # Trace, and run one epoch so the timed steps see a filled cache, as every later epoch does.
    model.fit(ds, steps_per_epoch=-(-metadata.split_size("train") // batch) + 1, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps * batch / (time.perf_counter() - start)


def strategies() -> dict[str, tf.distribute.Strategy]:
    gpus = tf.config.list_logical_devices("GPU")
    found = {ONE_DEVICE + (" (GPU)" if gpus else " (CPU)"): tf.distribute.OneDeviceStrategy(
        "/gpu:0" if gpus else "/cpu:0")}
    if len(gpus) > 1:
        found[MIRRORED + f" ({len(gpus)} GPUs)"] = tf.distribute.MirroredStrategy()
    return found


def compare_inputs(tmp: str, images: int, sides: tuple[int, int], size: int, batch: int, n_batches: int,
                   config: TrainConfig) -> str:
    """Synthesises and ingests a set, prints tf.data against ImageDataGenerator on it, returns the examples."""
    source, examples = os.path.join(tmp, f"src-{sides[1]}"), os.path.join(tmp, f"examples-{sides[1]}")
    synthesize(source, n=images, seed=0, min_side=sides[0], max_side=sides[1])
    start = time.perf_counter()
    ingest(source, examples, IngestConfig(image_size=size))
    ingest_s = time.perf_counter() - start
    metadata = ex.read_metadata(examples)
    n_train = metadata.split_size("train")
    print(f"\n== input: {n_train} train images of {sides[0]}-{sides[1]} px source JPEGs, to {size} px, batch {batch}, "
          "augmentation on ==")
    print(f"ingest (one-off, Beam):                 {images / ingest_s:8.0f} images/s ({ingest_s:.1f} s)")
    ds = make_dataset(examples, "train", metadata, batch, training=True, augment=augmentation(config))
    batches = iter(ds.repeat())
    first = _rate(batches, -(-n_train // batch))  # reads the shards and fills the cache
    tfdata = _rate(batches, n_batches)
    flow = idg_iterator(ingested_train_folder(examples, os.path.join(tmp, f"idg-{sides[1]}")), config, size, batch)
    next(flow)
    idg = _rate(flow, n_batches)
    print(f"tf.data make_dataset, first epoch:      {first:8.0f} images/s")
    print(f"tf.data make_dataset, later epochs:     {tfdata:8.0f} images/s")
    print(f"ImageDataGenerator.flow_from_directory: {idg:8.0f} images/s (decodes and resizes every epoch)")
    print(f"ratio: {tfdata / idg:.1f}x later epochs, {first / idg:.1f}x first epoch  (target >= 5x)")
    return examples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=600, help="synthetic images (Kaggle layout) per set")
    parser.add_argument("--size", type=int, default=224, help="model input size")
    parser.add_argument("--batch", type=int, default=32, help="batch size per replica")
    parser.add_argument("--input-batches", type=int, default=30, help="batches timed per input pipeline")
    parser.add_argument("--train-steps", type=int, default=60, help="steps timed per training measurement")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    print(f"machine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at start, "
          f"GPUs: {len(tf.config.list_physical_devices('GPU'))}")
    config = TrainConfig(batch_size=args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        # The synthetic sample's small files, then Kaggle-sized radiographs (about 1000-2000 px a side).
        examples = compare_inputs(tmp, args.images, (192, 384), args.size, args.batch, args.input_batches, config)
        compare_inputs(tmp, args.images // 2, (1000, 2000), args.size, args.batch, args.input_batches, config)
        metadata = ex.read_metadata(examples)
        print(f"\n== training: baseline CNN, {args.size} px, batch {args.batch} per replica ==")
        for name, strategy in strategies().items():
            real = train_rate(strategy, examples, metadata, config, args.train_steps, synthetic=False)
            fed = train_rate(strategy, examples, metadata, config, args.train_steps, synthetic=True)
            print(f"{name}: {real:.0f} images/s with the real pipeline, {fed:.0f} images/s on one cached batch; "
                  f"input wait ~{max(0.0, 1 - real / fed):.0%} of step time")
        if tf.config.list_physical_devices("GPU"):
            mobilenet = TrainConfig(model="mobilenet_v2", batch_size=args.batch * 4)
            strategy = next(iter(strategies().values()))
            real = train_rate(strategy, examples, metadata, mobilenet, args.train_steps, synthetic=False)
            fed = train_rate(strategy, examples, metadata, mobilenet, args.train_steps, synthetic=True)
            print(f"MobileNetV2 {args.size} px mixed precision: {real:.0f} images/s, "
                  f"input wait ~{max(0.0, 1 - real / fed):.0%}")
        else:
            print("no GPU here: MobileNetV2 mixed-precision figures need a GPU machine")
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
