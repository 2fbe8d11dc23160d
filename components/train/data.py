"""The training input pipeline: TFRecord shards to (image, label[, weight]) batches with tf.data.

    shards -> parallel interleave -> parse + standardize (parallel map) -> cache (if it fits)
           -> [one stream per class, sampled equally, when oversampling] -> shuffle -> batch
           -> augmentation (geometry on uint8, then to_model_input, then contrast), class weights
              (parallel map) -> prefetch

Images go through `radflow.preprocessing.standardize` and `to_model_input`, the functions the
exported serving signature composes, so the network sees the same tensor for the same image in
training and in serving. Augmentation is applied to training batches only, on the CPU side of
the pipeline, and never becomes part of the exported model.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from radflow import examples as ex
from radflow.components.train.config import TrainConfig
from radflow.preprocessing import standardize, to_model_input

CACHE_LIMIT_BYTES = 2 * 2**30  # cache a selection's standardized pixels in memory when smaller than this
SHUFFLE_BUFFER = 10_000  # examples; the whole split for the data sets radflow is meant for
CLASS_WEIGHTS, OVERSAMPLE, NO_BALANCE = "class_weights", "oversample", "none"


class RandomAffine(keras.layers.Layer):
    """Random rotation, zoom and shift of a batch of images in one bilinear resampling.

    Keras' RandomRotation, RandomZoom and RandomTranslation each resample the image: three
    interpolations blur fine detail (interstitial markings, line tips) three times and cost three
    passes. Composing them into one affine matrix per image resamples once. It runs on uint8
    pixels, which `ImageProjectiveTransformV3` resamples about four times faster than float32.

    Args:
        rotation: largest rotation, as a fraction of a full turn.
        zoom: largest zoom in or out, as a fraction of the image size.
        translation: largest shift, as a fraction of the image size.
        seed: random seed.
    """

    def __init__(self, rotation: float, zoom: float, translation: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rotation, self.zoom, self.translation, self.seed = rotation, zoom, translation, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training:
            return images
        ops = keras.ops
        shape = ops.shape(images)
        n, h, w = shape[0], ops.cast(shape[1], "float32"), ops.cast(shape[2], "float32")

        def uniform(limit):
            return keras.random.uniform((n,), -limit, limit, seed=self.seed_generator)

        angle, scale = uniform(self.rotation) * 2 * math.pi, 1.0 + uniform(self.zoom)
        tx, ty = uniform(self.translation) * w, uniform(self.translation) * h
        # Output pixel p shows input pixel q = C + R(-angle) (p - C - t) / scale.
        c, s = ops.cos(angle) / scale, ops.sin(angle) / scale
        cx, cy = (w - 1) / 2, (h - 1) / 2
        matrix = ops.stack([c, s, cx - c * (cx + tx) - s * (cy + ty),
                            -s, c, cy + s * (cx + tx) - c * (cy + ty),
                            ops.zeros_like(c), ops.zeros_like(c)], axis=1)
        return ops.image.affine_transform(images, matrix, interpolation="bilinear", fill_mode="constant")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rotation": self.rotation, "zoom": self.zoom,
                "translation": self.translation, "seed": self.seed}


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation in two halves: geometry on uint8 pixels, then intensity on [0, 1] floats.

    Args:
        geometric: RandomAffine (and RandomFlip when asked), on uint8 batches.
        intensity: Keras' RandomContrast, after `to_model_input`.
    """

    geometric: keras.Sequential
    intensity: keras.Sequential

    def __call__(self, pixels: tf.Tensor) -> tf.Tensor:
        """uint8 (N, H, W, C) pixels to augmented float32 network input in [0, 1]."""
        return self.intensity(to_model_input(self.geometric(pixels, training=True)), training=True)


def augmentation(config: TrainConfig) -> Augmentation | None:
    """Small geometric and contrast changes a radiograph survives; None when augmentation is off.

    No vertical flip ever (anatomy has an up), horizontal flip only when asked (laterality is
    anatomy too: the heart sits on the left). Borders are filled with black, like the padding
    that `standardize` adds.
    """
    if not config.augment:
        return None
    seed = config.seed
    geometric: list[keras.layers.Layer] = [
        RandomAffine(config.rotation, config.zoom, config.translation, seed=seed, dtype="uint8")]
    if config.horizontal_flip:
        geometric.append(keras.layers.RandomFlip("horizontal", seed=seed + 1, dtype="uint8"))
    intensity = keras.layers.RandomContrast(config.contrast, value_range=(0.0, 1.0), seed=seed + 2)
    return Augmentation(keras.Sequential(geometric, name="geometric"), keras.Sequential([intensity], name="intensity"))


def group_key(parsed: dict[str, tf.Tensor]) -> tf.Tensor:
    """The unit no two folds may share: the patient, or the image itself when the patient is unknown."""
    own = tf.strings.join(["image:", tf.strings.as_string(
        tf.strings.to_hash_bucket_fast(tf.io.serialize_tensor(parsed[ex.IMAGE]), 2**62))])
    return tf.where(tf.equal(parsed[ex.PATIENT_KEY], ""), own, parsed[ex.PATIENT_KEY])


def _parse_one(serialized: tf.Tensor, metadata: ex.DatasetMetadata) -> dict[str, tf.Tensor]:
    parsed = ex.parse_examples(serialized[None], metadata)
    return {key: value[0] for key, value in parsed.items()}


def _records(examples_dir: str, splits: tuple[str, ...], training: bool, seed: int) -> tf.data.Dataset:
    files = [f for split in splits for f in ex.split_files(examples_dir, split)]
    if not files:
        raise FileNotFoundError(f"no shards for split {'+'.join(splits)!r} in {examples_dir}")
    names = tf.data.Dataset.from_tensor_slices(files)
    if training:
        names = names.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    return names.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 8),
                            num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)


def read_index(examples_dir: str, splits: tuple[str, ...],
               metadata: ex.DatasetMetadata) -> tuple[list[str], np.ndarray]:
    """The group key and label of every example of `splits`, for assigning folds."""
    ds = _records(examples_dir, splits, training=False, seed=0).map(
        lambda s: (lambda p: (group_key(p), p[ex.LABEL]))(_parse_one(s, metadata)), num_parallel_calls=tf.data.AUTOTUNE)
    keys, labels = [], []
    for key, label in ds.batch(1024).as_numpy_iterator():
        keys.extend(k.decode() for k in key)
        labels.extend(label.tolist())
    return keys, np.asarray(labels, np.int64)


def _only_groups(ds: tf.data.Dataset, groups: Collection[str] | None) -> tf.data.Dataset:
    """The elements whose "group" is in `groups` (all of them for None): one cross-validation fold's part."""
    if groups is None:
        return ds
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(sorted(groups), tf.string), tf.ones([len(groups)], tf.int64)),
        default_value=0)
    return ds.filter(lambda e: tf.equal(table.lookup(e["group"]), 1))


def scoring_batches(examples_dir: str, splits: tuple[str, ...], metadata: ex.DatasetMetadata, batch_size: int,
                    groups: Collection[str] | None = None) -> tf.data.Dataset:
    """(model input, label, patient key) batches of `splits` in file order, for scoring examples a model
    never trained on (a cross-validation fold's held-out part), optionally only those of `groups`."""
    size = metadata.image_size

    def parsed(serialized):
        p = _parse_one(serialized, metadata)
        return {"x": to_model_input(standardize(p[ex.IMAGE], size)), "y": p[ex.LABEL], "key": p[ex.PATIENT_KEY],
                "group": group_key(p)}

    ds = _records(examples_dir, splits, training=False, seed=0).map(parsed, num_parallel_calls=tf.data.AUTOTUNE)
    ds = _only_groups(ds, groups)
    return ds.map(lambda e: (e["x"], e["y"], e["key"])).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def make_dataset(
    examples_dir: str,
    split: str | tuple[str, ...],
    metadata: ex.DatasetMetadata,
    batch_size: int,
    training: bool,
    seed: int = 0,
    *,
    augment: Augmentation | None = None,
    balance: str = NO_BALANCE,
    class_weights: dict[int, float] | None = None,
    groups: Collection[str] | None = None,
) -> tf.data.Dataset:
    """(image, label) or (image, label, weight) batches for Keras.

    Args:
        examples_dir: an ingest output.
        split: a split name, or several whose examples are read together (cross-validation).
        metadata: the examples' metadata.
        batch_size: the global batch size.
        training: shuffle (and reshuffle every epoch) and allow augmentation and balancing.
        seed: shuffling and sampling seed.
        augment: applied to training batches (see `augmentation`).
        balance: "class_weights" adds a per-example loss weight from `class_weights`;
            "oversample" draws every class equally often and repeats forever (give Keras
            steps_per_epoch); "none" leaves the data as it is.
        class_weights: class index -> weight, for "class_weights".
        groups: keep only examples whose `group_key` is in this collection (a fold).

    Returns:
        images float32 (N, size, size, C) in [0, 1] (before augmentation); labels float32,
        (N, 1) for a binary head and one-hot (N, K) beyond; weights float32 (N,).

    Raises:
        FileNotFoundError: no shards for the split.
        ValueError: an unknown balance, or class_weights missing for "class_weights".
    """
    splits = (split,) if isinstance(split, str) else tuple(split)
    if balance not in (CLASS_WEIGHTS, OVERSAMPLE, NO_BALANCE):
        raise ValueError(f"unknown balance {balance!r}; choose {CLASS_WEIGHTS}, {OVERSAMPLE} or {NO_BALANCE}")
    if balance == CLASS_WEIGHTS and class_weights is None:
        raise ValueError("balance='class_weights' needs class_weights")
    size, k = metadata.image_size, metadata.num_classes
    ds = _records(examples_dir, splits, training, seed)

    def standardized(serialized):
        parsed = _parse_one(serialized, metadata)
        return {ex.IMAGE: standardize(parsed[ex.IMAGE], size), ex.LABEL: parsed[ex.LABEL],
                "group": group_key(parsed)}

    ds = ds.map(standardized, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
    ds = _only_groups(ds, groups)
    ds = ds.map(lambda e: (e[ex.IMAGE], e[ex.LABEL]))
    n = sum(metadata.split_size(s) for s in splits)
    if n * size * size * metadata.channels < CACHE_LIMIT_BYTES:
        ds = ds.cache()
    if training and balance == OVERSAMPLE:
        per_class = [ds.filter(lambda _, y, c=c: tf.equal(y, c)).repeat().shuffle(SHUFFLE_BUFFER // k, seed=seed + c)
                     for c in range(k)]
        ds = tf.data.Dataset.sample_from_datasets(per_class, weights=[1.0 / k] * k, seed=seed)
    elif training:
        ds = ds.shuffle(min(SHUFFLE_BUFFER, max(1, n)), seed=seed, reshuffle_each_iteration=True)
    weights = tf.constant([(class_weights or {}).get(c, 1.0) for c in range(k)], tf.float32)

    def to_inputs(images, labels):
        x = augment(images) if augment is not None else to_model_input(images)
        y = tf.cast(labels[:, None], tf.float32) if k == 2 else tf.one_hot(labels, k)
        if training and balance == CLASS_WEIGHTS:
            return x, y, tf.gather(weights, labels)
        return x, y

    options = tf.data.Options()
    # Across workers, shard by example: FILE sharding fails outright when a split has fewer
    # shards than there are workers, which small medical sets often do.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    # No tf.data autotuning: with it, Keras's per-epoch validation iterator stalled each epoch to
    # the next multiple of 2.56 s (10 ms doubled 8 times, autotune's optimisation period; on the
    # sample 2.1 s of work took 5.1 s). Without it the AUTOTUNE maps run one call per core.
    options.autotune.enabled = False
    batches = ds.batch(batch_size).map(to_inputs, num_parallel_calls=tf.data.AUTOTUNE)
    return batches.prefetch(tf.data.AUTOTUNE).with_options(options)


def steps_per_epoch(n_examples: int, global_batch: int) -> int:
    """Batches in one pass over `n_examples`: what an endless (oversampled) stream calls an epoch."""
    return max(1, math.ceil(n_examples / global_batch))
