"""File access that works the same on local paths and gs:// URIs, with atomic publication.

Readers in radflow treat a file's presence as a promise that it is complete, so every writer
here publishes by rename (local) or by a single object write (object stores, where an object
only becomes visible once its upload finishes).

gs:// paths go through google-cloud-storage, which honours STORAGE_EMULATOR_HOST (so the tests
run against a real GCS emulator) and the same application-default credentials as tf.io.gfile;
other schemes (s3://, hdfs://) go through tf.io.gfile.
"""

from __future__ import annotations

import functools
import os
import shutil
import uuid

import tensorflow as tf


def is_remote(path: str) -> bool:
    return "://" in path


def _is_gcs(path: str) -> bool:
    return path.startswith("gs://")


@functools.lru_cache(maxsize=1)
def _gcs_client():
    from google.cloud import storage

    return storage.Client()


def _gcs_split(path: str) -> tuple[object, str]:
    """(bucket, object name) of a gs://bucket/name path."""
    bucket, _, name = path[len("gs://"):].partition("/")
    return _gcs_client().bucket(bucket), name


def _gcs_dir_prefix(path: str) -> tuple[object, str]:
    bucket, name = _gcs_split(path)
    return bucket, name.rstrip("/") + "/" if name.strip("/") else ""


def read_text(path: str) -> str:
    return read_bytes(path).decode()


def read_bytes(path: str) -> bytes:
    if _is_gcs(path):
        bucket, name = _gcs_split(path)
        return bucket.blob(name).download_as_bytes()
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def exists(path: str) -> bool:
    """Whether a file or a non-empty directory is at `path`."""
    if not _is_gcs(path):
        return tf.io.gfile.exists(path)
    bucket, name = _gcs_split(path)
    if name and bucket.blob(name).exists():
        return True
    _, prefix = _gcs_dir_prefix(path)
    return any(True for _ in _gcs_client().list_blobs(bucket, prefix=prefix, max_results=1))


def listdir(path: str) -> list[str]:
    """Names of the entries directly under a directory (no trailing slash); [] when it is missing."""
    if not _is_gcs(path):
        return [n.rstrip("/") for n in tf.io.gfile.listdir(path)] if tf.io.gfile.isdir(path) else []
    bucket, prefix = _gcs_dir_prefix(path)
    blobs = _gcs_client().list_blobs(bucket, prefix=prefix, delimiter="/")
    files = [b.name[len(prefix):] for b in blobs]  # consumes the pages, which fills blobs.prefixes
    return sorted(files + [p[len(prefix):].rstrip("/") for p in blobs.prefixes])


def walk_files(path: str) -> list[str]:
    """Every file under a directory, as paths relative to it, sorted."""
    if _is_gcs(path):
        bucket, prefix = _gcs_dir_prefix(path)
        return sorted(b.name[len(prefix):] for b in _gcs_client().list_blobs(bucket, prefix=prefix))
    return sorted(os.path.relpath(os.path.join(d, n), path) for d, _, names in tf.io.gfile.walk(path) for n in names)


def copy_file(src: str, dst: str) -> None:
    """Copies one file between any two of local, gs:// and tf.io.gfile locations."""
    if _is_gcs(dst):
        bucket, name = _gcs_split(dst)
        if _is_gcs(src):
            src_bucket, src_name = _gcs_split(src)
            src_bucket.copy_blob(src_bucket.blob(src_name), bucket, name)
        elif not is_remote(src):
            bucket.blob(name).upload_from_filename(src)
        else:
            bucket.blob(name).upload_from_string(read_bytes(src))
        return
    tf.io.gfile.makedirs(os.path.dirname(dst))
    if _is_gcs(src):
        bucket, name = _gcs_split(src)
        with tf.io.gfile.GFile(dst, "wb") as f:
            f.write(bucket.blob(name).download_as_bytes())
    elif not is_remote(src) and not is_remote(dst):
        shutil.copyfile(src, dst)
    else:
        tf.io.gfile.copy(src, dst, overwrite=True)


def remove(path: str) -> None:
    """Deletes one file; a missing file is not an error."""
    if _is_gcs(path):
        bucket, name = _gcs_split(path)
        blob = bucket.blob(name)
        if blob.exists():
            blob.delete()
    elif tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)


def rmtree(path: str) -> None:
    """Deletes a directory and everything under it; a missing directory is not an error."""
    if _is_gcs(path):
        bucket, prefix = _gcs_dir_prefix(path)
        for blob in _gcs_client().list_blobs(bucket, prefix=prefix):
            blob.delete()
    elif tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)


def write_text_atomic(path: str, text: str) -> None:
    """Writes `text` so that readers see either the old file or the whole new one."""
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Writes `data` so that readers see either the old file or the whole new one."""
    if _is_gcs(path):
        bucket, name = _gcs_split(path)
        bucket.blob(name).upload_from_string(data)
        return
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
    files = walk_files(src)
    if not is_remote(dst):
        os.makedirs(dst, exist_ok=True)
    for rel in sorted(files, key=lambda r: os.path.basename(r) == last):  # stable: `last` files at the end
        copy_file(os.path.join(src, rel), os.path.join(dst, rel))
