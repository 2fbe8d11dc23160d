"""File access that works the same on local paths and gs:// URIs, with atomic publication.

Readers in radflow treat a file's presence as a promise that it is complete, so every writer
here publishes by rename (local) or by a single object write (object stores, where an object
only becomes visible once its upload finishes).
"""

from __future__ import annotations

import os
import uuid

import tensorflow as tf


def is_remote(path: str) -> bool:
    return "://" in path


def read_text(path: str) -> str:
    with tf.io.gfile.GFile(path, "r") as f:
        return f.read()


def write_text_atomic(path: str, text: str) -> None:
    """Writes `text` so that readers see either the old file or the whole new one."""
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Writes `data` so that readers see either the old file or the whole new one."""
    parent = os.path.dirname(path)
    if parent:
        tf.io.gfile.makedirs(parent)
    if is_remote(path):
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(data)
        return
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def copytree(src: str, dst: str, last: str | None = None) -> None:
    """Copies a directory tree file by file, optionally copying the file named `last` last.

    Args:
        src: source directory (local or gs://).
        dst: destination directory; created if missing.
        last: a base name (e.g. "saved_model.pb") whose copies are deferred to the end, so that
            on object stores a reader keyed on that file never sees a partial tree.
    """
    deferred = []
    for dirpath, _, filenames in tf.io.gfile.walk(src):
        rel = os.path.relpath(dirpath, src)
        target_dir = dst if rel == "." else os.path.join(dst, rel)
        tf.io.gfile.makedirs(target_dir)
        for name in filenames:
            pair = (os.path.join(dirpath, name), os.path.join(target_dir, name))
            if name == last:
                deferred.append(pair)
            else:
                tf.io.gfile.copy(*pair, overwrite=True)
    for pair in deferred:
        tf.io.gfile.copy(*pair, overwrite=True)
