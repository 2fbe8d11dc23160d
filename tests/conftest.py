"""Shared fixtures: one small synthetic dataset, ingested and trained once per test session."""

from __future__ import annotations

import os

import pytest

# Keep TensorFlow's C++ start-up chatter out of test logs; set before any test imports TF.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TINY_SIZE = 32


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> str:
    from radflow.synth import synthesize

    out = str(tmp_path_factory.mktemp("synth") / "chest_xray")
    synthesize(out, n=120, seed=1, min_side=64, max_side=96)
    return out


@pytest.fixture(scope="session")
def examples_dir(synth_dir, tmp_path_factory) -> str:
    from radflow.components.ingest.config import IngestConfig
    from radflow.components.ingest.ingest import ingest

    out = str(tmp_path_factory.mktemp("ingest") / "examples")
    ingest(synth_dir, out, IngestConfig(image_size=TINY_SIZE))
    return out


@pytest.fixture(scope="session")
def model_dir(examples_dir, tmp_path_factory) -> str:
    from radflow import examples as ex
    from radflow.components.class_balance.class_balance import compute_class_balance
    from radflow.components.class_balance.config import ClassBalanceConfig
    from radflow.components.train.config import TrainConfig
    from radflow.components.train.train import train

    out = str(tmp_path_factory.mktemp("train") / "model")
    balance = compute_class_balance(ex.read_metadata(examples_dir), ClassBalanceConfig())
    train(examples_dir, out, balance, TrainConfig(epochs=2, warmup_epochs=0, filters=(8, 16), dense_units=8))
    return out


def _write_separable_examples(out: str, patients_per_split: dict[str, int], seed: int = 0) -> None:
    """A tiny examples directory a CNN learns in a few epochs: PNEUMONIA images carry a bright blob.

    Written straight in the example format (no Beam), three images per patient, half the
    patients of each split positive, so that evaluation and push tests get a genuinely good model.
    """
    import numpy as np
    import tensorflow as tf

    from radflow import examples as ex

    rng = np.random.default_rng(seed)
    names = ("NORMAL", "PNEUMONIA")
    counts = {}
    for split, n_patients in patients_per_split.items():
        os.makedirs(os.path.join(out, split))
        counts[split] = {n: 0 for n in names}
        with tf.io.TFRecordWriter(os.path.join(out, split, f"{split}-00000{ex.SHARD_SUFFIX}")) as writer:
            for p in range(n_patients):
                label = p % 2
                for _ in range(3):
                    pixels = rng.normal(90, 20, (16, 16, 1))
                    if label:
                        r, c = rng.integers(2, 10, 2)
                        pixels[r : r + 5, c : c + 5] += 110
                    pixels = np.clip(pixels, 0, 255).astype(np.uint8)
                    info = ex.ImageFeatures.measure(pixels, "PNG", patient_key=f"{split}-patient-{p}")
                    writer.write(ex.make_example(pixels, label, names[label], info))
                    counts[split][names[label]] += 1
    fingerprint = f"{seed:064x}"  # stands for ingest's input fingerprint: lineage and model card must carry it
    ex.write_metadata(out, ex.DatasetMetadata(label_names=names, image_size=16, channels=1, counts=counts,
                                              input_fingerprint=fingerprint, patient_ids={"manifest": 3 * sum(
                                                  patients_per_split.values())}))


@pytest.fixture(scope="session")
def separable_examples_dir(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("separable") / "examples")
    _write_separable_examples(out, {"train": 40, "val": 16, "test": 16})
    return out


@pytest.fixture(scope="session")
def good_model_dir(separable_examples_dir, tmp_path_factory) -> str:
    """A model trained on `separable_examples_dir` that reaches a test ROC AUC near 1."""
    from radflow import examples as ex
    from radflow.components.class_balance.class_balance import compute_class_balance
    from radflow.components.class_balance.config import ClassBalanceConfig
    from radflow.components.train.config import TrainConfig
    from radflow.components.train.train import train

    out = str(tmp_path_factory.mktemp("good") / "model")
    balance = compute_class_balance(ex.read_metadata(separable_examples_dir), ClassBalanceConfig())
    train(separable_examples_dir, out, balance,
          TrainConfig(epochs=10, warmup_epochs=10, filters=(8, 8), dense_units=8, learning_rate=1e-2))
    return out
