"""The model zoo: backbones at their smallest inputs, weights files, two-phase fine-tuning, Grad-CAM layer names."""

import logging
import os
import socket

import keras
import numpy as np
import pytest

from radflow import examples as ex
from radflow.components.class_balance.class_balance import compute_class_balance
from radflow.components.class_balance.config import ClassBalanceConfig
from radflow.components.train.config import TrainConfig
from radflow.components.train.fit import FINE_TUNE, HEAD, fit_model
from radflow.components.train.models import (
    BACKBONES,
    backbone_layers,
    build_model,
    last_conv_layer_name,
    set_trainable,
)
from radflow.components.train.strategy import acceleration, choose_strategy

LAST_CONV = {"mobilenet_v2": "out_relu", "efficientnet_b0": "top_activation", "resnet50": "conv5_block3_out",
             "densenet121": "relu", "inception_v3": "mixed10", "vgg16": "block5_conv3"}


def _meta(size: int, k: int = 2) -> ex.DatasetMetadata:
    return ex.DatasetMetadata(tuple(f"C{i}" for i in range(k)), size, 1, {})


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_is_built_flat_on_grayscale_with_a_new_head(name):
    size = BACKBONES[name].min_size
    model = build_model(_meta(size), TrainConfig(model=name, dense_units=8), [0.7])
    assert model.input.shape == (None, size, size, 1) and model.output.shape == (None, 1)
    assert model.get_layer("gray_to_rgb").output.shape[-1] == 3
    layer = last_conv_layer_name(model)
    assert layer == LAST_CONV[name] and len(model.get_layer(layer).output.shape) == 4
    assert [lyr.name for lyr in model.layers[-4:]] == ["head_pool", "head_dense", "head_dropout", "scores"]
    np.testing.assert_allclose(model.get_layer("scores").bias.numpy(), [0.7])
    y = model(np.random.default_rng(0).random((2, size, size, 1), np.float32), training=False)
    assert np.all((0 <= y) & (y <= 1))


def test_multiclass_head_is_softmax_with_log_prior_bias():
    model = build_model(_meta(32, 3), TrainConfig(model="vgg16", dense_units=8), [-1.0, -1.5, -0.9])
    assert model.output.shape == (None, 3) and model.get_layer("scores").activation.__name__ == "softmax"
    with pytest.raises(ValueError, match="does not fit a 3-class head"):
        build_model(_meta(32, 3), TrainConfig(dense_units=8, filters=(4,)), [0.0])


def test_baseline_layers_have_stable_names_for_grad_cam():
    model = build_model(_meta(32), TrainConfig(filters=(4, 8), dense_units=4), [0.0])
    assert last_conv_layer_name(model) == "block2_relu"
    assert {"block1_conv", "block1_bn", "block2_conv", "block2_pool"} <= {lyr.name for lyr in model.layers}


def test_weights_are_never_downloaded(tmp_path):
    with pytest.raises(ValueError, match="never downloads weights.*pass its path as weights"):
        build_model(_meta(32), TrainConfig(model="mobilenet_v2", weights="imagenet"), [0.0])
    with pytest.raises(FileNotFoundError, match="not found"):
        build_model(_meta(32), TrainConfig(model="mobilenet_v2", weights=str(tmp_path / "x.weights.h5")), [0.0])
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_model(_meta(32), TrainConfig(weights="w.weights.h5"), [0.0])
    with pytest.raises(ValueError, match="at least 75 px"):
        build_model(_meta(64), TrainConfig(model="inception_v3"), [0.0])
    with pytest.raises(ValueError, match="unknown model"):
        build_model(_meta(32), TrainConfig(model="resnet9000"), [0.0])


def test_a_weights_file_of_another_backbone_is_one_line_naming_expected_and_found(weights_file):
    with pytest.raises(ValueError) as err:  # Keras' own: "A total of 26 objects could not be loaded. ..."
        build_model(_meta(32), TrainConfig(model="vgg16", weights=weights_file[0]), [0.0])
    message = str(err.value)
    assert "\n" not in message
    assert message == (f"train.weights: {weights_file[0]} is not a vgg16 no-top weights file: expected the 26 "
                       f"weight arrays of vgg16 without its top, found {len(weights_file[1].weights)} (another "
                       "backbone's, or one saved with its top)")


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> tuple[str, keras.Model]:
    """A MobileNetV2 no-top weights file, standing in for downloaded ImageNet weights."""
    source = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = str(tmp_path_factory.mktemp("weights") / "mobilenet_v2.weights.h5")
    source.save_weights(path)
    return path, source


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_weights_file_from_gcs(weights_file, monkeypatch):
    """A gs:// weights file is fetched (here from a real GCS emulator) and loaded into the backbone."""
    from gcp_storage_emulator.server import create_server
    from google.cloud import storage

    from radflow import fileio

    port = _free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="weights")
    server.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test")
    fileio._gcs_client.cache_clear()
    try:
        storage.Client().bucket("weights").blob("mnv2/mobilenet_v2.weights.h5").upload_from_filename(weights_file[0])
        for weights in (weights_file[0], "gs://weights/mnv2/mobilenet_v2.weights.h5"):
            model = build_model(_meta(32), TrainConfig(model="mobilenet_v2", weights=weights, dense_units=4), [0.0])
            for name in ("Conv1", "block_16_project", "Conv_1"):
                for a, b in zip(model.get_layer(name).get_weights(), weights_file[1].get_layer(name).get_weights(),
                                strict=True):
                    np.testing.assert_array_equal(a, b)
    finally:
        server.stop()
        fileio._gcs_client.cache_clear()


def _trainable(model: keras.Model) -> set[str]:
    return {layer.name for layer in backbone_layers(model) if layer.trainable}


def test_fine_tuning_unfreezes_the_top_layers_or_a_named_block_and_never_batch_norm(weights_file):
    config = TrainConfig(model="mobilenet_v2", weights=weights_file[0], unfreeze_layers=12, dense_units=4)
    model = build_model(_meta(32), config, [0.0])
    layers = backbone_layers(model)
    set_trainable(model, config, HEAD)
    assert _trainable(model) == set() and model.get_layer("head_dense").trainable
    set_trainable(model, config, FINE_TUNE)
    top = layers[-12:]
    assert _trainable(model) == {lyr.name for lyr in top if not isinstance(lyr, keras.layers.BatchNormalization)}
    assert not any(lyr.trainable for lyr in layers if isinstance(lyr, keras.layers.BatchNormalization))

    vgg = TrainConfig(model="vgg16", weights=weights_file[0], unfreeze_block="block5")
    model = build_model(_meta(32), TrainConfig(model="vgg16"), [0.0])
    set_trainable(model, vgg, FINE_TUNE)
    assert _trainable(model) == {"block5_conv1", "block5_conv2", "block5_conv3", "block5_pool"}
    with pytest.raises(ValueError, match="names no layer"):
        set_trainable(model, TrainConfig(model="vgg16", weights="w.h5", unfreeze_block="block9"), FINE_TUNE)


def test_two_phase_fit_trains_head_then_top_layers_with_batch_norm_in_inference_mode(
        weights_file, examples_dir, tmp_path, caplog):
    metadata = ex.read_metadata(examples_dir)
    config = TrainConfig(model="mobilenet_v2", weights=weights_file[0], epochs=1, fine_tune_epochs=1,
                         unfreeze_layers=8, dense_units=4, batch_size=32, warmup_epochs=0, augment=False)
    strategy = choose_strategy()
    balance = compute_class_balance(metadata, ClassBalanceConfig())
    with caplog.at_level(logging.INFO, logger="radflow.components.train.fit"):
        fitted = fit_model(examples_dir, metadata, balance, config, strategy, acceleration("cpu", True, True),
                           str(tmp_path), verbose=0)
    assert fitted.phases == [HEAD, FINE_TUNE] and len(fitted.history["loss"]) == 2
    head, fine = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train: phase ")]
    trainable = sum(int(np.prod(w.shape)) for w in fitted.model.trainable_weights)  # as phase 2 left them
    assert head.startswith("train: phase head: the pretrained mobilenet_v2 is frozen, the head learns (")
    assert head.endswith("; up to 1 epochs at learning rate 0.001")
    assert fine == (f"train: phase fine_tune: fine-tuning: the top 8 mobilenet_v2 layers learn too, BatchNormalization "
                    f"stays frozen ({trainable:,} of {sum(int(np.prod(w.shape)) for w in fitted.model.weights):,} "
                    "weights); up to 1 epochs at learning rate 1e-05")
    model, source = fitted.model, weights_file[1]
    bn = [lyr.name for lyr in backbone_layers(model) if isinstance(lyr, keras.layers.BatchNormalization)]
    for name in bn:  # moving statistics untouched in both phases
        for a, b in zip(model.get_layer(name).get_weights(), source.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(model.get_layer("Conv1").kernel.numpy(), source.get_layer("Conv1").kernel.numpy())
    # Conv_1 is among the top 8 layers: only phase 2 can have moved it, unless phase 1 won on validation.
    moved = not np.array_equal(model.get_layer("Conv_1").kernel.numpy(), source.get_layer("Conv_1").kernel.numpy())
    assert moved == (fitted.best_epoch == 2)
    assert os.path.exists(os.path.join(tmp_path, HEAD, "done.weights.h5"))
