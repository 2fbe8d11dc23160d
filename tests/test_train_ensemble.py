"""Cross-validation's out-of-fold predictions, and an ensemble of the fold models exported as one model."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from radflow import examples as ex
from radflow import explain
from radflow.components.class_balance.class_balance import compute_class_balance
from radflow.components.class_balance.config import ClassBalanceConfig
from radflow.components.evaluate.config import EvaluateConfig
from radflow.components.evaluate.evaluate import evaluate
from radflow.components.train.config import TrainConfig
from radflow.components.train.cv import OOF_FILE, read_oof
from radflow.components.train.train import KERAS_MODEL_FILE, PIXELS_SIGNATURE, SAVED_MODEL_DIR, SCORES, train
from radflow.ensemble import ENSEMBLE_NAME, ensemble_members

CONFIG = TrainConfig(epochs=3, warmup_epochs=0, filters=(8, 8), dense_units=8, learning_rate=1e-2, cv_folds=2)


@pytest.fixture(scope="module")
def ensemble_dir(separable_examples_dir, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("ensemble") / "model")
    balance = compute_class_balance(ex.read_metadata(separable_examples_dir), ClassBalanceConfig())
    train(separable_examples_dir, out, balance, TrainConfig(**{**CONFIG.__dict__, "ensemble_folds": True}))
    return out


def test_out_of_fold_predictions_cover_train_and_val_once(ensemble_dir, separable_examples_dir):
    metadata = ex.read_metadata(separable_examples_dir)
    oof = read_oof(ensemble_dir)
    n = metadata.split_size("train") + metadata.split_size("val")
    assert len(oof["labels"]) == n and oof["scores"].shape == (n, 2)
    assert set(oof["folds"].tolist()) == {0, 1}
    for fold in (0, 1):  # a patient is scored by one fold's model only
        others = set(oof["patients"][oof["folds"] != fold])
        assert not set(oof["patients"][oof["folds"] == fold]) & others
    assert np.allclose(oof["scores"].sum(axis=1), 1)


def test_the_ensembles_scores_are_the_mean_of_its_members(ensemble_dir, separable_examples_dir):
    metadata = ex.read_metadata(separable_examples_dir)
    model = keras.models.load_model(os.path.join(ensemble_dir, KERAS_MODEL_FILE), compile=False)
    assert model.name == ENSEMBLE_NAME
    members = [keras.models.load_model(os.path.join(ensemble_dir, f"fold-{i}.keras"), compile=False)
               for i in range(2)]
    batch = next(ex.iter_split(separable_examples_dir, "test", metadata, batch_size=16))
    pixels = batch[ex.IMAGE].astype(np.float32) / 255.0
    mean = np.mean([m(pixels, training=False).numpy() for m in members], axis=0)[:, 0]
    served = tf.saved_model.load(os.path.join(ensemble_dir, SAVED_MODEL_DIR)).signatures[PIXELS_SIGNATURE]
    scores = served(pixels=tf.constant(pixels))[SCORES].numpy()
    np.testing.assert_allclose(scores[:, 1], mean, atol=1e-5)
    assert not np.allclose(members[0](pixels).numpy(), members[1](pixels).numpy())  # two different members
    training = json.load(open(os.path.join(ensemble_dir, "training.json")))
    assert training["ensemble"] == 2 and training["phases"] == ["ensemble"]
    heat = explain.grad_cam(model, pixels[0])  # explained as the mean of its members' maps
    assert heat.shape == (16, 16) and len(ensemble_members(model)) == 2


def test_an_ensemble_is_gated_with_an_out_of_fold_threshold_and_refuses_val(ensemble_dir, separable_examples_dir,
                                                                             tmp_path):
    with pytest.raises(ValueError, match="ensemble of cross-validation folds .* set threshold_source: oof"):
        evaluate(ensemble_dir, separable_examples_dir, str(tmp_path / "val"), EvaluateConfig(explain_images=0))
    result = evaluate(ensemble_dir, separable_examples_dir, str(tmp_path / "oof"),
                      EvaluateConfig(threshold_source="oof", bootstrap_resamples=50, explain_images=1))
    assert result.operating_point.source == "oof"
    assert result.operating_point.patients["positive"] + result.operating_point.patients["negative"] == 56
    assert "train's out-of-fold predictions" in result.blessing.reason


def test_oof_needs_cross_validation_and_ensembles_need_folds(good_model_dir, separable_examples_dir, tmp_path):
    with pytest.raises(ValueError, match=f"no {OOF_FILE}: train with train.cv_folds >= 2"):
        evaluate(good_model_dir, separable_examples_dir, str(tmp_path), EvaluateConfig(threshold_source="oof"))
    with pytest.raises(ValueError, match="ensemble_folds needs cv_folds >= 2"):
        TrainConfig(ensemble_folds=True)
