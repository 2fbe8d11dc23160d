"""Model lifecycle as TF Serving runs it: watch base paths, load, warm up, switch, unload.

Each model's base path is scanned every `poll_seconds` for integer version directories holding a
saved_model.pb (push publishes it last, so a half-copied version is never picked up). The version
policy (latest N, all, specific) names the versions to serve. A new version is loaded and warmed
up before it becomes AVAILABLE; only then are the versions it replaces taken out of routing, and
each is unloaded once its in-flight requests have finished, so a swap fails no request. A version
that fails to load is reported (state END with its error) and is not tried again until its
saved_model.pb changes; it never displaces a working version.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2, model_pb2
from tensorflow_serving.config import model_server_config_pb2

from radflow.serving.config import BatchingOptions
from radflow.serving.errors import ServingError, invalid, not_found
from radflow.serving.servable import SAVED_MODEL_FILES, Servable

log = logging.getLogger(__name__)

State = get_model_status_pb2.ModelVersionStatus.State


@dataclass
class _Version:
    version: int
    state: int = State.START
    error: ServingError | None = None
    servable: Servable | None = None
    inflight: int = 0
    fingerprint: tuple | None = None  # (size, mtime) of saved_model.pb when last loaded or tried


class _Model:
    def __init__(self, config: model_server_config_pb2.ModelConfig):
        self.config = config
        self.versions: dict[int, _Version] = {}

    def latest_available(self) -> _Version | None:
        available = [v for v in self.versions.values() if v.state == State.AVAILABLE]
        return max(available, key=lambda v: v.version) if available else None


class ModelManager:
    """Serves the models of a model config and keeps their versions current.

    Args:
        configs: one ModelConfig per model (TF Serving's message).
        poll_seconds: how often base paths are scanned.
        batching: server-side batching options, or None.
        on_change: called (without arguments) after any version changes state.
    """

    def __init__(self, configs: list[model_server_config_pb2.ModelConfig], poll_seconds: float = 1.0,
                 batching: BatchingOptions | None = None, on_change: Callable[[], None] | None = None):
        self._models = {c.name: _Model(c) for c in configs}
        self._poll_seconds = poll_seconds
        self._batching = batching
        self._on_change = on_change or (lambda: None)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Starts polling in the background; the first scan begins at once."""
        self._thread = threading.Thread(target=self._poll_loop, name="model-manager", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops polling and unloads every version once its in-flight requests are done."""
        self._stop.set()
        if self._thread:
            self._thread.join()
        for model in self._models.values():
            for entry in list(model.versions.values()):
                if entry.state == State.AVAILABLE:
                    self._unload(model, entry)

    def ready(self) -> bool:
        """True when every configured model has an AVAILABLE version."""
        with self._cond:
            return all(m.latest_available() is not None for m in self._models.values())

    def model_ready(self, name: str) -> bool:
        with self._cond:
            return name in self._models and self._models[name].latest_available() is not None

    @property
    def model_names(self) -> list[str]:
        return list(self._models)

    def poll_once(self) -> None:
        """Scans every base path and applies the version policies once."""
        for model in self._models.values():
            try:
                self._poll_model(model)
            except Exception:  # a flaky file system must not end polling
                log.exception("polling %s failed", model.config.base_path)

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self._poll_seconds)

    # -- requests ---------------------------------------------------------------------------------

    def _resolve(self, spec: model_pb2.ModelSpec) -> tuple[_Model, int | None]:
        model = self._models.get(spec.name)
        if model is None:
            raise not_found(f"Servable not found for request: Latest({spec.name})")
        if spec.HasField("version"):
            return model, spec.version.value
        if spec.version_label:
            labels = model.config.version_labels
            if spec.version_label not in labels:
                raise invalid(f"Unrecognized servable version label: {spec.version_label}")
            return model, labels[spec.version_label]
        return model, None

    @contextmanager
    def servable(self, spec: model_pb2.ModelSpec) -> Iterator[Servable]:
        """Holds the version a request asks for (by number, label or latest) while it is used.

        Raises:
            ServingError: NOT_FOUND for an unknown model or a version that is not AVAILABLE;
                INVALID_ARGUMENT for an unknown label.
        """
        with self._cond:
            model, version = self._resolve(spec)
            if version is None:
                entry = model.latest_available()
                wanted = f"Latest({spec.name})"
            else:
                entry = model.versions.get(version)
                wanted = f"Specific({spec.name}, {version})"
            if entry is None or entry.state != State.AVAILABLE:
                raise not_found(f"Servable not found for request: {wanted}")
            entry.inflight += 1
        try:
            yield entry.servable
        finally:
            with self._cond:
                entry.inflight -= 1
                self._cond.notify_all()

    def status(self, spec: model_pb2.ModelSpec) -> get_model_status_pb2.GetModelStatusResponse:
        """GetModelStatus: every version this server has tried, newest first, or the one asked for.

        Raises:
            ServingError: NOT_FOUND for an unknown model or version.
        """
        with self._cond:
            model, version = self._resolve(spec)
            entries = sorted(model.versions.values(), key=lambda v: -v.version)
            if version is not None:
                entries = [e for e in entries if e.version == version]
                if not entries:
                    raise not_found(f"Could not find version {version} of model {spec.name}")
            if not entries:
                raise not_found(f"Could not find any versions of model {spec.name}")
            response = get_model_status_pb2.GetModelStatusResponse()
            for e in entries:
                status = response.model_version_status.add(version=e.version, state=e.state)
                status.status.SetInParent()  # TF Serving always reports a status, OK included
                if e.error is not None:
                    status.status.error_code = e.error.code.value[0]
                    status.status.error_message = e.error.message
            return response

    # -- versions ---------------------------------------------------------------------------------

    def _scan(self, base_path: str) -> dict[int, tuple]:
        """Version number -> fingerprint of its saved_model.pb, for complete version directories."""
        if not tf.io.gfile.isdir(base_path):
            log.warning("no versions of servable found under base path %s (it does not exist)", base_path)
            return {}
        found = {}
        for name in tf.io.gfile.listdir(base_path):
            name = name.rstrip("/")
            if not name.isdigit():
                continue  # e.g. push's hidden staging directories
            for pb in SAVED_MODEL_FILES:
                path = os.path.join(base_path, name, pb)
                if tf.io.gfile.exists(path):
                    stat = tf.io.gfile.stat(path)
                    found[int(name)] = (stat.length, stat.mtime_nsec)
                    break
        return found

    def _aspired(self, model: _Model, present: dict[int, tuple]) -> set[int]:
        """The versions the policy wants served, leaving out those that failed on these very files."""
        usable = {v for v, fp in present.items()
                  if not ((e := model.versions.get(v)) and e.error is not None and e.fingerprint == fp)}
        policy = model.config.model_version_policy
        choice = policy.WhichOneof("policy_choice")
        if choice == "all":
            return usable
        if choice == "specific":
            return usable & set(policy.specific.versions)
        n = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions > 0 else 1
        return set(sorted(usable)[-n:])

    def _poll_model(self, model: _Model) -> None:
        present = self._scan(model.config.base_path)
        for version in sorted(self._aspired(model, present), reverse=True):
            entry = model.versions.get(version)
            if entry is None or entry.state == State.END:
                self._load(model, version, present[version])
        aspired = self._aspired(model, present)
        # Only once the aspired versions are settled are the others taken out: availability first.
        for entry in list(model.versions.values()):
            if entry.state == State.AVAILABLE and entry.version not in aspired:
                self._unload(model, entry)

    def _set(self, entry: _Version, **changes) -> None:
        with self._cond:
            for k, v in changes.items():
                setattr(entry, k, v)
            self._cond.notify_all()
        self._on_change()

    def _load(self, model: _Model, version: int, fingerprint: tuple) -> None:
        name = model.config.name
        path = os.path.join(model.config.base_path, str(version))
        with self._cond:
            entry = model.versions.setdefault(version, _Version(version))
        self._set(entry, state=State.LOADING, error=None, fingerprint=fingerprint)
        log.info("loading servable version {name: %s version: %d} from %s", name, version, path)
        servable = None
        try:
            servable = Servable(name, version, path, self._batching)
            warmed = servable.warmup()
        except Exception as err:  # any failure of a version is reported, never raised into the poll loop
            error = ServingError.from_exception(err)
            if error.code == grpc.StatusCode.OK:
                error = ServingError(grpc.StatusCode.UNKNOWN, str(err))
            log.error("servable version {name: %s version: %d} failed to load: %s", name, version, error.message)
            if servable is not None:
                servable.close()
            self._set(entry, state=State.END, error=error, servable=None)
            return
        log.info("servable version {name: %s version: %d} is AVAILABLE (%d warmup requests)", name, version, warmed)
        self._set(entry, state=State.AVAILABLE, servable=servable)

    def _unload(self, model: _Model, entry: _Version) -> None:
        self._set(entry, state=State.UNLOADING)
        with self._cond:
            self._cond.wait_for(lambda: entry.inflight == 0)
            servable, entry.servable = entry.servable, None
        if servable is not None:
            servable.close()
        log.info("unloaded servable version {name: %s version: %d}", model.config.name, entry.version)
        self._set(entry, state=State.END)
