"""The export beyond serving_default: the pixels signature, the TF Serving warmup file, the Grad-CAM record."""

import json
import os

import keras
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from radflow import examples as ex
from radflow.components.train.train import (
    KERAS_MODEL_FILE,
    PIXELS_INPUT,
    PIXELS_SIGNATURE,
    RESULT_FILE,
    SAVED_MODEL_DIR,
    SCORES,
    SERVING_INPUT,
    WARMUP_DIR,
    WARMUP_FILE,
    make_dataset,
)


def test_pixels_signature_matches_serving_default(model_dir, examples_dir):
    metadata = ex.read_metadata(examples_dir)
    loaded = tf.saved_model.load(os.path.join(model_dir, SAVED_MODEL_DIR))
    pixels, _ = next(iter(make_dataset(examples_dir, "test", metadata, 4, training=False)))
    encoded = tf.stack([tf.io.encode_png(tf.cast(tf.round(p * 255), tf.uint8)) for p in pixels])
    by_bytes = loaded.signatures["serving_default"](**{SERVING_INPUT: encoded})
    by_pixels = loaded.signatures[PIXELS_SIGNATURE](**{PIXELS_INPUT: pixels})
    np.testing.assert_allclose(by_pixels[SCORES].numpy(), by_bytes[SCORES].numpy(), rtol=1e-6)
    assert set(by_pixels) == set(by_bytes) == {"scores", "classes", "threshold"}


def test_warmup_requests_are_valid_for_the_signature(model_dir):
    path = os.path.join(model_dir, SAVED_MODEL_DIR, WARMUP_DIR, WARMUP_FILE)
    serve = tf.saved_model.load(os.path.join(model_dir, SAVED_MODEL_DIR)).signatures["serving_default"]
    sizes = []
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
        assert request.model_spec.signature_name == "serving_default"
        images = tf.make_ndarray(request.inputs[SERVING_INPUT])
        out = serve(**{SERVING_INPUT: tf.constant(images)})
        sizes.append(out[SCORES].shape[0])
    assert sizes == [1, 8]


def test_training_record_names_the_grad_cam_layer_of_the_saved_keras_model(model_dir):
    with open(os.path.join(model_dir, RESULT_FILE)) as f:
        result = json.load(f)
    model = keras.models.load_model(os.path.join(model_dir, KERAS_MODEL_FILE))
    assert result["last_conv_layer"] == "block2_relu" and len(model.get_layer("block2_relu").output.shape) == 4
    assert result["dtype_policy"] == "float32" and result["jit_compile"] is False  # CPU
    assert result["class_balance"] == "class_weights" and result["resumed_from_epoch"] == 0
    assert not os.path.exists(os.path.join(model_dir, "backup"))  # resume state is not published
    assert os.listdir(os.path.join(model_dir, "logs", "head"))  # TensorBoard
