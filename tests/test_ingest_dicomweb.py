"""Ingest from a real PACS (Orthanc with its DICOMweb plugin, tests/orthanc.py) against ingest from a folder.

Orthanc is loaded with real DICOM files of the pydicom-data package (CR, CT, MR, US, NM, colour,
multi-frame, JPEG 2000 and JPEG lossless among them) and the project's own synthetic chest
radiographs (two instances per study, a duplicate, an image too small, a study without a label).
The DICOMweb ingest must give every instance the state, reason and split that ingesting the same
files from a folder gives them, leak no header value outside the allow-list, and report studies
without labels and labels without studies.
"""

from __future__ import annotations

import csv
import glob
import logging
import os

import numpy as np
import pydicom
import pytest
import requests
from orthanc import IDENTIFYING, PATIENT_NAME, Orthanc, TlsProxy, chest_dicom, skip_reason
from pydicom.uid import generate_uid

from radflow.components.ingest import dicomweb
from radflow.components.ingest.config import IngestConfig
from radflow.components.ingest.ingest import DUPLICATE, INGESTED, QUARANTINED, ingest, read_manifest
from radflow.pacs.connection import PacsConfig, PacsHTTPError, call, read_credentials

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")

# One file per instance (the _UNCR and _J2KR variants of a sample share their SOPInstanceUID).
REAL_FILES = ("RG1_UNCR.dcm", "RG3_J2KR.dcm", "MR2_J2KR.dcm", "US1_UNCR.dcm", "693_J2KR.dcm", "OBXXXX1A_2frame.dcm",
              "SC_rgb.dcm", "SC_ybr_full_uncompressed.dcm", "emri_small.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm",
              "MR-SIEMENS-DICOM-WithOverlays.dcm", "gdcm-US-ALOKA-16.dcm", "JPEG-LL.dcm", "color-pl.dcm",
              "mlut_18.dcm", "vlut_04.dcm")
SECRET = "dicomweb-test-patient-key"


def real_file(name: str) -> str:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    assert path, f"{name} is not in pydicom-data"
    return path


def _pixels(rng, shape=(64, 80), bright=False) -> np.ndarray:
    image = rng.normal(110, 30, shape)
    if bright:
        image[10:30, 20:40] += 80
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def pacs_data(tmp_path_factory):
    """(Orthanc loaded with the files, a folder manifest of the same files, labels.csv, the unlabelled study)."""
    root = tmp_path_factory.mktemp("pacs")
    os.makedirs(root / "orthanc")
    server = Orthanc(str(root / "orthanc")).start()
    rng = np.random.default_rng(7)
    files = []
    for name in REAL_FILES:
        with open(real_file(name), "rb") as f:
            files.append(f.read())
    labels = [("StudyInstanceUID", "AccessionNumber", "label")]
    real_studies = {pydicom.dcmread(pydicom.filebase.DicomBytesIO(d), stop_before_pixels=True).StudyInstanceUID
                    for d in files}
    labels += [(study, "", ("NORMAL", "PNEUMONIA")[i % 2]) for i, study in enumerate(sorted(real_studies))]
    for p in range(8):
        study, series, accession = generate_uid(), generate_uid(), f"ACC-SECRET-{p:04d}"
        label = ("NORMAL", "PNEUMONIA")[p % 2]
        files += [chest_dicom(_pixels(rng, bright=bool(p % 2)), patient_id=f"PID-SECRET-{p}", study_uid=study,
                              accession=accession, series_uid=series, instance_number=k + 1) for k in range(2)]
        # half the studies are labelled by StudyInstanceUID, half by AccessionNumber, as report exports give them
        labels.append((study, "", label) if p < 4 else ("", accession, label))
    dup_pixels = _pixels(rng)
    study, series = generate_uid(), generate_uid()
    files += [chest_dicom(pixels, patient_id="PID-SECRET-DUP", study_uid=study, series_uid=series,
                          accession="ACC-SECRET-DUP", instance_number=k + 1)
              for k, pixels in enumerate((dup_pixels, dup_pixels, _pixels(rng, (20, 20))))]  # a duplicate, a tiny one
    labels.append((study, "ACC-SECRET-DUP", "NORMAL"))
    unlabelled = generate_uid()
    files += [chest_dicom(_pixels(rng), patient_id="PID-SECRET-NOLABEL", study_uid=unlabelled,
                          accession="ACC-SECRET-NOLABEL", instance_number=k + 1) for k in range(2)]
    labels += [(generate_uid(), "", "NORMAL"), ("", "ACC-SECRET-NOSTUDY", "PNEUMONIA")]  # labels without a study
    labels_csv = root / "labels.csv"
    with open(labels_csv, "w", newline="") as f:
        csv.writer(f).writerows(labels)
    by_uid = {r[0]: r[2] for r in labels[1:] if r[0]}
    by_accession = {r[1]: r[2] for r in labels[1:] if r[1]}
    manifest = root / "manifest.csv"  # the same files in a folder, each labelled as labels.csv labels its study
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("path", "label"))
        for data in files:
            answer = server.upload(data)
            assert answer["Status"] == "Success", answer
            ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), stop_before_pixels=True)
            path = root / "files" / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
            os.makedirs(path.parent, exist_ok=True)
            path.write_bytes(data)
            label = by_uid.get(ds.StudyInstanceUID) or by_accession.get(str(ds.get("AccessionNumber", "")), "")
            writer.writerow((str(path), label))
    yield server, str(manifest), str(labels_csv), unlabelled
    server.stop()


def _config(pacs: Orthanc, labels: str, **kw) -> IngestConfig:
    return IngestConfig(image_size=32, patient_key_secret=SECRET, patient_id_pattern="", max_quarantined_fraction=0.6,
                        dicomweb_labels=labels, dicomweb_credentials_file=pacs.credentials_file(),
                        dicomweb_backoff_s=0.05, direct_num_workers=2, **kw)


def _by_instance(rows: list[dict]) -> dict[str, dict]:
    """Manifest rows keyed by SOPInstanceUID: the file name in the folder, the address's last part over DICOMweb."""
    return {os.path.basename(r["path"]).removesuffix(".dcm").rsplit("/", 1)[-1]: r for r in rows}


def _reason(row: dict) -> str:
    """The kind of reason; for a duplicate, the SOPInstanceUID of the instance it duplicates."""
    if row["state"] == DUPLICATE:
        return os.path.basename(row["reason"].split(" ")[3]).removesuffix(".dcm")
    return row["reason"].split(":")[0]


def test_dicomweb_ingest_matches_folder_ingest_and_leaks_nothing(pacs_data, tmp_path, caplog):
    server, manifest, labels, unlabelled = pacs_data
    source = f"dicomweb+{server.dicomweb}"
    folder_out, pacs_out = str(tmp_path / "folder"), str(tmp_path / "pacs")
    ingest(manifest, folder_out, _config(server, ""))
    with caplog.at_level(logging.INFO):
        result = ingest(source, pacs_out, _config(server, labels))
    folder_rows, pacs_rows = _by_instance(read_manifest(folder_out)), _by_instance(read_manifest(pacs_out))
    assert set(folder_rows) == set(pacs_rows) and len(pacs_rows) == 16 + 8 * 2 + 3 + 2
    for uid, row in pacs_rows.items():
        theirs = folder_rows[uid]
        assert row["path"].startswith(f"dicomweb+{server.dicomweb}/studies/")
        assert (row["state"], _reason(row), row["label"]) == (theirs["state"], _reason(theirs), theirs["label"]), uid
        assert row["sha256"] == theirs["sha256"], "WADO-RS must give the bytes as stored"
        if row["patient_id_from"] == "dicom":
            assert (row["patient_key"], row["split"]) == (theirs["patient_key"], theirs["split"])
    states = {r["state"] for r in pacs_rows.values()}
    assert states == {INGESTED, QUARANTINED, DUPLICATE}
    reasons = {r["reason"] for r in pacs_rows.values() if r["state"] == QUARANTINED}
    assert any(r.startswith("multi-frame") for r in reasons) and any(r.startswith("too small") for r in reasons)
    assert f"unknown class: {dicomweb.NO_LABEL}" in reasons
    assert sum(unlabelled in r["path"] for r in pacs_rows.values()) == 2
    assert result.metadata.layout == dicomweb.LAYOUT
    assert result.metadata.patient_ids.get("dicom", 0) >= 8 * 2

    # reported: the study without a label by its UID, the label rows without a study by line number only
    text = caplog.text
    assert unlabelled in text and "1 studies of the query have no label" in text
    assert "2 rows of" in text and "name no study of the query (lines" in text
    secrets = [PATIENT_NAME, "PID-SECRET", "ACC-SECRET", "CompressedSamples", *IDENTIFYING.values(), "Hibbert"]
    for name in glob.glob(os.path.join(pacs_out, "**", "*"), recursive=True):
        if os.path.isfile(name):
            with open(name, "rb") as f:
                data = f.read()
            for secret in secrets:
                assert secret.encode() not in data, f"{secret!r} reached {name}"
    for secret in secrets:
        assert secret not in text, f"{secret!r} reached the log"
    assert "orthanc-test-password" not in text


def test_a_failed_retrieve_is_quarantined_with_its_http_status(pacs_data, tmp_path, monkeypatch):
    server, _, labels, _ = pacs_data
    listed = dicomweb.list_files
    gone = {}

    def list_then_delete(source, config):
        files = listed(source, config)
        victim = next(f for f in files if f.label)
        sop = victim.path.rsplit("/", 1)[1]
        orthanc_id = requests.post(f"{server.rest}/tools/lookup", data=sop, auth=server.auth,
                                   timeout=10).json()[0]["ID"]
        gone["data"] = server.instance_file(orthanc_id)
        requests.delete(f"{server.rest}/instances/{orthanc_id}", auth=server.auth, timeout=10).raise_for_status()
        gone["path"] = victim.path
        return files

    monkeypatch.setattr(dicomweb, "list_files", list_then_delete)
    try:
        ingest(f"dicomweb+{server.dicomweb}", str(tmp_path / "out"), _config(server, labels))
        row = next(r for r in read_manifest(str(tmp_path / "out")) if r["path"] == gone["path"])
        assert row["state"] == QUARANTINED and row["reason"].startswith("unreadable: HTTP 404"), row
    finally:
        server.upload(gone["data"])  # the module's PACS holds every file again


def test_a_pacs_that_goes_away_fails_the_run_without_metadata(tmp_path, monkeypatch):
    server = Orthanc(str(tmp_path)).start()
    rng = np.random.default_rng(3)
    rows = [("StudyInstanceUID", "label")]
    for p in range(4):
        study = generate_uid()
        server.upload(chest_dicom(_pixels(rng), patient_id=f"P{p}", study_uid=study))
        rows.append((study, ("NORMAL", "PNEUMONIA")[p % 2]))
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(",".join(r) for r in rows) + "\n")
    listed = dicomweb.list_files

    def list_then_stop(source, config):
        files = listed(source, config)
        server.stop()
        return files

    monkeypatch.setattr(dicomweb, "list_files", list_then_stop)
    out = tmp_path / "out"
    try:
        with pytest.raises(Exception, match=r"did not answer WADO-RS .* after 3 tries.*is it running"):
            ingest(f"dicomweb+{server.dicomweb}", str(out), _config(server, str(labels), dicomweb_retries=2))
    finally:
        server.stop()
    assert not (out / "metadata.json").exists()


def test_credentials_come_from_a_file_or_a_secret_folder_never_the_address(pacs_data, tmp_path):
    server, _, labels, _ = pacs_data
    with pytest.raises(ValueError, match="user name or password"):
        dicomweb.parse_source(f"dicomweb+http://user:pw@127.0.0.1:{server.http_port}/dicom-web")
    secret = tmp_path / "secret"  # a Kubernetes basic-auth Secret, mounted: one file per key
    secret.mkdir()
    (secret / "username").write_text(server.auth[0])
    (secret / "password").write_text("wrong-password\n")
    assert read_credentials(str(secret)).kind == "basic" and "wrong-password" not in repr(read_credentials(str(secret)))
    config = _config(server, labels)
    bad = IngestConfig(**{**config.__dict__, "dicomweb_credentials_file": str(secret)})
    with pytest.raises(PacsHTTPError, match="HTTP 401") as err:
        dicomweb.list_files(f"dicomweb+{server.dicomweb}", bad)
    assert "wrong-password" not in str(err.value)
    (secret / "password").write_text(server.auth[1])
    good = IngestConfig(**{**config.__dict__, "dicomweb_credentials_file": str(secret)})
    assert dicomweb.list_files(f"dicomweb+{server.dicomweb}?Modality=CR", good)
    token = tmp_path / "token"
    token.write_text("token: abc\n")
    assert read_credentials(str(token)).kind == "bearer"
    (tmp_path / "both").write_text("token: abc\nusername: u\npassword: p\n")
    with pytest.raises(ValueError, match="both a token and a username"):
        read_credentials(str(tmp_path / "both"))


def test_https_is_verified_against_the_given_ca(pacs_data, tmp_path):
    from test_serving import _self_signed  # a certificate for 127.0.0.1 that is its own CA

    server, _, labels, _ = pacs_data
    certificate = _self_signed(tmp_path)
    proxy = TlsProxy(server.http_port, *certificate)
    try:
        source = f"dicomweb+https://127.0.0.1:{proxy.port}/dicom-web?Modality=CR"
        trusted = _config(server, labels, dicomweb_ca_file=certificate[0])
        assert len(dicomweb.list_files(source, trusted)) == 1 + 1 + 8 * 2 + 3 + 2
        with pytest.raises(ValueError, match="TLS verification failed .*--pacs-ca-file, ingest.dicomweb_ca_file"):
            dicomweb.list_files(source, _config(server, labels))  # the system's CAs do not know it
        with pytest.raises(ValueError, match="ca_file is set but the address is not https"):
            PacsConfig(server.dicomweb, ca_file=certificate[0])
    finally:
        proxy.stop()


def test_the_query_selects_studies_and_their_instances_of_that_modality(pacs_data):
    server, _, labels, _ = pacs_data
    config = _config(server, labels)
    crs = dicomweb.list_files(f"dicomweb+{server.dicomweb}?Modality=CR", config)
    assert crs and len(crs) == 1 + 1 + 8 * 2 + 3 + 2  # RG1, RG3, and the synthetic CR studies
    assert dicomweb.parse_source(f"dicomweb+{server.dicomweb}?Modality=CR&StudyDate=20260101-20261130").filters == \
        {"ModalitiesInStudy": "CR", "StudyDate": "20260101-20261130"}
    with pytest.raises(FileNotFoundError, match="no study matching"):
        dicomweb.list_files(f"dicomweb+{server.dicomweb}?StudyDate=19000101", config)
    with pytest.raises(ValueError, match="needs labels"):
        dicomweb.list_files(f"dicomweb+{server.dicomweb}", _config(server, ""))


def test_labels_file_errors_name_the_line(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("StudyInstanceUID,label\n1.2.3,NORMAL\n1.2.3,PNEUMONIA\n")
    with pytest.raises(ValueError, match="lines 2 and 3 give one study two different labels"):
        dicomweb.read_labels(str(path))
    path.write_text("StudyInstanceUID,label\n1.2.3,train\n")
    with pytest.raises(ValueError, match="line 2: label 'train' is a split name"):
        dicomweb.read_labels(str(path))
    path.write_text("PatientID,label\nx,NORMAL\n")
    with pytest.raises(ValueError, match="needs a label column and a StudyInstanceUID or AccessionNumber"):
        dicomweb.read_labels(str(path))


def test_requests_are_retried_with_backoff_then_fail_with_the_status():
    config = PacsConfig("http://127.0.0.1:9/dicom-web", retries=3, backoff_s=0.5)
    waits, answers = [], iter([503, 502, 200])

    def flaky():
        status = next(answers)
        if status != 200:
            response = requests.Response()
            response.status_code = status
            raise requests.HTTPError(response=response)
        return "ok"

    assert call(flaky, "a test", config, sleep=waits.append) == "ok" and waits == [0.5, 1.0]
    waits.clear()
    with pytest.raises(PacsHTTPError, match="HTTP 503 to a test after 4 tries") as err:
        call(lambda: flaky_forever(503), "a test", config, sleep=waits.append)
    assert err.value.status == 503 and waits == [0.5, 1.0, 2.0]
    waits.clear()
    with pytest.raises(PacsHTTPError, match="HTTP 404"):
        call(lambda: flaky_forever(404), "a test", config, sleep=waits.append)
    assert waits == [], "a 404 is an answer, not an outage: no retry"


def flaky_forever(status: int):
    response = requests.Response()
    response.status_code = status
    raise requests.HTTPError(response=response)
