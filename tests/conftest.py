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
