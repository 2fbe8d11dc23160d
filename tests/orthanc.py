"""A real PACS for the tests: Debian's Orthanc with its DICOMweb plugin, on loopback, started and stopped here.

`make orthanc` (run by .ci/run) installs the packages `orthanc`, `orthanc-dicomweb` and `dcmtk`;
without them `skip_reason()` says what is missing and the PACS tests skip. Each `Orthanc` gets a
generated configuration: free HTTP and DICOM ports, a temporary storage folder, the DICOMweb
plugin, and HTTP basic authentication (so the tests' credentials files are checked by a real
server). `chest_dicom` writes the project's own synthetic chest radiographs with identifying
header values the tests look for in every output.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import threading
import time

import numpy as np
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

PLUGIN_PACKAGE = "orthanc-dicomweb"
USER, PASSWORD = "radflow-test", "orthanc-test-password"
# Header values that identify a patient; no radflow output or log may contain them.
PATIENT_NAME = "Smithers"  # single component on purpose: highdicom's person-name warning quotes it
IDENTIFYING = {"InstitutionName": "St Elsewhere Hospital", "PatientBirthDate": "19700101",
               "ReferringPhysicianName": "Hibbert^Julius"}


def _plugin() -> str | None:
    """The DICOMweb plugin's shared library, from the package's own file list."""
    try:
        files = subprocess.run(["dpkg", "-L", PLUGIN_PACKAGE], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    found = [f for f in files.split() if "DicomWeb" in os.path.basename(f) and f.endswith(".so")]
    return found[0] if found else None


def skip_reason() -> str | None:
    """Why the PACS tests cannot run here, or None."""
    if not shutil.which("Orthanc"):
        return "Orthanc is not installed (make orthanc: Debian's orthanc, orthanc-dicomweb and dcmtk)"
    if not _plugin():
        return f"Orthanc's DICOMweb plugin is not installed (Debian package {PLUGIN_PACKAGE}; make orthanc)"
    if not shutil.which("storescu"):
        return "dcmtk's storescu is not installed (Debian package dcmtk; make orthanc)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """One Orthanc process with the DICOMweb plugin on loopback.

    Args:
        folder: where its configuration, storage and log go.
        http_port: its HTTP port; None picks a free one (pass the old port to restart on it).
    """

    def __init__(self, folder: str, http_port: int | None = None):
        self.folder = folder
        self.http_port = http_port or free_port()
        self.dicom_port = free_port()
        self.log_path = os.path.join(folder, "orthanc.log")
        self._process: subprocess.Popen | None = None

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.rest}/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return USER, PASSWORD

    def credentials_file(self) -> str:
        """A `key: value` credentials file for radflow."""
        path = os.path.join(self.folder, "pacs-credentials")
        with open(path, "w") as f:
            f.write(f"username: {USER}\npassword: {PASSWORD}\n")
        return path

    def start(self) -> Orthanc:
        storage = os.path.join(self.folder, "storage")
        os.makedirs(storage, exist_ok=True)
        config = {
            "Name": "radflow-test", "StorageDirectory": storage, "IndexDirectory": storage,
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
            "Plugins": [_plugin()], "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "DicomCheckCalledAet": False, "UnknownSopClassAccepted": True, "StableAge": 1,
            "HttpCompressionEnabled": False, "SaveJobs": False,
        }

        path = os.path.join(self.folder, "orthanc.json")
        with open(path, "w") as f:
            json.dump(config, f)
        self._log = open(self.log_path, "ab")
        self._process = subprocess.Popen(["Orthanc", path], stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self._process.returncode}; see {self.log_path}")
            try:
                if requests.get(f"{self.rest}/system", auth=self.auth, timeout=2).ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"Orthanc did not answer within 30 s; see {self.log_path}")

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process:
            self._log.close()
        self._process = None

    def upload(self, data: bytes) -> dict:
        """Stores one DICOM file through Orthanc's own REST API (any transfer syntax)."""
        reply = requests.post(f"{self.rest}/instances", data=data, auth=self.auth, timeout=60)
        reply.raise_for_status()
        return reply.json()

    def storescu(self, paths: list[str]) -> None:
        """Sends files with dcmtk's storescu over DICOM networking (C-STORE), as a modality would."""
        subprocess.run(["storescu", "-R", "-aec", "ORTHANC", "127.0.0.1", str(self.dicom_port), *paths],
                       check=True, capture_output=True, timeout=120)

    def get(self, path: str):
        reply = requests.get(f"{self.rest}{path}", auth=self.auth, timeout=30)
        reply.raise_for_status()
        return reply.json()

    def instance_file(self, orthanc_id: str) -> bytes:
        reply = requests.get(f"{self.rest}/instances/{orthanc_id}/file", auth=self.auth, timeout=60)
        reply.raise_for_status()
        return reply.content


class TlsProxy:
    """An https front for a plain-HTTP server, as hospitals put a TLS-terminating proxy before a PACS.

    (Debian's Orthanc 1.10 segfaults on its first https connection here, so its own SslEnabled
    cannot be used.) Each connection is relayed byte for byte in two threads.

    Args:
        target_port: the plain-HTTP port on 127.0.0.1.
        certificate, key: PEM files of the proxy's certificate.
    """

    def __init__(self, target_port: int, certificate: str, key: str):
        import ssl

        self.target_port = target_port
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(certificate, key)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import ssl

        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                secure = self._context.wrap_socket(client, server_side=True)
            except (ssl.SSLError, OSError):  # a client that does not trust the certificate hangs up
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((secure, upstream), (upstream, secure)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        self._stopped = True
        self._listener.close()


def chest_dicom(pixels: np.ndarray, *, patient_id: str, study_uid: str, accession: str = "",
                patient_name: str = PATIENT_NAME, sop_uid: str | None = None, body_part: str = "CHEST",
                modality: str = "CR", sop_class=ComputedRadiographyImageStorage, series_uid: str | None = None,
                instance_number: int = 1, study_date: str = "20261101") -> bytes:
    """Part 10 bytes of a chest radiograph: 8-bit MONOCHROME2, with patient, study and series set.

    Args:
        pixels: uint8 (rows, cols).
        patient_id, study_uid, accession, patient_name: the identifying fields.
        sop_uid, series_uid: None makes new ones.
        body_part, modality, sop_class: what the router's filter looks at.
        instance_number: InstanceNumber.
        study_date: StudyDate, YYYYMMDD.
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.AccessionNumber = patient_name, patient_id, accession
    for name, value in IDENTIFYING.items():
        setattr(ds, name, value)
    ds.PatientSex = "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid or generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID = study_date, "101500", "1"
    ds.SeriesNumber, ds.InstanceNumber = 1, instance_number
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = modality, body_part, "PA"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.astype(np.uint8).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
