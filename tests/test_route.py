"""`radflow route` against a real Orthanc (tests/orthanc.py) and a real model server (`radflow serve`'s ModelServer).

Studies arrive the way a modality sends them, by C-STORE with dcmtk's storescu. The router runs as
its own process (`python -m radflow.cli route`), so that it can be SIGKILLed in the middle of a batch
and started again on the same ledger. Its answers are read back from Orthanc with pydicom and
highdicom and compared with what the model server answers for the same image.
"""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
import time

import highdicom as hd
import numpy as np
import pydicom
import pytest
from orthanc import IDENTIFYING, PATIENT_NAME, Orthanc, chest_dicom, free_port, skip_reason
from pydicom.uid import MRImageStorage, generate_uid
from test_review import MODEL, publish, start_model_server

from radflow import dicom
from radflow.pacs import results
from radflow.pacs.router import LEDGER_FILE, parse_filter, parse_seconds, redact, selection_problem
from radflow.serving.client import ServingClient
from radflow.serving.config import ServerConfig, single_model_config
from radflow.serving.server import ModelServer

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")
SINCE = "20000101"  # pydicom-data's RG1 is from 2004


@pytest.fixture(scope="module")
def served(model_dir, tmp_path_factory):
    """(model server, model base path): conftest's tiny model published as version 1, with its model.keras."""
    base = str(tmp_path_factory.mktemp("route-serving") / MODEL)
    os.makedirs(base)
    publish(model_dir, base, 1)
    server = start_model_server(base)
    yield server, base
    server.stop()


@pytest.fixture
def pacs(tmp_path):
    os.makedirs(tmp_path / "orthanc")
    server = Orthanc(str(tmp_path / "orthanc")).start()
    yield server
    server.stop()


def write_studies(folder, n: int, seed: int = 0, **kw) -> list[str]:
    """n one-image chest studies as files (each its own patient), for storescu."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(n):
        pixels = np.clip(rng.normal(100, 35, (72, 88)), 0, 255)
        if i % 2:
            pixels[20:40, 30:50] += 90
        path = os.path.join(folder, f"study{i:02d}.dcm")
        with open(path, "wb") as f:
            f.write(chest_dicom(pixels.astype(np.uint8), patient_id=f"PID-SECRET-{seed}-{i}", study_uid=generate_uid(),
                                accession=f"ACC-SECRET-{i}", **kw))
        paths.append(path)
    return paths


class RouterProcess:
    """`radflow route` in its own process, its stdout and stderr kept in one log file."""

    def __init__(self, pacs: Orthanc, serving: str, state: str, log_path: str, *extra: str):
        self.state, self.log_path = state, log_path
        cmd = [sys.executable, "-m", "radflow.cli", "route", "--pacs", pacs.dicomweb, "--serving", serving,
               "--state", state, "--poll", "0.5", "--since", SINCE, "--pacs-credentials", pacs.credentials_file(),
               "--retry-backoff", "0.2", "--lookback-days", "0", *extra]
        self._log = open(log_path, "ab")
        self.process = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})

    def counts(self) -> dict[str, int]:
        path = os.path.join(self.state, LEDGER_FILE)
        if not os.path.exists(path):
            return {}
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
            try:
                return dict(db.execute("SELECT state, COUNT(*) FROM instances GROUP BY state").fetchall())
            except sqlite3.OperationalError:  # the tables are not created yet
                return {}

    def wait_for(self, condition, timeout: float, what: str) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = self.counts()
            if condition(counts):
                return counts
            assert self.process.poll() is None, f"the router exited ({self.process.returncode}): {self.log()}"
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; ledger {self.counts()}; log:\n{self.log()[-3000:]}")

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(60)
        self._log.close()
        return code


def results_by_source(pacs: Orthanc) -> tuple[dict[str, list], dict[str, list], dict[str, bytes]]:
    """(source SOP UID -> SRs read back, source SOP UID -> SCs read back, source SOP UID -> source bytes)."""
    srs, scs, sources = {}, {}, {}
    for orthanc_id in pacs.get("/instances"):
        data = pacs.instance_file(orthanc_id)
        ds = pydicom.dcmread(io.BytesIO(data))
        if ds.SOPClassUID == pydicom.uid.ComprehensiveSRStorage:
            stored = results.read_sr(data)  # highdicom's reader, and the content tree
            srs.setdefault(stored.source_sop_uid, []).append((ds, stored))
        elif ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage:
            image = hd.imread(io.BytesIO(data))
            source = str(image.SourceImageSequence[0].ReferencedSOPInstanceUID)
            scs.setdefault(source, []).append(ds)
        else:
            sources[str(ds.SOPInstanceUID)] = data
    return srs, scs, sources


def test_twenty_studies_answered_once_across_a_sigkill_mid_batch(pacs, served, tmp_path):
    server, base = served
    from pydicom.data import get_testdata_file

    paths = write_studies(tmp_path / "in", 19) + [get_testdata_file("RG1_UNCR.dcm")]  # and one real CR chest
    pacs.storescu(paths)
    before = {i: pacs.instance_file(i) for i in pacs.get("/instances")}
    assert len(before) == 20
    state, log_path = str(tmp_path / "state"), str(tmp_path / "route.log")
    serving = f"127.0.0.1:{server.grpc_port}"
    first = RouterProcess(pacs, serving, state, log_path, "--model_base_path", base, "--workers", "1")
    mid = first.wait_for(lambda c: c.get("done", 0) >= 3, 240, "3 answers")
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    killed_at = first.counts()
    assert killed_at.get("done", 0) < 20, f"the kill came too late to be mid-batch: {mid} -> {killed_at}"
    second = RouterProcess(pacs, serving, state, log_path, "--model_base_path", base)
    second.wait_for(lambda c: c.get("done", 0) == 20, 240, "all 20 answered")
    assert second.stop() == 0

    srs, scs, sources = results_by_source(pacs)
    assert set(sources) == {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths}
    with ServingClient(serving, MODEL) as client:
        for sop, data in sources.items():
            assert len(srs.get(sop, [])) == 1, f"{sop}: {len(srs.get(sop, []))} SRs, expected exactly one"
            assert len(scs.get(sop, [])) == 1, f"{sop}: {len(scs.get(sop, []))} SCs, expected exactly one"
            source = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            (sr, stored), sc = srs[sop][0], scs[sop][0]
            expected = client.predict([dicom.to_png(data)])[0]
            assert (stored.model, stored.version, stored.decision, stored.label) == \
                   (MODEL, expected.version, expected.decision, expected.label)
            assert stored.scores == pytest.approx(expected.scores, abs=1e-6)
            assert stored.threshold == pytest.approx(expected.threshold)
            assert "NOT FOR CLINICAL USE" in stored.disclaimer and "NOT FOR CLINICAL USE" in sr.SeriesDescription
            for result in (sr, sc):  # the source's patient and study, new UIDs, the source referenced
                assert result.StudyInstanceUID == source.StudyInstanceUID and result.PatientID == source.PatientID
                assert result.SOPInstanceUID != source.SOPInstanceUID
                assert result.SeriesInstanceUID != source.SeriesInstanceUID
            evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
            assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sop
            assert list(sc.ImageType)[:2] == ["DERIVED", "SECONDARY"] and sc.BurnedInAnnotation == "YES"
            assert sc.pixel_array.shape == (512, 512, 3) and sc.pixel_array.std() > 5
    after = {i: pacs.instance_file(i) for i in before}
    assert after == before, "the source instances must never change"
    log = first.log()
    assert "FAILED" not in log
    for secret in (PATIENT_NAME, "PID-SECRET", "ACC-SECRET", "CompressedSamples", *IDENTIFYING.values(),
                   "Hibbert", "orthanc-test-password"):
        assert secret not in log, f"{secret!r} reached the router's log"
        with open(os.path.join(state, LEDGER_FILE), "rb") as f:
            assert secret.encode() not in f.read(), f"{secret!r} reached the ledger"


def test_a_serving_outage_holds_studies_within_the_bound_and_answers_them_when_it_returns(pacs, served, tmp_path):
    _, base = served
    port = free_port()
    state = str(tmp_path / "state")
    router = RouterProcess(pacs, f"127.0.0.1:{port}", state, str(tmp_path / "route.log"), "--max-pending", "4")
    pacs.storescu(write_studies(tmp_path / "first", 3, seed=1))
    time.sleep(3)
    pacs.storescu(write_studies(tmp_path / "meanwhile", 5, seed=2))  # arrive while the model server is down
    peak = 0
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        counts = router.counts()
        peak = max(peak, counts.get("pending", 0))
        assert not counts.get("done") and not counts.get("failed"), counts
        time.sleep(0.2)
    assert peak == 4, f"pending should fill up to --max-pending 4 and stop there, peaked at {peak}"
    assert "waiting for the serving endpoint" in router.log()
    model_server = ModelServer(ServerConfig(port=port, rest_api_port=None, file_system_poll_wait_seconds=0.2),
                               [single_model_config(MODEL, base)])
    model_server.start()
    try:
        assert model_server.wait_until_ready(60)
        router.wait_for(lambda c: c.get("done", 0) == 8, 240, "all 8 answered once serving is back")
    finally:
        assert router.stop() == 0
        model_server.stop()
    srs, scs, sources = results_by_source(pacs)
    assert len(sources) == 8 and all(len(srs.get(s, [])) == 1 for s in sources)
    assert "answer again after" in router.log()


def test_failing_studies_are_retried_with_backoff_then_recorded_as_failed(pacs, served, tmp_path):
    server, base = served
    folder = tmp_path / "in"
    os.makedirs(folder)
    rng = np.random.default_rng(5)
    broken = bytearray(chest_dicom(rng.integers(0, 255, (64, 64), dtype=np.uint8), patient_id="PID-SECRET-B",
                                   study_uid=generate_uid()))
    ds = pydicom.dcmread(io.BytesIO(bytes(broken)))
    ds.PixelData = ds.PixelData[:1000]  # pixel data cut short: the header says 64x64
    ds.save_as(folder / "broken.dcm", enforce_file_format=True)
    (folder / "blank.dcm").write_bytes(chest_dicom(np.full((64, 64), 7, np.uint8), patient_id="PID-SECRET-C",
                                                   study_uid=generate_uid()))  # the server's admission refuses it
    good = write_studies(folder / "good", 1, seed=3)
    pacs.storescu([str(folder / "broken.dcm"), str(folder / "blank.dcm"), *good])
    state = str(tmp_path / "state")
    router = RouterProcess(pacs, f"127.0.0.1:{server.grpc_port}", state, str(tmp_path / "route.log"),
                           "--max-attempts", "3", "--model_base_path", base)
    router.wait_for(lambda c: c.get("failed", 0) == 2 and c.get("done", 0) == 1, 240, "2 failed, 1 done")
    assert router.stop() == 0
    log = router.log()
    assert log.count("try 1 of 3 failed") == 2 and log.count("try 2 of 3 failed") == 2
    assert log.count("FAILED after 3 tries") == 2
    assert "undecodable" in log and "INVALID_ARGUMENT" in log
    status = subprocess.run([sys.executable, "-m", "radflow.cli", "route", "--status", "--state", state],
                            capture_output=True, text=True, check=True).stdout
    assert status.count("failed: instance") == 2 and "'failed': 2" in status
    with sqlite3.connect(os.path.join(state, LEDGER_FILE)) as db:
        tries = db.execute("SELECT attempts, next_try - discovered_at FROM instances WHERE state = 'failed'").fetchall()
    assert all(attempts == 3 for attempts, _ in tries)
    assert PATIENT_NAME not in log and "PID-SECRET" not in log
    requeued = subprocess.run([sys.executable, "-m", "radflow.cli", "route", "--retry-failed", "--state", state],
                              capture_output=True, text=True, check=True).stdout
    assert "2 failed instances are pending again" in requeued and router.counts() == {"pending": 2, "done": 1}


def test_only_what_the_filter_selects_is_answered_and_results_are_never_answered(pacs, served, tmp_path):
    server, base = served
    folder = tmp_path / "in"
    os.makedirs(folder)
    rng = np.random.default_rng(9)
    image = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    (folder / "hand.dcm").write_bytes(chest_dicom(image, patient_id="P1", study_uid=generate_uid(), body_part="HAND"))
    (folder / "mr.dcm").write_bytes(chest_dicom(image, patient_id="P2", study_uid=generate_uid(), modality="MR",
                                                sop_class=MRImageStorage))
    chest = write_studies(folder / "chest", 2, seed=4)
    pacs.storescu([str(folder / "hand.dcm"), str(folder / "mr.dcm"), *chest])
    state = str(tmp_path / "state")
    router = RouterProcess(pacs, f"127.0.0.1:{server.grpc_port}", state, str(tmp_path / "route.log"),
                           "--model_base_path", base)
    router.wait_for(lambda c: c.get("done", 0) == 2, 240, "the two chest images answered")
    time.sleep(3)  # several more polls: the router's own SR and SC must not be picked up
    assert router.stop() == 0
    counts = router.counts()
    assert counts.get("done") == 2 and counts.get("pending", 0) == 0 and counts.get("failed", 0) == 0
    with sqlite3.connect(os.path.join(state, LEDGER_FILE)) as db:
        skipped = dict(db.execute("SELECT sop_uid, error FROM instances WHERE state = 'skipped'").fetchall())
    assert any("BodyPartExamined is HAND" in why for why in skipped.values())
    srs, scs, sources = results_by_source(pacs)
    assert len(srs) == 2 and len(scs) == 2 and len(sources) == 4


def test_polls_look_back_a_bounded_window(pacs, tmp_path):
    from radflow.pacs.connection import PacsConfig
    from radflow.pacs.router import RouteConfig, Router

    rng = np.random.default_rng(12)
    today, old = time.strftime("%Y%m%d"), time.strftime("%Y%m%d", time.localtime(time.time() - 30 * 86400))
    for date in (today, old):
        pixels = rng.integers(0, 255, (64, 64), dtype=np.uint8)
        pacs.upload(chest_dicom(pixels, patient_id="P", study_uid=generate_uid(), study_date=date))
    config = RouteConfig(pacs=PacsConfig(pacs.dicomweb, credentials_file=pacs.credentials_file()),
                         serving="127.0.0.1:1", state_dir=str(tmp_path / "state"), since=SINCE, lookback_days=14)
    router = Router(config)
    assert router.discover() == 1, "only the study of the last 14 days"
    assert Router(RouteConfig(**{**config.__dict__, "lookback_days": 0})).discover() == 1  # the older one, now
    assert router.ledger.counts()["pending"] == 2


def test_filter_selection_and_redaction():
    rules = parse_filter(["BodyPartExamined=CHEST,THORAX", "Modality="])
    assert dict(rules)["BodyPartExamined"] == ("CHEST", "THORAX") and "Modality" not in dict(rules)
    ok = {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1", "BodyPartExamined": "chest"}
    assert selection_problem(ok, rules, partial=False) == ""
    assert "BodyPartExamined is missing" in selection_problem({**ok, "BodyPartExamined": ""}, rules, partial=False)
    assert selection_problem({**ok, "BodyPartExamined": ""}, rules, partial=True) == ""
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_filter(["CHEST"])
    assert parse_seconds("2m") == 120 and parse_seconds("10") == 10
    with pytest.raises(ValueError, match="not a duration"):
        parse_seconds("soon")
    ds = pydicom.Dataset()
    ds.PatientName, ds.PatientID, ds.Modality = "Doe^Jane", "PID-77", "CR"
    assert redact("bad value 'Doe^Jane' for PID-77 on CR", ds) == "bad value '<redacted>' for <redacted> on CR"


def test_results_stored_before_a_crash_are_found_not_stored_again(pacs, served, tmp_path):
    """The window a SIGKILL can hit: STOW-RS done, ledger not yet. The next try must find the results and keep them."""
    from radflow.pacs.connection import PacsConfig, open_client
    from radflow.pacs.router import RouteConfig, Router

    server, base = served
    paths = write_studies(tmp_path / "in", 2, seed=6)
    pacs.storescu(paths)
    sources = [pydicom.dcmread(p) for p in paths]
    with ServingClient(f"127.0.0.1:{server.grpc_port}", MODEL) as client:
        answers = [client.predict([dicom.to_png(open(p, "rb").read())])[0] for p in paths]
    stored = [results.Answer(MODEL, a.version, a.scores, a.label, a.threshold, a.decision) for a in answers]
    config = RouteConfig(pacs=PacsConfig(pacs.dicomweb, credentials_file=pacs.credentials_file()),
                         serving=f"127.0.0.1:{server.grpc_port}", model_name=MODEL, model_base_path=base,
                         state_dir=str(tmp_path / "state"), since=SINCE, lookback_days=0, poll_s=0.2)
    client = open_client(config.pacs)
    # the first image's SR and SC made it into the PACS, the second's SR only, then the router died
    rgb = np.zeros((512, 512, 3), np.uint8)
    client.store_instances([results.make_sr(sources[0], stored[0]), results.make_sc(sources[0], rgb, stored[0]),
                            results.make_sr(sources[1], stored[1])])
    router = Router(config)
    router.ledger.add_new([(str(s.SOPInstanceUID), str(s.StudyInstanceUID), str(s.SeriesInstanceUID))
                           for s in sources], max_pending=10)
    router.run(once=True)
    entries = {e.sop_uid: e for e in router.ledger.entries()}
    assert all(e.state == "done" for e in entries.values()), entries
    assert entries[str(sources[0].SOPInstanceUID)].note == "results were already stored"
    srs, scs, _ = results_by_source(pacs)
    for s in sources:
        assert len(srs[str(s.SOPInstanceUID)]) == 1 and len(scs[str(s.SOPInstanceUID)]) == 1
    first_sc = scs[str(sources[0].SOPInstanceUID)][0]
    assert first_sc.pixel_array[100:].max() == 0, "the SC stored before the crash is kept, not replaced"
    second_sc = scs[str(sources[1].SOPInstanceUID)][0]
    assert second_sc.pixel_array.std() > 5 and "v1" in second_sc.DerivationDescription
