"""`radflow route`: answer each new image of a PACS through a TF Serving endpoint, and store the answer back as DICOM.

    radflow route --pacs http://orthanc:8042/dicom-web --serving serving:8500 --poll 10s \\
        --model_base_path /models/radflow --state route-state

The loop:

1. **discover**: every `poll_s`, a QIDO-RS instance search (one per Modality of the filter, StudyDate
   from the persisted cursor `since` on, within the last `lookback_days`) lists candidates; those
   not in the ledger are added as pending (SOP classes and attributes the QIDO answer already shows
   are filtered out and recorded as skipped), while fewer than `max_pending` are pending;
2. **dispatch**: due pending rows go to a bounded queue of `queue_size`, read by `workers` threads;
   nothing is dispatched while the serving endpoint is down;
3. **answer** one instance: WADO-RS retrieves it as stored; its own header must pass the filter
   (else skipped); results already in the study (their UIDs are derived from the source and
   the model name) are not made again; `radflow.dicom.to_png` renders it exactly as ingest and
   `radflow predict` do; the served model answers over TF Serving's gRPC API; the SR and the
   Grad-CAM Secondary Capture (of the answering version's model.keras) are created with highdicom
   and stored with one STOW-RS request, whose answer must list both;
4. **record**: the ledger marks it done, with the version and the decision.

Guarantees: an instance is answered at most once per model (derived UIDs, checked before storing),
and at least once (a crash leaves it pending; the next start answers it). A try that fails
(undecodable, refused or failed by the model server, refused by the PACS) is retried after
`retry_backoff_s`, doubled each time, and after `max_attempts` tries recorded as failed and logged
as an error, never dropped. When the serving endpoint (or the PACS) does not answer at all, no try
is counted: the router waits, probing with backoff, and the pending instances, including those
discovered meanwhile, are answered when it is back. The source instances are only ever read.
The log names instances by UID; no header value of the image (names, ids, dates) is ever logged:
error texts are scrubbed of them, and pydicom's and highdicom's warnings (which quote values) are
silenced for the process.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, field

import grpc
import numpy as np
import pydicom

from radflow import dicom
from radflow.pacs import results
from radflow.pacs.connection import PacsConfig, PacsHTTPError, PacsUnavailable, call, open_client, retrieve_as_stored
from radflow.pacs.ledger import DONE, FAILED, PENDING, Ledger

log = logging.getLogger(__name__)

CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_FOR_PRESENTATION, DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1.1"
# The images a chest radiograph classifier is for. SOPClassUID keeps the router's own results (SR,
# Secondary Capture) and every other non-radiograph object out, whatever their Modality says.
DEFAULT_FILTER = (("SOPClassUID", (CR_IMAGE, DX_FOR_PRESENTATION, DX_FOR_PROCESSING)),
                  ("Modality", ("CR", "DX")), ("BodyPartExamined", ("CHEST",)))
OUTAGE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
LEDGER_FILE = "ledger.sqlite"
_TAGS = {"SOPInstanceUID": "00080018", "StudyInstanceUID": "0020000D", "SeriesInstanceUID": "0020000E",
         "SOPClassUID": "00080016", "Modality": "00080060", "BodyPartExamined": "00180015", "ViewPosition": "00185101"}
_PHI_VRS = ("PN", "LO", "SH", "DA", "DT", "TM", "LT", "ST", "UT", "AS")


@dataclass(frozen=True)
class RouteConfig:
    """Options of `radflow route`.

    Raises:
        ValueError: a field out of range, named.
    """

    pacs: PacsConfig
    serving: str  # HOST:PORT of the TF Serving (or radflow serve) gRPC port
    model_name: str = "radflow"
    model_base_path: str = ""  # where each version's radflow_lineage/model.keras is (Grad-CAM); "" = no SC
    state_dir: str = "route-state"  # the ledger (and so the cursor) lives here
    poll_s: float = 10.0  # seconds between QIDO-RS polls
    # Attribute -> accepted values; an instance is answered when each attribute's value (case-insensitive)
    # is one of its values. Checked on the QIDO answer where it has the attribute, always on the instance.
    filter: tuple[tuple[str, tuple[str, ...]], ...] = DEFAULT_FILTER
    since: str = ""  # first StudyDate (YYYYMMDD) answered; "" = the day of the first start (kept in the ledger)
    # Each poll asks for StudyDate >= max(since, today - lookback_days), so a poll's cost does not grow with the
    # router's age; older studies arriving now (priors, migrations) are left alone. 0 = no limit.
    lookback_days: int = 14
    workers: int = 2  # instances answered at once
    queue_size: int = 8  # dispatched instances waiting for a worker
    max_pending: int = 1000  # pending instances in the ledger; further ones wait, unrecorded, in the PACS
    max_attempts: int = 5  # failed tries before an instance is recorded as failed
    retry_backoff_s: float = 30.0  # wait after the first failed try, doubled after each next one
    max_backoff_s: float = 3600.0  # the longest wait between tries
    outage_probe_s: float = 30.0  # the longest wait between checks of a serving endpoint or PACS that is down
    serving_timeout_s: float = 30.0  # per gRPC call
    serving_ca_cert: str = ""  # PEM of the CA of a TLS serving endpoint; "" = plaintext gRPC
    disclaimer: str = results.DEFAULT_DISCLAIMER  # in every SR and burned into every SC
    display_size: int = 512  # side of the Secondary Capture's image
    keras_tolerance: float = 0.01  # largest score gap between model.keras and the server before the SC is withheld

    def __post_init__(self):
        for name in ("poll_s", "retry_backoff_s", "max_backoff_s", "outage_probe_s", "serving_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"route {name} must be > 0, got {getattr(self, name)}")
        if self.lookback_days < 0:
            raise ValueError(f"route lookback_days must be >= 0 (0: no limit), got {self.lookback_days}")
        for name in ("workers", "queue_size", "max_pending", "max_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"route {name} must be at least 1, got {getattr(self, name)}")
        if self.since and not (len(self.since) == 8 and self.since.isdigit()):
            raise ValueError(f"route since must be a StudyDate, YYYYMMDD, got {self.since!r}")
        if ":" not in self.serving:
            raise ValueError(f"route serving must be HOST:PORT of the gRPC port, got {self.serving!r}")
        unknown = [k for k, _ in self.filter if k not in _TAGS]
        if unknown:
            raise ValueError(f"route filter: attributes {unknown} are not among {sorted(_TAGS)}")
        if not self.display_size >= 128:
            raise ValueError(f"route display_size must be at least 128, got {self.display_size}")


def parse_seconds(text: str) -> float:
    """"10", "10s", "2m" or "1h" as seconds.

    Raises:
        ValueError: anything else, naming it.
    """
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1)
    try:
        return float(number) * unit
    except ValueError:
        raise ValueError(f"route: {text!r} is not a duration such as 10, 10s, 2m or 1h") from None


def parse_filter(items: list[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """`KEY=V1,V2` strings as a filter; [] gives DEFAULT_FILTER, "KEY=" drops KEY from it.

    Raises:
        ValueError: an item without "=", naming it.
    """
    chosen = dict(DEFAULT_FILTER)
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"route filter {item!r}: expected KEY=VALUE[,VALUE...]")
        accepted = tuple(v.strip() for v in values.split(",") if v.strip())
        if accepted:
            chosen[key.strip()] = accepted
        else:
            chosen.pop(key.strip(), None)
    return tuple(chosen.items())


def selection_problem(values: dict[str, str], rules, partial: bool) -> str:
    """Why an instance is not for this model, or "" when it is.

    Args:
        values: attribute -> value ("" or missing when absent).
        rules: the filter.
        partial: True for a QIDO answer, which may omit attributes: only the attributes present are checked.
    """
    for key, accepted in rules:
        value = str(values.get(key) or "").strip()
        if not value and partial:
            continue
        if value.upper() not in {a.upper() for a in accepted}:
            return f"{key} is {value or 'missing'}, not one of {', '.join(accepted)}"
    return ""


def redact(text: str, ds: pydicom.Dataset | None) -> str:
    """`text` with every identifying header value of `ds` replaced, so that error texts can be logged."""
    if ds is None:
        return text
    for element in ds.iterall():
        if element.VR in _PHI_VRS and element.keyword not in dicom.ALLOWED_HEADER_FIELDS:
            many = isinstance(element.value, (list, pydicom.multival.MultiValue))
            for value in element.value if many else [element.value]:
                value = str(value).strip()
                if len(value) >= 3:
                    text = text.replace(value, "<redacted>")
    return text


class _Outage(Exception):
    """The serving endpoint or the PACS gave no answer: wait, count no try."""


class _Failure(Exception):
    """One try of one instance failed; counted, retried, then recorded as failed.

    Args:
        message: why (scrubbed of `dataset`'s header values before it is logged or recorded).
        dataset: the source's header, when it was read.
    """

    def __init__(self, message: str, dataset: pydicom.Dataset | None = None):
        super().__init__(message)
        self.dataset = dataset


@dataclass
class _Stats:
    answered: int = 0
    failed_tries: int = 0
    started: float = field(default_factory=time.monotonic)


class Router:
    """Discovers, dispatches and answers; `run` until `stop` (or SIGTERM/SIGINT via `route`).

    Args:
        config: see RouteConfig.
    """

    def __init__(self, config: RouteConfig):
        from radflow.serving.client import ServingClient

        self.config = config
        results.silence_header_warnings()
        os.makedirs(config.state_dir, exist_ok=True)
        self.ledger = Ledger(os.path.join(config.state_dir, LEDGER_FILE))
        self.since = self.ledger.meta("since", config.since or time.strftime("%Y%m%d"))
        self._clients = threading.local()  # one DICOMweb session per thread: requests' sessions are not thread-safe
        open_client(config.pacs)  # reads the credentials now, so a bad file stops the start
        self.serving = ServingClient(config.serving, config.model_name, timeout=config.serving_timeout_s,
                                     ca_cert=config.serving_ca_cert or None)
        self._models = _model_service(config)
        self._explainer = _Explainer(config) if config.model_base_path else None
        self._queue: queue.Queue = queue.Queue(maxsize=config.queue_size)
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._up = threading.Event()  # the serving endpoint and the PACS answer
        self._outage_since: float | None = None
        self.stats = _Stats()

    @property
    def pacs(self):
        """This thread's DICOMweb client."""
        client = getattr(self._clients, "client", None)
        if client is None:
            client = self._clients.client = open_client(self.config.pacs)
        return client

    # -- the loop ----------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def run(self, once: bool = False) -> None:
        """Polls, dispatches and answers until `stop()`.

        Args:
            once: return after one poll once nothing pending is left to try now (for cron jobs and benchmarks).
        """
        workers = [threading.Thread(target=self._work, name=f"route-{i}", daemon=True)
                   for i in range(self.config.workers)]
        for w in workers:
            w.start()
        log.info("route: PACS %s -> model %r at %s; answering StudyDate >= %s; filter %s; ledger %s; %s",
                 self.config.pacs.host, self.config.model_name, self.config.serving, self.since,
                 dict(self.config.filter), self.ledger.path,
                 "Grad-CAM from " + self.config.model_base_path if self._explainer else "no Grad-CAM (no SC)")
        next_poll, next_probe, probe_wait = 0.0, 0.0, 1.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if not self._up.is_set() and now >= next_probe:
                    if self._probe():
                        probe_wait = 1.0
                    else:
                        next_probe = now + probe_wait
                        probe_wait = min(probe_wait * 2, self.config.outage_probe_s)
                if now >= next_poll:  # also while the model server is down: arrivals are recorded, within bounds
                    next_poll = now + self.config.poll_s
                    try:
                        self.discover()
                    except PacsUnavailable as err:
                        self._pause(str(err))
                    except PacsHTTPError as err:
                        log.error("route: polling the PACS failed: %s", err)
                self._dispatch()
                if once and self._up.is_set() and self._idle():
                    break
                self._stop.wait(0.2)
        finally:
            self._stop.set()
            for w in workers:
                w.join(timeout=self.config.serving_timeout_s + self.config.pacs.timeout_s)
            self._summary()

    def _idle(self) -> bool:
        with self._lock:
            busy = bool(self._in_flight)
        return not busy and self._queue.empty() and not self.ledger.due(1, set())

    def _summary(self) -> None:
        seconds = time.monotonic() - self.stats.started
        log.info("route: answered %d instances in %.1f s (%.2f/s); %d failed tries; ledger %s",
                 self.stats.answered, seconds, self.stats.answered / max(seconds, 1e-9), self.stats.failed_tries,
                 self.ledger.counts())

    def _probe(self) -> bool:
        """Whether the serving endpoint has the model and the PACS answers; logs each change of state."""
        try:
            versions = self._serving_status()
            if not versions:
                raise _Outage(f"model {self.config.model_name!r} has no AVAILABLE version at {self.config.serving}")
            call(lambda: self.pacs.search_for_studies(limit=1), "a probe", self.config.pacs)
        except (grpc.RpcError, PacsUnavailable, PacsHTTPError, _Outage) as err:
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                what = f"{err.code().name}: {err.details()}" if isinstance(err, grpc.RpcError) else str(err)
                log.warning("route: waiting for the serving endpoint %s and the PACS (%s); %d instances pending",
                            self.config.serving, what, self.ledger.counts()[PENDING])
            return False
        if self._outage_since is not None:
            log.info("route: serving endpoint and PACS answer again after %.0f s; %d instances pending",
                     time.monotonic() - self._outage_since, self.ledger.counts()[PENDING])
        self._outage_since = None
        self._up.set()
        return True

    def _serving_status(self) -> list[int]:
        """The model's AVAILABLE versions, asked of the server itself (TF Serving's ModelService)."""
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.config.model_name
        reply = self._models.GetModelStatus(request, timeout=self.config.serving_timeout_s)
        available = get_model_status_pb2.ModelVersionStatus.State.AVAILABLE
        return [s.version for s in reply.model_version_status if s.state == available]

    def discover(self) -> int:
        """One QIDO-RS poll: unseen instances become pending (up to max_pending) or skipped.

        Returns:
            How many were added as pending.
        """
        rules = self.config.filter
        modalities = dict(rules).get("Modality") or ("",)
        found: dict[str, tuple[str, str, str]] = {}
        skipped = []
        fields = sorted({k for k, _ in rules} | {"SeriesInstanceUID"})
        start = self.since
        if self.config.lookback_days:
            start = max(start, time.strftime("%Y%m%d", time.localtime(time.time() - 86400 * self.config.lookback_days)))
        for modality in modalities:
            filters = {"StudyDate": f"{start}-", **({"Modality": modality} if modality else {})}
            offset = 0
            while True:
                page = call(lambda at=offset, f=filters: self.pacs.search_for_instances(
                    search_filters=f, fields=fields, limit=500, offset=at), "the QIDO-RS poll", self.config.pacs)
                for item in page:
                    values = {k: _first(item, tag) for k, tag in _TAGS.items()}
                    key = (values["SOPInstanceUID"], values["StudyInstanceUID"], values["SeriesInstanceUID"])
                    why = selection_problem(values, rules, partial=True)
                    if why:
                        skipped.append((*key, why))
                    else:
                        found[key[0]] = key
                if len(page) < 500:
                    break
                offset += len(page)
        known = self.ledger.known(list(found) + [s[0] for s in skipped])
        self.ledger.skip([s for s in skipped if s[0] not in known])
        new = [v for k, v in sorted(found.items()) if k not in known]
        added = self.ledger.add_new(new, self.config.max_pending)
        if new:
            log.info("route: %d new instances, %d queued as pending%s", len(new), added,
                     f" ({len(new) - added} wait in the PACS: max_pending {self.config.max_pending} reached)"
                     if added < len(new) else "")
        return added

    def _dispatch(self) -> None:
        if not self._up.is_set():
            return
        with self._lock:
            exclude = set(self._in_flight)
        room = self.config.queue_size - self._queue.qsize()
        for entry in self.ledger.due(room, exclude) if room > 0 else []:
            with self._lock:
                self._in_flight.add(entry.sop_uid)
            self._queue.put(entry)

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                entry = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._try(entry)
            finally:
                with self._lock:
                    self._in_flight.discard(entry.sop_uid)

    def _try(self, entry) -> None:
        """One try of one instance, recorded in the ledger whatever happens."""
        if not self._up.is_set():
            return  # an outage began after it was queued: it stays pending, untried
        try:
            self.answer(entry)
        except _Outage as err:
            self._pause(str(err))
        except _Failure as err:
            self._failed(entry, str(err), err.dataset)
        except Exception as err:  # noqa: BLE001 - any other error is still one failed try, never a lost instance
            self._failed(entry, f"{type(err).__name__}: {err}", None)

    def _pause(self, why: str) -> None:
        if self._up.is_set():
            self._up.clear()
            log.warning("route: %s; pausing until it answers", why)

    def _failed(self, entry, message: str, ds: pydicom.Dataset | None) -> None:
        with self._lock:
            self.stats.failed_tries += 1
        message = redact(message, ds)[:500]
        state, attempts = self.ledger.failed_attempt(entry.sop_uid, message, self.config.max_attempts,
                                                     self.config.retry_backoff_s, self.config.max_backoff_s)
        if state == FAILED:
            log.error("route: instance %s of study %s FAILED after %d tries, not answered: %s", entry.sop_uid,
                      entry.study_uid, attempts, message)
        else:
            log.warning("route: instance %s of study %s: try %d of %d failed (%s); retrying later", entry.sop_uid,
                        entry.study_uid, attempts, self.config.max_attempts, message)

    # -- one instance ------------------------------------------------------------------------------

    def _pacs(self, fn, what: str):
        try:
            return call(fn, what, self.config.pacs)
        except PacsUnavailable as err:
            raise _Outage(str(err)) from err
        except PacsHTTPError as err:
            raise _Failure(str(err)) from err

    def answer(self, entry) -> None:
        """Answers one pending instance and records it done (or skipped).

        Raises:
            _Outage: the serving endpoint or the PACS did not answer (no try is counted).
            _Failure: this try failed (counted).
        """
        url = f"{self.config.pacs.url}/studies/{entry.study_uid}/series/{entry.series_uid}/instances/{entry.sop_uid}"
        parts = self._pacs(lambda: retrieve_as_stored(self.pacs, url), f"WADO-RS of {entry.sop_uid}")
        if len(parts) != 1:
            raise _Failure(f"WADO-RS of {entry.sop_uid} returned {len(parts)} parts, not one")
        data = parts[0]
        try:
            source = dicom.read_dataset(data, stop_before_pixels=True)
        except dicom.DicomError as err:
            raise _Failure(f"undecodable: {err}") from err
        values = {k: str(source.get(k, "")) for k in _TAGS}
        why = selection_problem(values, self.config.filter, partial=False)
        if why:
            self.ledger.mark_skipped(entry.sop_uid, why)
            log.info("route: instance %s of study %s is not for this model: %s", entry.sop_uid, entry.study_uid, why)
            return
        try:
            self._answer(entry, data, source)
        except _Outage:
            raise
        except _Failure as err:
            raise _Failure(str(err), source) from err
        except Exception as err:  # noqa: BLE001 - a failed try, with the header to scrub its message of
            raise _Failure(f"{type(err).__name__}: {err}", source) from err

    def _stored(self, study_uid: str, uids: set[str]) -> set[str]:
        """Which of these result UIDs the study already holds."""
        found = self._pacs(lambda: self.pacs.search_for_instances(
            study_instance_uid=study_uid, fields=["SOPInstanceUID"]), f"the instances of study {study_uid}")
        return {_first(item, _TAGS["SOPInstanceUID"]) for item in found} & uids

    def _answer(self, entry, data: bytes, source: pydicom.Dataset) -> None:
        model = self.config.model_name
        sr_uid, sc_uid = (results.result_uid(model, entry.sop_uid, kind) for kind in (results.SR, results.SC))
        wanted = {sr_uid} | ({sc_uid} if self._explainer else set())
        present = self._stored(entry.study_uid, wanted)
        png = None
        if sr_uid in present:  # a try cut off after storing: its own SR says what the answer was
            answer = self._stored_answer(entry, sr_uid)
        else:
            try:
                png = dicom.to_png(data)
            except dicom.DicomError as err:
                raise _Failure(f"undecodable: {err}") from err
            answer = self._predict(png)
        objects, note = [], "results were already stored" if present == wanted else ""
        if sr_uid not in present:
            objects.append(results.make_sr(source, answer, self.config.disclaimer))
        if self._explainer and sc_uid not in present:
            if png is None:
                png = dicom.to_png(data)
            overlay, note = self._explainer.overlay(png, answer)
            if overlay is not None:
                objects.append(results.make_sc(source, overlay, answer, self.config.disclaimer))
        if objects:
            self._store(entry.study_uid, objects)
        stored_sc = sc_uid if (sc_uid in present or any(o.SOPInstanceUID == sc_uid for o in objects)) else None
        if stored_sc is None and self._explainer and note:
            log.warning("route: instance %s: SR stored without a Secondary Capture: %s", entry.sop_uid, note)
        self.ledger.done(entry.sop_uid, answer.version, answer.decision, sr_uid, stored_sc, note)
        with self._lock:
            self.stats.answered += 1
        log.info("route: instance %s of study %s answered by %s v%d: %s (threshold %.3f)", entry.sop_uid,
                 entry.study_uid, model, answer.version, answer.decision, answer.threshold)

    def _predict(self, png: bytes) -> results.Answer:
        try:
            p = self.serving.predict([png])[0]
        except grpc.RpcError as err:
            if err.code() in OUTAGE_CODES:
                raise _Outage(f"serving endpoint {self.config.serving} is {err.code().name}") from err
            raise _Failure(f"the model server answered {err.code().name}: {err.details()}") from err
        if not p.version:
            raise _Failure("the model server's answer names no version; the SR must state it")
        return results.Answer(self.config.model_name, int(p.version), p.scores, p.label, p.threshold, p.decision)

    def _stored_answer(self, entry, sr_uid: str) -> results.Answer:
        url = f"{self.config.pacs.url}/studies/{entry.study_uid}/series/" \
              f"{results.result_series_uid(self.config.model_name, entry.study_uid, results.SR)}/instances/{sr_uid}"
        parts = self._pacs(lambda: retrieve_as_stored(self.pacs, url), f"WADO-RS of the stored SR {sr_uid}")
        stored = results.read_sr(parts[0])
        return results.Answer(stored.model, stored.version, stored.scores, stored.label, stored.threshold,
                              stored.decision)

    def _store(self, study_uid: str, objects: list) -> None:
        """STOW-RS of the results into the study; the PACS's answer must list each as stored."""
        reply = self._pacs(lambda: self.pacs.store_instances(objects, study_instance_uid=study_uid),
                           f"STOW-RS into study {study_uid}")
        stored = {str(i.ReferencedSOPInstanceUID) for i in reply.get("ReferencedSOPSequence", [])}
        failed = [f"{i.ReferencedSOPInstanceUID} (failure reason {i.get('FailureReason', '?')})"
                  for i in reply.get("FailedSOPSequence", [])]
        missing = {str(o.SOPInstanceUID) for o in objects} - stored
        if failed or missing:
            raise _Failure(f"the PACS did not store {', '.join(failed) or ', '.join(sorted(missing))}")


def _model_service(config: RouteConfig):
    """A ModelService stub of the serving endpoint, for its model status (TLS as for predictions)."""
    from tensorflow_serving.apis import model_service_pb2_grpc

    if config.serving_ca_cert:
        with open(config.serving_ca_cert, "rb") as f:
            channel = grpc.secure_channel(config.serving, grpc.ssl_channel_credentials(f.read()))
    else:
        channel = grpc.insecure_channel(config.serving)
    return model_service_pb2_grpc.ModelServiceStub(channel)


def _first(item: dict, tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


class _Explainer:
    """The Grad-CAM overlay of an answer, from the answering version's model.keras (as the review page)."""

    def __init__(self, config: RouteConfig):
        from radflow.serving.review.app import ExplainModels

        self.config = config
        self.models = ExplainModels(config.model_base_path)

    def overlay(self, png: bytes, answer: results.Answer) -> tuple[np.ndarray | None, str]:
        """(uint8 RGB of the model's view with the heat map of the decided class, "") or (None, why not)."""
        import tensorflow as tf

        from radflow.explain import grad_cam, overlay
        from radflow.preprocessing import decode_image, preprocess_encoded, standardize

        loaded = self.models.get(answer.version)
        if loaded is None:
            return None, f"version {answer.version} has no model.keras under {self.config.model_base_path}"
        model, layer = loaded
        _, size, _, channels = model.input_shape
        x = preprocess_encoded(tf.constant(png), size, channels).numpy()
        keras_scores = np.asarray(model(x[None], training=False), np.float32)[0]
        if keras_scores.shape[-1] == 1:
            keras_scores = np.array([1.0 - keras_scores[0], keras_scores[0]], np.float32)
        served = np.array(list(answer.scores.values()), np.float32)
        gap = float(np.abs(keras_scores - served).max()) if keras_scores.shape == served.shape else float("inf")
        if gap > self.config.keras_tolerance:
            return None, (f"model.keras of version {answer.version} disagrees with the server (score gap "
                          f"{gap:.3f}): its heat map would not explain the served answer")
        heat = grad_cam(model, x, list(answer.scores).index(answer.decision), layer)
        pixels = decode_image(tf.constant(png), channels=3)
        side = self.config.display_size
        view = standardize(pixels, side).numpy().astype(np.float32) / 255.0
        heat_big = tf.image.resize(heat[..., None], (side, side), method="bilinear")[..., 0].numpy()
        return np.round(overlay(view, heat_big, alpha=0.4) * 255).astype(np.uint8), ""


def route(config: RouteConfig, once: bool = False) -> Router:
    """Runs the router until SIGTERM or SIGINT (or, with `once`, until nothing is left to try now).

    Returns:
        The stopped router (its ledger and stats).
    """
    for chatty in ("highdicom", "dicomweb_client"):  # a line per module copied and per request, UIDs and all
        logging.getLogger(chatty).setLevel(logging.WARNING)
    router = Router(config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: router.stop())
    router.run(once=once)
    return router


def existing_ledger(state_dir: str) -> Ledger:
    """The ledger of a router's state folder, which must exist (status and requeue never create one).

    Raises:
        FileNotFoundError: `state_dir` holds no ledger.
    """
    path = os.path.join(state_dir, LEDGER_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no router ledger at {path}; pass the --state folder the router runs with")
    return Ledger(path)


def describe(state_dir: str) -> list[str]:
    """Lines for `radflow route --status`: the counts, then every failed instance and why, then the last answers.

    Raises:
        FileNotFoundError: `state_dir` holds no ledger.
    """
    ledger = existing_ledger(state_dir)
    try:
        lines = [f"ledger {ledger.path}: {ledger.counts()}; answering StudyDate >= {ledger.get_meta('since')}"]
        for e in ledger.entries(FAILED):
            lines.append(f"failed: instance {e.sop_uid} of study {e.study_uid} after {e.attempts} tries: {e.error}")
        for e in ledger.entries(DONE)[-5:]:
            lines.append(f"done: instance {e.sop_uid}: v{e.version} {e.decision} (SR {e.sr_uid}, SC {e.sc_uid or '-'})")
        return lines
    finally:
        ledger.close()

