"""The input pipeline, balancing, folds, schedules and the strategy decision, on tiny inputs."""

import json
import math

import keras
import numpy as np
import pytest

from radflow import examples as ex
from radflow.components.train.config import TrainConfig
from radflow.components.train.cv import assign_folds
from radflow.components.train.data import RandomAffine, augmentation, make_dataset, read_index
from radflow.components.train.fit import learning_rate
from radflow.components.train.strategy import (
    MIRRORED,
    MULTI_WORKER,
    ONE_DEVICE,
    TPU,
    acceleration,
    cluster_size,
    strategy_kind,
)


def test_oversampling_yields_balanced_batches(examples_dir):
    metadata = ex.read_metadata(examples_dir)
    counts = metadata.counts["train"]
    assert counts["PNEUMONIA"] > 2 * counts["NORMAL"]  # the raw split is imbalanced
    ds = make_dataset(examples_dir, "train", metadata, 64, training=True, balance="oversample")
    labels = np.concatenate([y.numpy()[:, 0] for _, y in ds.take(10)])
    assert len(labels) == 640 and abs(labels.mean() - 0.5) < 0.06


def test_class_weights_ride_along_as_sample_weights(examples_dir):
    metadata = ex.read_metadata(examples_dir)
    x, y, w = next(iter(make_dataset(examples_dir, "train", metadata, 16, training=True, balance="class_weights",
                                     class_weights={0: 2.5, 1: 0.6})))
    np.testing.assert_allclose(w.numpy(), np.where(y.numpy()[:, 0] == 1, 0.6, 2.5))
    assert len(next(iter(make_dataset(examples_dir, "val", metadata, 16, training=False)))) == 2
    with pytest.raises(ValueError, match="unknown balance"):
        make_dataset(examples_dir, "train", metadata, 16, training=True, balance="smote")


def test_augmentation_changes_training_images_only_within_range(examples_dir):
    metadata = ex.read_metadata(examples_dir)
    config = TrainConfig(rotation=0.05, zoom=0.1, translation=0.1, contrast=0.2)
    aug = augmentation(config)
    assert [type(layer) for layer in aug.geometric.layers] == [RandomAffine]  # no flip by default, never vertical
    flip = augmentation(TrainConfig(horizontal_flip=True)).geometric.layers[-1]
    assert isinstance(flip, keras.layers.RandomFlip) and flip.mode == "horizontal"
    assert augmentation(TrainConfig(augment=False)) is None
    plain = next(iter(make_dataset(examples_dir, "val", metadata, 8, training=False)))[0].numpy()
    augmented = next(iter(make_dataset(examples_dir, "val", metadata, 8, training=False, augment=aug)))[0].numpy()
    assert augmented.shape == plain.shape and 0 <= augmented.min() and augmented.max() <= 1
    assert not np.allclose(augmented, plain)


def test_random_affine_resamples_once_and_is_exact_at_zero():
    pixels = np.random.default_rng(0).integers(0, 255, (4, 24, 24, 1), np.uint8)
    np.testing.assert_array_equal(RandomAffine(0.0, 0.0, 0.0, dtype="uint8")(pixels), pixels)
    # Rotation and zoom turn about the image centre: a centre pixel stays put, exactly, in every image.
    dot = np.zeros((8, 25, 25, 1), np.uint8)
    dot[:, 12, 12] = 255
    turned = np.asarray(RandomAffine(0.05, 0.1, 0.0, seed=3, dtype="uint8")(dot))
    assert turned.dtype == np.uint8 and (turned[:, 12, 12, 0] == 255).all()
    assert not np.array_equal(turned, dot)  # the rest did move: the dot's neighbours pick up interpolated mass
    moved = np.asarray(RandomAffine(0.0, 0.0, 0.2, seed=3, dtype="uint8")(dot))
    assert (moved[:, 12, 12, 0] < 255).any()  # a shift moves even the centre


def test_groups_select_whole_patients(examples_dir):
    metadata = ex.read_metadata(examples_dir)
    keys, labels = read_index(examples_dir, ("train", "val"), metadata)
    assert len(keys) == metadata.split_size("train") + metadata.split_size("val")
    chosen = set(sorted(set(keys))[:5])
    ds = make_dataset(examples_dir, ("train", "val"), metadata, 256, training=False, groups=chosen)
    assert sum(int(x.shape[0]) for x, _ in ds) == sum(k in chosen for k in keys)


def test_folds_keep_patients_together_and_classes_balanced():
    # Patients a..f (label 1, sizes 3,1,1,1,1,1) and g..j (label 0, one image each).
    groups = list("aaabcdef") + list("ghij")
    labels = np.array([1] * 8 + [0] * 4)
    folds = assign_folds(groups, labels, k=2, seed=0)
    assert set(folds) == set("abcdefghij") and set(folds.values()) == {0, 1}
    positives = [sum(1 for g, y in zip(groups, labels, strict=True) if y and folds[g] == f) for f in (0, 1)]
    negatives = [sum(1 for g in "ghij" if folds[g] == f) for f in (0, 1)]
    assert sorted(positives) == [4, 4] and negatives == [2, 2]  # 'a' (3 images) + 1 against four singles
    assert assign_folds(groups, labels, 2, seed=0) == folds
    with pytest.raises(ValueError, match="have only"):
        assign_folds(groups, labels, k=5)


def test_learning_rate_schedules():
    assert learning_rate(7, 0.01, "constant", 10, 30) == 0.01
    assert math.isclose(learning_rate(10, 0.01, "exponential", 10, 30), 0.001)
    assert math.isclose(learning_rate(5, 0.01, "exponential", 10, 30), 0.01 * 10 ** -0.5)
    assert math.isclose(learning_rate(0, 0.01, "cosine", 10, 30), 0.01)
    assert math.isclose(learning_rate(15, 0.01, "cosine", 10, 30), 0.005)
    with pytest.raises(ValueError, match="unknown lr_schedule"):
        learning_rate(0, 0.01, "step", 10, 30)


def test_strategy_follows_the_machine():
    two_workers = json.dumps({"cluster": {"worker": ["h0:1", "h1:1"]}, "task": {"type": "worker", "index": 0}})
    assert cluster_size(two_workers) == 2 and cluster_size(None) == 0
    assert strategy_kind(None, 0, False) == ONE_DEVICE
    assert strategy_kind(None, 1, False) == ONE_DEVICE
    assert strategy_kind(None, 4, False) == MIRRORED
    assert strategy_kind(two_workers, 1, False) == MULTI_WORKER
    assert strategy_kind(json.dumps({"cluster": {"worker": ["h0:1"]}}), 2, False) == MIRRORED
    assert strategy_kind(two_workers, 0, True) == TPU


def test_mixed_precision_and_xla_only_on_accelerators():
    assert acceleration("cpu", True, True) == acceleration("cpu", False, False)
    cpu = acceleration("cpu", True, True)
    assert cpu.policy == "float32" and not cpu.jit_compile
    gpu = acceleration("gpu", True, True)
    assert gpu.policy == "mixed_float16" and gpu.jit_compile
    assert acceleration("gpu", False, False).policy == "float32"
    assert acceleration("tpu", True, True).policy == "mixed_bfloat16"
