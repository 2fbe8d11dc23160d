"""Ingest from a PACS over DICOMweb: a QIDO-RS query selects the studies, WADO-RS retrieves the instances.

The source is the DICOMweb root with `dicomweb+` in front and the QIDO-RS filters as its query:

    radflow ingest 'dicomweb+http://pacs:8042/dicom-web?Modality=CR&StudyDate=20260101-20261130' OUT \\
        --labels labels.csv

- The filters go to the study search as they are, except `Modality`, which a study search calls
  `ModalitiesInStudy`; each matched study's instances are then listed, keeping only that modality.
- `labels.csv` gives a label per study, by `StudyInstanceUID` or `AccessionNumber` (teams get labels
  from reports, which name accession numbers), with an optional `split` column. A study of the query
  without a label is listed all the same, so that each of its instances is quarantined with the reason
  in the manifest; a label row without a study in the query is logged by its line number.
- Each instance is one input, named in the manifest by its WADO-RS address
  (`dicomweb+http://HOST/ROOT/studies/S/series/E/instances/I`). Its bytes go through the same decoding
  as a file's, so the PHI allow-list (radflow.dicom.ALLOWED_HEADER_FIELDS) and the keyed patient hash
  of DICOM PatientID apply unchanged. Accession numbers, patient ids and every other header value the
  query returns stay inside the listing: only UIDs reach the manifest, and only line numbers the log.
- Retrievals run on the ingest workers, at most `dicomweb_max_concurrent` at once per process, each tried
  `1 + dicomweb_retries` times with backoff. An instance the PACS answers with an HTTP error is
  quarantined with the status; a PACS that stops answering fails the run (PacsUnavailable), before
  metadata.json is written.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from radflow import examples as ex
from radflow import fileio
from radflow.components.ingest.config import SPLIT_FOLDER_NAMES, IngestConfig
from radflow.pacs.connection import DICOMWEB_SCHEME, PacsConfig, call, open_client, retrieve_as_stored

log = logging.getLogger(__name__)

LAYOUT = "dicomweb"
NO_LABEL = "its study has no label in the labels file"
LABEL_KEYS = ("StudyInstanceUID", "AccessionNumber")  # what a labels.csv row may name its study by
PAGE = 1000  # QIDO-RS results asked for per request (limit/offset paging)
_STUDY_UID, _SERIES_UID, _SOP_UID, _ACCESSION = "0020000D", "0020000E", "00080018", "00080050"


def is_source(path: str) -> bool:
    """Whether an ingest source (or manifest path) is a DICOMweb address."""
    return path.startswith(DICOMWEB_SCHEME)


@dataclass(frozen=True)
class Query:
    """A DICOMweb source split into the PACS root and its QIDO-RS filters.

    Args:
        root: the DICOMweb root, http(s)://HOST:PORT/PATH.
        filters: QIDO-RS matching keys for the study search (Modality already as ModalitiesInStudy).
        modality: the Modality filter, kept for the instance listing; "" for none.
    """

    root: str
    filters: dict[str, str]
    modality: str = ""


def parse_source(source: str) -> Query:
    """Splits `dicomweb+http(s)://HOST:PORT/PATH?KEY=VALUE&...` into root and filters.

    Raises:
        ValueError: not a DICOMweb source, credentials in the address, or a filter given twice.
    """
    if not is_source(source):
        raise ValueError(f"ingest source {source!r} is not a {DICOMWEB_SCHEME}http(s):// address")
    parts = urlsplit(source[len(DICOMWEB_SCHEME):])
    root = parts._replace(query="", fragment="").geturl()
    pairs = parse_qsl(parts.query, keep_blank_values=False, strict_parsing=False)
    filters: dict[str, str] = {}
    for key, value in pairs:
        if key in filters:
            raise ValueError(f"ingest source: QIDO filter {key!r} is given twice")
        filters[key] = value
    modality = filters.pop("Modality", "")
    if modality:
        filters["ModalitiesInStudy"] = modality
    PacsConfig(root)  # checks the root (scheme, host, no credentials) with the field named
    return Query(root, filters, modality)


def pacs_config(root: str, config: IngestConfig) -> PacsConfig:
    """The connection settings of a DICOMweb source, from the ingest config."""
    return PacsConfig(root, credentials_file=config.dicomweb_credentials_file, ca_file=config.dicomweb_ca_file,
                      timeout_s=config.dicomweb_timeout_s, retries=config.dicomweb_retries,
                      backoff_s=config.dicomweb_backoff_s)


def _value(item: dict, tag: str) -> str:
    """The first value of a DICOM JSON attribute, "" when absent or empty."""
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


@dataclass(frozen=True)
class LabelRow:
    line: int
    label: str
    split: str
    study_uid: str
    accession: str


def read_labels(path: str) -> list[LabelRow]:
    """Reads labels.csv: `label`, `StudyInstanceUID` and/or `AccessionNumber`, optional `split`.

    Raises:
        FileNotFoundError: the file cannot be read.
        ValueError: a missing column, a row naming no study, a label that is a split name, an unknown
            split, or one study key with two labels; rows are named by line number.
    """
    try:
        text = fileio.read_text(path).removeprefix("\ufeff")
    except Exception as err:  # noqa: BLE001 - local and object-store errors differ
        raise FileNotFoundError(f"dicomweb_labels {path!r} cannot be read: {err}") from err
    reader = csv.DictReader(io.StringIO(text))
    columns = set(reader.fieldnames or ())
    if "label" not in columns or not columns & set(LABEL_KEYS):
        raise ValueError(f"dicomweb_labels {path!r} needs a label column and a {' or '.join(LABEL_KEYS)} column "
                         f"(found {sorted(columns)})")
    rows, seen = [], {}
    for line, raw in enumerate(reader, start=2):
        label = (raw.get("label") or "").strip()
        study, accession = ((raw.get(k) or "").strip() for k in LABEL_KEYS)
        given_split = (raw.get("split") or "").strip().lower()
        split = SPLIT_FOLDER_NAMES.get(given_split, given_split)
        if not label:
            raise ValueError(f"dicomweb_labels {path!r} line {line}: no label")
        if not (study or accession):
            raise ValueError(f"dicomweb_labels {path!r} line {line}: names no study ({' or '.join(LABEL_KEYS)})")
        if label.lower() in SPLIT_FOLDER_NAMES:
            raise ValueError(f"dicomweb_labels {path!r} line {line}: label {label!r} is a split name; "
                             "splits go in the split column")
        if split not in ("", *ex.SPLITS):
            raise ValueError(f"dicomweb_labels {path!r} line {line}: split {given_split!r} is not one of "
                             f"{sorted(SPLIT_FOLDER_NAMES)}")
        for key in (("uid", study), ("accession", accession)):
            if key[1] and seen.get(key, (label, split, line))[:2] != (label, split):
                raise ValueError(f"dicomweb_labels {path!r} lines {seen[key][2]} and {line} give one study two "
                                 "different labels or splits")
            if key[1]:
                seen.setdefault(key, (label, split, line))
        rows.append(LabelRow(line, label, split, study, accession))
    return rows


def _paged(search: Callable[..., list[dict]], what: str, pacs: PacsConfig, **kwargs) -> list[dict]:
    """Every result of a QIDO-RS search, PAGE at a time (servers cap their answers)."""
    results, offset = [], 0
    while True:
        page = call(lambda at=offset: search(limit=PAGE, offset=at, **kwargs), what, pacs)
        results.extend(page)
        if len(page) < PAGE:
            return results
        offset += len(page)


def list_files(source: str, config: IngestConfig):
    """Lists every instance of the studies the QIDO-RS query matches, labelled from labels.csv.

    Args:
        source: `dicomweb+http(s)://HOST:PORT/PATH?QIDO filters`.
        config: `dicomweb_labels` and the connection settings.

    Returns:
        SourceFiles of ingest, one per instance, sorted by address; label "" for a study without one.

    Raises:
        ValueError: no labels file configured, or a bad one (see read_labels).
        PacsUnavailable, PacsHTTPError: the PACS does not answer the query.
        FileNotFoundError: the query matches no study.
    """
    from radflow.components.ingest.ingest import SourceFile

    if not config.dicomweb_labels:
        raise ValueError("ingest from DICOMweb needs labels: set dicomweb_labels (--labels labels.csv), a CSV with "
                         "label and StudyInstanceUID or AccessionNumber columns")
    query = parse_source(source)
    pacs = pacs_config(query.root, config)
    labels = read_labels(config.dicomweb_labels)
    client = open_client(pacs)
    studies = _paged(client.search_for_studies, "the QIDO-RS study query", pacs, search_filters=query.filters,
                     fields=list(LABEL_KEYS))
    if not studies:
        raise FileNotFoundError(f"ingest source: PACS {pacs.host} has no study matching {query.filters}")
    by_uid = {r.study_uid: r for r in labels if r.study_uid}
    by_accession = {r.accession: r for r in labels if r.accession}
    used, unlabelled, files = set(), [], []
    instance_filters = {"Modality": query.modality} if query.modality else {}
    for study in studies:
        uid, accession = _value(study, _STUDY_UID), _value(study, _ACCESSION)
        matches = {r.line: r for r in (by_uid.get(uid), by_accession.get(accession) if accession else None) if r}
        if len({(r.label, r.split) for r in matches.values()}) > 1:
            raise ValueError(f"dicomweb_labels lines {sorted(matches)} give study {uid} two different labels "
                             "(one by StudyInstanceUID, one by AccessionNumber)")
        row = next(iter(matches.values()), None)
        used.update(matches)
        if row is None:
            unlabelled.append(uid)
        instances = _paged(client.search_for_instances, f"the instances of study {uid}", pacs,
                           study_instance_uid=uid, search_filters=instance_filters)
        for item in instances:
            rel = f"studies/{uid}/series/{_value(item, _SERIES_UID)}/instances/{_value(item, _SOP_UID)}"
            files.append(SourceFile(f"{DICOMWEB_SCHEME}{query.root}/{rel}", row.label if row else "",
                                    row.split if row else "", rel_path=rel))
    unused = [r.line for r in labels if r.line not in used]
    log.info("ingest: PACS %s: %d studies match %s, %d instances; %d label rows", pacs.host, len(studies),
             query.filters, len(files), len(labels))
    if unlabelled:
        log.warning("ingest: %d studies of the query have no label in %s; their instances are quarantined (%s)",
                    len(unlabelled), config.dicomweb_labels, ", ".join(unlabelled[:10]))
    if unused:
        log.warning("ingest: %d rows of %s name no study of the query (lines %s)", len(unused),
                    config.dicomweb_labels, ", ".join(map(str, unused[:20])) + (" ..." if len(unused) > 20 else ""))
    return sorted(files, key=lambda f: f.path)


@functools.lru_cache(maxsize=8)
def _limiter(n: int) -> threading.BoundedSemaphore:
    """One semaphore per limit and process: the retrievals in flight across this process's worker threads."""
    return threading.BoundedSemaphore(n)


class InstanceReader:
    """Reads one instance's bytes, exactly as the PACS stores them, by its `dicomweb+` address.

    Made once per ingest worker; each thread keeps its own client (and connection pool) per PACS.

    Args:
        config: the ingest config's connection settings and `dicomweb_max_concurrent`.
    """

    def __init__(self, config: IngestConfig):
        self._config = config
        self._local = threading.local()  # one session per thread and PACS: requests' sessions are not thread-safe

    def _client(self, root: str):
        clients = self._local.__dict__.setdefault("clients", {})
        if root not in clients:
            pacs = pacs_config(root, self._config)
            clients[root] = (open_client(pacs), pacs)
        return clients[root]

    def __call__(self, path: str) -> bytes:
        """The instance's Part 10 bytes in its stored transfer syntax.

        Raises:
            PacsHTTPError: the PACS answered with an error status (ingest quarantines the instance).
            PacsUnavailable: the PACS did not answer (ingest fails the run).
        """
        parts = urlsplit(path[len(DICOMWEB_SCHEME):])
        base, _, rel = parts.path.partition("/studies/")
        root = parts._replace(path=base).geturl()
        client, pacs = self._client(root)
        url = f"{root}/studies/{rel}"
        with _limiter(self._config.dicomweb_max_concurrent):
            parts_read = call(lambda: retrieve_as_stored(client, url), f"WADO-RS {rel}", pacs)
        if len(parts_read) != 1:
            raise ValueError(f"WADO-RS {rel}: expected one instance, got {len(parts_read)} parts")
        return parts_read[0]

