import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from radflow import examples as ex
from radflow.components.ingest.ingest import SourceFile, decode_file
from radflow.components.train.train import (
    CLASSES,
    KERAS_MODEL_FILE,
    RESULT_FILE,
    SAVED_MODEL_DIR,
    SCORES,
    SERVING_INPUT,
    choose_strategy,
    make_dataset,
    read_labels,
)
from radflow.preprocessing import preprocess_encoded


def _png(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("policy", ["pad", "crop"])
@pytest.mark.parametrize("fmt, shape", [("PNG", (45, 70)), ("JPEG", (140, 300))])
def test_training_and_serving_paths_give_identical_inputs(tmp_path, policy, fmt, shape):
    """One odd-sized image through ingest + the training input pipeline, and through the serving preprocessing.

    The 140x300 JPEG is decoded at a reduced scale on both paths (1/8 padded: 300 -> 38; 1/4 cropped: 140 -> 35).
    """
    pixels = np.random.default_rng(3).integers(0, 255, shape, np.uint8)
    path = tmp_path / f"IM-0001-0001.{fmt.lower()}"
    path.write_bytes(_png(pixels, fmt))
    size = 32
    decoded = decode_file(SourceFile(str(path), "NORMAL", "train", "IM-0001"), ("NORMAL", "PNEUMONIA"), size, 1,
                          resize_policy=policy)
    assert not decoded.reason
    split_dir = tmp_path / "examples" / "train"
    split_dir.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(split_dir / f"train-0{ex.SHARD_SUFFIX}")) as w:
        w.write(decoded.example)
    metadata = ex.DatasetMetadata(("NORMAL", "PNEUMONIA"), size, 1, {"train": {"NORMAL": 1, "PNEUMONIA": 0}})
    x_train, y = next(iter(make_dataset(str(tmp_path / "examples"), "train", metadata, 1, training=False)))

    x_serve = preprocess_encoded(tf.constant(path.read_bytes()), size, 1, policy)
    assert x_train.shape == (1, size, size, 1) and float(y[0, 0]) == 0.0
    np.testing.assert_array_equal(x_train[0].numpy(), x_serve.numpy())
    assert 0.0 <= float(tf.reduce_min(x_serve)) and float(tf.reduce_max(x_serve)) <= 1.0
    # Padding leaves black bars above and below the wide image; cropping leaves none.
    assert (float(tf.reduce_max(x_serve[0])) == 0.0) == (policy == "pad")


def test_cpu_strategy_is_one_device():
    strategy = choose_strategy()
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert strategy.num_replicas_in_sync == 1


def test_export_serves_encoded_bytes_like_the_keras_model(model_dir, examples_dir):
    import keras

    metadata = ex.read_metadata(examples_dir)
    batch = ex.concat_batches(ex.iter_split(examples_dir, "test", metadata))
    images = batch[ex.IMAGE][:5]
    serve = tf.saved_model.load(os.path.join(model_dir, SAVED_MODEL_DIR)).signatures["serving_default"]
    encoded = tf.constant([_png(im[:, :, 0]) for im in images])
    out = serve(**{SERVING_INPUT: encoded})

    assert out[SCORES].shape == (5, 2) and out[CLASSES].shape == (5, 2)
    assert [c.decode() for c in out[CLASSES].numpy()[0]] == ["NORMAL", "PNEUMONIA"]
    np.testing.assert_allclose(out[SCORES].numpy().sum(axis=1), 1.0, rtol=1e-5)
    keras_model = keras.models.load_model(os.path.join(model_dir, KERAS_MODEL_FILE))
    p = keras_model.predict(images.astype(np.float32) / 255.0, verbose=0)[:, 0]
    np.testing.assert_allclose(out[SCORES].numpy()[:, 1], p, rtol=1e-4, atol=1e-5)
    assert read_labels(os.path.join(model_dir, SAVED_MODEL_DIR)) == ["NORMAL", "PNEUMONIA"]


def test_training_writes_its_record_last(model_dir):
    with open(os.path.join(model_dir, RESULT_FILE)) as f:
        result = json.load(f)
    assert result["strategy"] == "OneDeviceStrategy" and result["epochs_run"] == 2
    assert os.path.exists(os.path.join(model_dir, "training_curves.png"))
    with open(os.path.join(model_dir, "history.json")) as f:
        assert len(json.load(f)["val_auc"]) == 2


def test_missing_split_is_a_clear_error(tmp_path):
    metadata = ex.DatasetMetadata(("A", "B"), 8, 1, {})
    with pytest.raises(FileNotFoundError, match="no shards for split 'val'"):
        make_dataset(str(tmp_path), "val", metadata, 4, training=False)


def test_threshold_is_read_from_the_versions_asset(model_dir, tmp_path):
    """Push rewrites assets/threshold.txt in the published copy; the server must answer with it."""
    import shutil

    from radflow.components.train.train import THRESHOLD, THRESHOLD_ASSET

    copy = tmp_path / "version"
    shutil.copytree(os.path.join(model_dir, SAVED_MODEL_DIR), copy)
    (copy / "assets" / THRESHOLD_ASSET).write_text("0.125\n")
    serve = tf.saved_model.load(str(copy)).signatures["serving_default"]
    image = tf.constant([_png(np.zeros((40, 40), np.uint8))])
    assert serve(**{SERVING_INPUT: image})[THRESHOLD].numpy().tolist() == [0.125]
    original = tf.saved_model.load(os.path.join(model_dir, SAVED_MODEL_DIR)).signatures["serving_default"]
    assert original(**{SERVING_INPUT: image})[THRESHOLD].numpy().tolist() == [0.5]
