"""push: publish a blessed SavedModel as the next version in TF Serving's layout.

TF Serving watches `<serving_root>/<model_name>/` and loads the highest integer directory, so
a version directory must never be visible half-written. Locally the model is copied into a
hidden staging directory and renamed into place in one step; on object stores, where there is
no rename, saved_model.pb is copied last (TF Serving does not load a version without it).
An existing version is never overwritten.

    radflow push runs/model runs/evaluation models
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import asdict, dataclass

import tensorflow as tf

from radflow import fileio
from radflow.components.evaluate.evaluate import read_blessing
from radflow.components.push.config import PushConfig
from radflow.components.train.train import SAVED_MODEL_DIR

log = logging.getLogger(__name__)

SAVED_MODEL_PB = "saved_model.pb"
# Inside each published version, beside the SavedModel (TF Serving ignores other directories):
# where the version came from, and the training statistics later runs compare against for drift.
LINEAGE_DIR = "radflow_lineage"
LINEAGE_FILE = "lineage.json"
TRAIN_STATISTICS_FILE = "train_statistics.pb"


@dataclass(frozen=True)
class PushResult:
    pushed: bool
    reason: str
    version: int | None = None
    path: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def versions(model_root: str) -> list[int]:
    """The published versions under `<serving_root>/<model_name>`, ascending."""
    if not tf.io.gfile.isdir(model_root):
        return []
    names = (n.rstrip("/") for n in tf.io.gfile.listdir(model_root))
    return sorted(int(n) for n in names if n.isdigit())


def _publish_local(src: str, model_root: str) -> tuple[int, str]:
    os.makedirs(model_root, exist_ok=True)
    staging = os.path.join(model_root, f".staging-{uuid.uuid4().hex}")
    shutil.copytree(src, staging)
    try:
        while True:
            version = max(versions(model_root), default=0) + 1
            target = os.path.join(model_root, str(version))
            try:
                # os.rename of a directory is atomic and fails if the target exists, so two
                # concurrent pushes cannot claim the same version.
                os.rename(staging, target)
                return version, target
            except OSError:
                if not os.path.exists(target):
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish_remote(src: str, model_root: str) -> tuple[int, str]:
    version = max(versions(model_root), default=0) + 1
    target = f"{model_root.rstrip('/')}/{version}"
    if tf.io.gfile.exists(target):
        raise FileExistsError(f"{target} already exists; refusing to overwrite a published version")
    fileio.copytree(src, target, last=SAVED_MODEL_PB)
    return version, target


def push(model_dir: str, evaluation_dir: str, serving_root: str, config: PushConfig = PushConfig()) -> PushResult:
    """Publishes the model if, and only if, its evaluation blessed it.

    Args:
        model_dir: a train output (holds saved_model/).
        evaluation_dir: an evaluate output (holds blessing.json).
        serving_root: local directory or gs:// prefix that TF Serving reads.
        config: the model name.

    Returns:
        Whether it was pushed and, if so, the version and its path. Not blessed is a normal
        outcome (pushed=False), not an error.
    """
    blessing = read_blessing(evaluation_dir)
    if not blessing.blessed:
        log.info("push: not pushed, model not blessed: %s", blessing.reason)
        return PushResult(False, f"not blessed: {blessing.reason}")
    src = os.path.join(model_dir, SAVED_MODEL_DIR)
    if not tf.io.gfile.exists(os.path.join(src, SAVED_MODEL_PB)):
        raise FileNotFoundError(f"{src} holds no {SAVED_MODEL_PB}; is {model_dir} a finished train output?")
    model_root = os.path.join(serving_root, config.model_name)
    publish = _publish_remote if fileio.is_remote(serving_root) else _publish_local
    version, path = publish(src, model_root)
    log.info("push: published version %d at %s", version, path)
    return PushResult(True, blessing.reason, version, path)
