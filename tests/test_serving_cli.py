"""`radflow serve` as a subprocess and `radflow predict` against it: gRPC, REST, PNG and DICOM, SIGTERM."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import requests
from PIL import Image

from radflow.cli import main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dicom_bytes(pixels: np.ndarray) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns = "CR", *pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    import shutil

    root = tmp_path_factory.mktemp("cli_serve")
    shutil.copytree(os.path.join(model_dir, "saved_model"), root / "radflow" / "1")
    grpc_port, rest_port = free_port(), free_port()
    log_path = root / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "radflow.cli", "serve", "--model_name", "radflow",
             "--model_base_path", str(root / "radflow"), "--port", str(grpc_port), "--rest_api_port", str(rest_port),
             "--enable_batching=true", "--tensorflow_intra_op_parallelism", "1",
             "--tensorflow_inter_op_parallelism", "2"],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()
            try:
                if requests.get(f"http://127.0.0.1:{rest_port}/readyz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail(f"radflow serve never became ready:\n{log_path.read_text()}")
        yield proc, grpc_port, rest_port, root, log_path
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_predict_png_and_dicom_over_grpc_and_rest_then_graceful_sigterm(server, capsys):
    proc, grpc_port, rest_port, root, log_path = server
    rng = np.random.default_rng(0)
    png_path, dcm_path = root / "chest.png", root / "chest.dcm"
    Image.fromarray(rng.integers(0, 256, (40, 52), dtype=np.uint8)).save(png_path)
    dcm_path.write_bytes(dicom_bytes(rng.integers(0, 4096, (40, 52))))

    assert main(["predict", str(png_path), str(dcm_path), "--server", f"127.0.0.1:{grpc_port}"]) == 0
    grpc_lines = capsys.readouterr().out.strip().splitlines()
    assert main(["predict", str(png_path), str(dcm_path), "--server", f"127.0.0.1:{rest_port}", "--rest",
                 "--version", "1"]) == 0
    rest_lines = capsys.readouterr().out.strip().splitlines()
    assert len(grpc_lines) == len(rest_lines) == 2
    for line, path in zip(grpc_lines, (png_path, dcm_path), strict=True):
        assert line.startswith(f"{path}: ") and " at threshold 0.500 (" in line
        assert "NORMAL=" in line and "PNEUMONIA=" in line and line.endswith("[version 1]")
    # Same scores and the same answering version over both protocols (REST names it in X-Model-Version).
    assert grpc_lines == rest_lines

    assert main(["predict", str(png_path), "--server", f"127.0.0.1:{grpc_port}", "--version", "5"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert "stopped" in log_path.read_text()
    # The thread flags reached TensorFlow before the model loaded.
    assert "TensorFlow threads: intra-op 1, inter-op 2" in log_path.read_text()
