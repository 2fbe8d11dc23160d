"""The serving root's layout: TF Serving's integer versions, and the lineage radflow keeps inside each.

    <serving_root>/<model_name>/<version>/saved_model.pb, variables/, assets/threshold.txt
    <serving_root>/<model_name>/<version>/radflow_lineage/lineage.json, train_statistics.pb, canary.json,
                                                           model.keras (for Grad-CAM)

TF Serving's default version policy serves the highest integer directory, so the live version
is the highest one. It ignores other directories, which is why lineage can sit beside the
SavedModel and why a staging directory whose name is not an integer is invisible to it.
Light on imports: evaluate reads the layout to find production, push writes it.
"""

from __future__ import annotations

import json
import os

from radflow import fileio

SAVED_MODEL_PB = "saved_model.pb"  # a version without it is never loaded, so it is published last
# Inside each published version, beside the SavedModel: where the version came from, and the
# training statistics later runs compare against for drift.
LINEAGE_DIR = "radflow_lineage"
LINEAGE_FILE = "lineage.json"
TRAIN_STATISTICS_FILE = "train_statistics.pb"


def version_path(model_root: str, version: int) -> str:
    return os.path.join(model_root, str(version))


def versions(model_root: str) -> list[int]:
    """The published versions under `<serving_root>/<model_name>`, ascending.

    A version counts once its saved_model.pb exists: on object stores a push copies that file
    last, so a version interrupted mid-copy is not listed (and TF Serving does not load it).
    """
    found = sorted(int(n) for n in fileio.listdir(model_root) if n.isdigit())
    if not fileio.is_remote(model_root):
        return found  # local versions appear by an atomic rename of a complete directory
    return [v for v in found if fileio.exists(os.path.join(version_path(model_root, v), SAVED_MODEL_PB))]


def live_version(model_root: str) -> int | None:
    """The version TF Serving serves under its default policy: the highest; None when there is none."""
    return max(versions(model_root), default=None)


def read_lineage(model_root: str, version: int) -> dict:
    """lineage.json of a published version; {} for versions pushed without one."""
    path = os.path.join(version_path(model_root, version), LINEAGE_DIR, LINEAGE_FILE)
    return json.loads(fileio.read_text(path)) if fileio.exists(path) else {}
