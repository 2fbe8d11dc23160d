"""Prometheus metrics under TF Serving's names, and the ones an operator of a clinical model needs.

TF Serving exports TensorFlow's monitoring registry with each metric's path turned into a name
(`/tensorflow/serving/request_count` -> `:tensorflow:serving:request_count`). The same names and
labels are used here, so dashboards and alerts written for tensorflow_model_server work unchanged:

    :tensorflow:serving:request_count{model_name,status}             counter (status: OK, INVALID_ARGUMENT, ...)
    :tensorflow:serving:request_latency{model_name,API,entrypoint}   histogram, microseconds, successful requests
    :tensorflow:serving:model_warmup_latency{model_path,status}      histogram, microseconds
    :tensorflow:cc:saved_model:load_attempt_count{model_path,status} counter (status: success, fail)
    :tensorflow:cc:saved_model:load_latency{model_path}              counter, microseconds of successful loads

radflow's own, which TF Serving does not have:

    :radflow:serving:model_version_available{model_name,version}     gauge, 1 while the version serves
    :radflow:serving:request_bytes / response_bytes{model_name,API,entrypoint}   histograms
    :radflow:serving:prediction_count{model_name,version,class}      counter of decisions per class
    :radflow:serving:score{model_name,class}                          histogram of each class's score
    :radflow:serving:refused_request_count{model_name,reason}        counter, refused before running

prometheus_client keeps the values and writes the text format; TF Serving's counters carry no
`_total` suffix and no `_created` series, so the exported families are renamed back to its names
(typed `untyped`, since the text format ties `counter` to `_total`).
"""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

DEFAULT_PATH = "/monitoring/prometheus/metrics"  # PrometheusExporter::kPrometheusPath
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# TF Serving's latency buckets: Buckets::Exponential(10, 1.8, 33), microseconds, up to ~20 minutes.
LATENCY_BUCKETS_US = tuple(10 * 1.8**i for i in range(33)) + (float("inf"),)
SIZE_BUCKETS = tuple(2.0**i for i in range(6, 31, 2)) + (float("inf"),)  # 64 B .. 1 GiB
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21)) + (float("inf"),)


class _TFServingNames(Collector):
    """Re-exports a registry with counters under their bare names and without `_created` series."""

    def __init__(self, inner: CollectorRegistry):
        self._inner = inner

    def collect(self):
        for family in self._inner.collect():
            typ = "unknown" if family.type == "counter" else family.type
            out = Metric(family.name, family.documentation, typ)
            for s in family.samples:
                if s.name.endswith("_created"):
                    continue
                name = family.name if family.type == "counter" and s.name == family.name + "_total" else s.name
                out.add_sample(name, s.labels, s.value, s.timestamp, s.exemplar)
            yield out


class ServingMetrics:
    """The server's metrics, in a registry of its own (several servers may share a process)."""

    def __init__(self):
        r = CollectorRegistry(auto_describe=True)
        self.request_count = Counter(":tensorflow:serving:request_count", "The total number of requests.",
                                     ["model_name", "status"], registry=r)
        self.request_latency = Histogram(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ["model_name", "API", "entrypoint"], buckets=LATENCY_BUCKETS_US, registry=r)
        self.warmup_latency = Histogram(
            ":tensorflow:serving:model_warmup_latency",
            "Distribution of wall time (in microseconds) for warming up the model.",
            ["model_path", "status"], buckets=LATENCY_BUCKETS_US, registry=r)
        self.load_attempt_count = Counter(":tensorflow:cc:saved_model:load_attempt_count",
                                          "The number of times a SavedModel was successfully loaded.",
                                          ["model_path", "status"], registry=r)
        self.load_latency = Counter(":tensorflow:cc:saved_model:load_latency",
                                    "Latency in microseconds for SavedModels that were successfully loaded.",
                                    ["model_path"], registry=r)
        self.version_available = Gauge(":radflow:serving:model_version_available",
                                       "1 while the model version is AVAILABLE (serving), else 0.",
                                       ["model_name", "version"], registry=r)
        self.request_bytes = Histogram(":radflow:serving:request_bytes", "Size of request bodies in bytes.",
                                       ["model_name", "API", "entrypoint"], buckets=SIZE_BUCKETS, registry=r)
        self.response_bytes = Histogram(":radflow:serving:response_bytes", "Size of response bodies in bytes.",
                                        ["model_name", "API", "entrypoint"], buckets=SIZE_BUCKETS, registry=r)
        self.prediction_count = Counter(":radflow:serving:prediction_count",
                                        "Decisions per class at the model's operating threshold.",
                                        ["model_name", "version", "class"], registry=r)
        self.score = Histogram(":radflow:serving:score", "Distribution of each class's predicted score.",
                               ["model_name", "class"], buckets=SCORE_BUCKETS, registry=r)
        self.refused_count = Counter(":radflow:serving:refused_request_count",
                                     "Requests refused before the model ran, by reason.",
                                     ["model_name", "reason"], registry=r)
        self._registry = CollectorRegistry()
        self._registry.register(_TFServingNames(r))

    def exposition(self) -> bytes:
        """The Prometheus text page."""
        return generate_latest(self._registry)

    def record_request(self, model: str, api: str, entrypoint: str, status: str, seconds: float,
                       request_bytes: int, response_bytes: int, reason: str = "") -> None:
        """Counts one request as TF Serving does: every request by status, latency of the successful ones."""
        self.request_count.labels(model, status).inc()
        if status == "OK":
            self.request_latency.labels(model, api, entrypoint).observe(seconds * 1e6)
        self.request_bytes.labels(model, api, entrypoint).observe(request_bytes)
        self.response_bytes.labels(model, api, entrypoint).observe(response_bytes)
        if reason:
            self.refused_count.labels(model, reason).inc()

    def record_outputs(self, model: str, version: int, outputs: dict[str, np.ndarray]) -> None:
        """Counts decisions and scores when the outputs follow the radflow contract (scores, classes,
        and threshold for binary models); other models' outputs are not interpreted."""
        scores, classes = outputs.get("scores"), outputs.get("classes")
        if scores is None or classes is None or scores.ndim != 2 or scores.shape != classes.shape:
            return
        threshold = outputs.get("threshold")
        thresholds = np.asarray(threshold).reshape(-1) if threshold is not None else None
        for i, (row, names) in enumerate(zip(scores, classes, strict=True)):
            labels = [c.decode() if isinstance(c, bytes) else str(c) for c in names]
            for label, value in zip(labels, row, strict=True):
                self.score.labels(model, label).observe(float(value))
            if len(labels) == 2 and thresholds is not None and len(thresholds) == len(scores):
                decided = labels[1] if row[1] >= thresholds[i] else labels[0]
            else:
                decided = labels[int(np.argmax(row))]
            self.prediction_count.labels(model, str(version), decided).inc()

    def set_available(self, model: str, version: int, available: bool) -> None:
        self.version_available.labels(model, str(version)).set(1 if available else 0)

    def record_load(self, path: str, ok: bool, seconds: float) -> None:
        self.load_attempt_count.labels(path, "success" if ok else "fail").inc()
        if ok:
            self.load_latency.labels(path).inc(seconds * 1e6)

    def record_warmup(self, path: str, ok: bool, seconds: float) -> None:
        self.warmup_latency.labels(path, "OK" if ok else "FAILED").observe(seconds * 1e6)
