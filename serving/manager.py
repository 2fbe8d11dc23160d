"""Model lifecycle as TF Serving runs it: watch base paths, load, retry, warm up, switch, unload.

Each model's base path is scanned every `poll_seconds` for integer version directories holding a
saved_model.pb (push publishes it last, so a half-copied version is never picked up). The version
policy (latest N, all, specific) names the versions to serve. A new version is loaded and warmed
up before it becomes AVAILABLE; only then are the versions it replaces taken out of routing, and
each is unloaded once its in-flight requests have finished, so a swap fails no request.

A version that fails to load is retried `max_num_load_retries` times, `load_retry_interval`
apart, as TF Serving's loader harness does: a version copied in place with saved_model.pb before
variables/ (rsync's order) fails its first attempt and loads on a retry. After the last retry it
stays reported (state END with its error) and is tried again only when its saved_model.pb
changes; it never displaces a working version.

`reload` swaps in a new model config (models added and removed, policies and labels changed),
with TF Serving's rule for labels: a label may only name an AVAILABLE version, unless
`allow_version_labels_for_unavailable_models` is set and the label is new or unchanged.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2, model_pb2
from tensorflow_serving.config import model_server_config_pb2

from radflow.serving.config import BatchingOptions, read_batching_parameters_file
from radflow.serving.errors import ServingError, invalid, not_found
from radflow.serving.metrics import ServingMetrics
from radflow.serving.servable import SAVED_MODEL_FILES, SERVE_TAG, Servable

log = logging.getLogger(__name__)

State = get_model_status_pb2.ModelVersionStatus.State
PER_MODEL_BATCHING_FILE = "batching_params.pbtxt"  # TF Serving's name, in the version directory


@dataclass(frozen=True)
class ManagerOptions:
    """How versions are found, loaded and retried; TF Serving's defaults.

    Args:
        poll_seconds: seconds between scans of each base path; 0 scans once, negative never.
        batching: server-side batching options, or None.
        per_model_batching: read batching_params.pbtxt from each version (--enable_per_model_batching_parameters).
        max_num_load_retries: retries after a failed load before giving up.
        load_retry_interval_seconds: wait between retries.
        saved_model_tags: the meta graph to load.
        enable_model_warmup: replay assets.extra/tf_serving_warmup_requests before AVAILABLE.
        warmup_iterations: times each warmup record is replayed.
        allow_version_labels_for_unavailable_models: TF Serving's flag of that name.
    """

    poll_seconds: float = 1.0
    batching: BatchingOptions | None = None
    per_model_batching: bool = False
    max_num_load_retries: int = 5
    load_retry_interval_seconds: float = 60.0
    saved_model_tags: tuple[str, ...] = (SERVE_TAG,)
    enable_model_warmup: bool = True
    warmup_iterations: int = 1
    allow_version_labels_for_unavailable_models: bool = False


@dataclass
class _Version:
    version: int
    state: int = State.START
    error: ServingError | None = None
    servable: Servable | None = None
    inflight: int = 0
    fingerprint: tuple | None = None  # (size, mtime) of saved_model.pb when last loaded or tried
    failures: int = 0  # failed load attempts on this fingerprint
    retry_at: float = 0.0  # monotonic time of the next attempt after a failure


@dataclass
class _Model:
    config: model_server_config_pb2.ModelConfig
    versions: dict[int, _Version] = field(default_factory=dict)
    removed: bool = False  # gone from the config: unloaded at the next poll, then forgotten

    def latest_available(self) -> _Version | None:
        available = [v for v in self.versions.values() if v.state == State.AVAILABLE]
        return max(available, key=lambda v: v.version) if available else None


class ModelManager:
    """Serves the models of a model config and keeps their versions current.

    Args:
        configs: one ModelConfig per model (TF Serving's message).
        options: polling, batching, retries, warmup.
        on_change: called (without arguments) after any version changes state.
        metrics: where load attempts and available versions are counted, or None.
    """

    def __init__(self, configs: list[model_server_config_pb2.ModelConfig], options: ManagerOptions = ManagerOptions(),
                 on_change: Callable[[], None] | None = None, metrics: ServingMetrics | None = None):
        self._models = {c.name: _Model(c) for c in configs}
        self._options = options
        self._on_change = on_change or (lambda: None)
        self._metrics = metrics
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
        for model in list(self._models.values()):
            for entry in list(model.versions.values()):
                if entry.state == State.AVAILABLE:
                    self._unload(model, entry)

    def ready(self) -> bool:
        """True when every configured model has an AVAILABLE version."""
        with self._cond:
            return all(m.latest_available() is not None for m in self._models.values() if not m.removed)

    def model_ready(self, name: str) -> bool:
        with self._cond:
            model = self._models.get(name)
            return model is not None and not model.removed and model.latest_available() is not None

    @property
    def model_names(self) -> list[str]:
        with self._cond:
            return [name for name, m in self._models.items() if not m.removed]

    def poll_once(self) -> None:
        """Scans every base path and applies the version policies once."""
        with self._cond:
            models = list(self._models.values())
        for model in models:
            try:
                self._poll_model(model)
            except Exception:  # a flaky file system must not end polling
                log.exception("polling %s failed", model.config.base_path)

    def _poll_loop(self) -> None:
        if self._options.poll_seconds < 0:
            return  # TF Serving: a negative interval disables polling
        while not self._stop.is_set():
            self.poll_once()
            if self._options.poll_seconds == 0:
                return  # TF Serving: zero polls exactly once
            self._stop.wait(self._options.poll_seconds)

    # -- config -----------------------------------------------------------------------------------

    def reload(self, configs: list[model_server_config_pb2.ModelConfig]) -> None:
        """Serves a new model config: adds and removes models, changes policies and moves labels.

        Versions are loaded and unloaded by the poll loop, availability first, as for new versions.

        Raises:
            ServingError: FAILED_PRECONDITION for a label on a version that is not AVAILABLE (TF
                Serving's rule); the config in force stays as it was.
        """
        with self._cond:
            for config in configs:
                model = self._models.get(config.name)
                for label, version in config.version_labels.items():
                    old = model.config.version_labels.get(label) if model and not model.removed else None
                    if self._options.allow_version_labels_for_unavailable_models and old in (None, version):
                        continue
                    entry = model.versions.get(version) if model else None
                    if entry is None or entry.state != State.AVAILABLE:
                        raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                                           f"Request to assign label to version {version} of model {config.name}, "
                                           "which is not currently available for inference")
            wanted = {c.name: c for c in configs}
            for name, model in self._models.items():
                if name not in wanted and not model.removed:
                    model.removed = True
                    log.info("model %s is no longer in the config: unloading it", name)
            for name, config in wanted.items():
                model = self._models.get(name)
                if model is None or model.removed:
                    self._models[name] = _Model(config, model.versions if model else {})
                    log.info("model %s added from %s", name, config.base_path)
                elif model.config != config:
                    model.config = config
                    log.info("model %s: config changed", name)
            self._cond.notify_all()
        self._on_change()

    # -- requests ---------------------------------------------------------------------------------

    def _resolve(self, spec: model_pb2.ModelSpec) -> tuple[_Model, int | None]:
        model = self._models.get(spec.name)
        if model is None or model.removed:
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

    def _loadable(self, entry: _Version | None, fingerprint: tuple, now: float) -> bool:
        """Whether a version may be (re)tried now: never tried, changed files, or a retry that is due."""
        if entry is None or entry.error is None or entry.fingerprint != fingerprint:
            return True
        return entry.failures <= self._options.max_num_load_retries and now >= entry.retry_at

    def _aspired(self, model: _Model, present: dict[int, tuple], now: float) -> set[int]:
        """The versions the policy wants served, leaving out those that gave up on these very files
        (and those waiting for their next retry)."""
        if model.removed:
            return set()
        usable = {v for v, fp in present.items() if self._loadable(model.versions.get(v), fp, now)}
        policy = model.config.model_version_policy
        choice = policy.WhichOneof("policy_choice")
        if choice == "all":
            return usable
        if choice == "specific":
            return usable & set(policy.specific.versions)
        n = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions > 0 else 1
        return set(sorted(usable)[-n:])

    def _poll_model(self, model: _Model) -> None:
        present = {} if model.removed else self._scan(model.config.base_path)
        now = time.monotonic()
        for version in sorted(self._aspired(model, present, now), reverse=True):
            entry = model.versions.get(version)
            if entry is None or entry.state == State.END:
                self._load(model, version, present[version])
        aspired = self._aspired(model, present, time.monotonic())
        # Only once the aspired versions are settled are the others taken out: availability first.
        for entry in list(model.versions.values()):
            if entry.state == State.AVAILABLE and entry.version not in aspired:
                self._unload(model, entry)
        if model.removed:
            with self._cond:
                if self._models.get(model.config.name) is model and model.latest_available() is None:
                    del self._models[model.config.name]

    def _set(self, model: _Model, entry: _Version, **changes) -> None:
        with self._cond:
            for k, v in changes.items():
                setattr(entry, k, v)
            self._cond.notify_all()
        if self._metrics and "state" in changes:
            self._metrics.set_available(model.config.name, entry.version, entry.state == State.AVAILABLE)
        self._on_change()

    def _batching_for(self, path: str) -> BatchingOptions | None:
        """The global batching options, or the version's own batching_params.pbtxt when per-model
        batching is on (its thread count stays the global one, as TF Serving's shared pool)."""
        batching = self._options.batching
        if batching is None or not self._options.per_model_batching:
            return batching
        own = os.path.join(path, PER_MODEL_BATCHING_FILE)
        if not tf.io.gfile.exists(own):
            return batching
        options = read_batching_parameters_file(own)
        return BatchingOptions(options.max_batch_size, options.batch_timeout_micros, options.max_enqueued_batches,
                               batching.num_batch_threads, options.allowed_batch_sizes)

    def _load(self, model: _Model, version: int, fingerprint: tuple) -> None:
        name = model.config.name
        path = os.path.join(model.config.base_path, str(version))
        with self._cond:
            entry = model.versions.setdefault(version, _Version(version))
            failures = entry.failures if entry.fingerprint == fingerprint else 0
        self._set(model, entry, state=State.LOADING, error=None, fingerprint=fingerprint, failures=failures)
        log.info("loading servable version {name: %s version: %d} from %s", name, version, path)
        servable, start, loaded_at = None, time.monotonic(), None
        try:
            servable = Servable(name, version, path, self._batching_for(path), self._options.saved_model_tags)
            loaded_at = time.monotonic()
            if self._metrics:
                self._metrics.record_load(path, True, loaded_at - start)
            warmed = servable.warmup(self._options.warmup_iterations) if self._options.enable_model_warmup else 0
            if self._metrics and warmed:
                self._metrics.record_warmup(path, True, time.monotonic() - loaded_at)
        except Exception as err:  # any failure of a version is reported, never raised into the poll loop
            error = ServingError.from_exception(err)
            if error.code == grpc.StatusCode.OK:
                error = ServingError(grpc.StatusCode.UNKNOWN, str(err))
            if self._metrics:
                if loaded_at is None:
                    self._metrics.record_load(path, False, time.monotonic() - start)
                else:
                    self._metrics.record_warmup(path, False, time.monotonic() - loaded_at)
            failures += 1
            retries_left = self._options.max_num_load_retries - failures + 1
            log.error("servable version {name: %s version: %d} failed to load (%s): %s", name, version,
                      f"retrying in {self._options.load_retry_interval_seconds:g} s, {retries_left} retries left"
                      if retries_left > 0 else "no retries left", error.message)
            if servable is not None:
                servable.close()
            self._set(model, entry, state=State.END, error=error, servable=None, failures=failures,
                      retry_at=time.monotonic() + max(0.0, self._options.load_retry_interval_seconds))
            return
        log.info("servable version {name: %s version: %d} is AVAILABLE (%d warmup requests)", name, version, warmed)
        self._set(model, entry, state=State.AVAILABLE, servable=servable, failures=0)

    def _unload(self, model: _Model, entry: _Version) -> None:
        self._set(model, entry, state=State.UNLOADING)
        with self._cond:
            self._cond.wait_for(lambda: entry.inflight == 0)
            servable, entry.servable = entry.servable, None
        if servable is not None:
            servable.close()
        log.info("unloaded servable version {name: %s version: %d}", model.config.name, entry.version)
        self._set(model, entry, state=State.END)
