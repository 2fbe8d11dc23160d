"""Studies per second through `radflow route`: PACS -> served model -> SR and Grad-CAM SC back into the PACS.

A real Orthanc (tests/orthanc.py; `make orthanc`) is loaded with one-image chest studies made from
pydicom-data's real CR chest radiograph (RG1: 1955 x 1841, 16-bit, uncompressed), each with its own
study, series and SOP UIDs. The model is the baseline CNN at 224 px (serving_benchmark.build_model:
one epoch on a synthetic set; weights do not change the cost), published as version 1 with its
model.keras, and served by `radflow serve` in its own process. The router runs in this process
until every study is answered, with and without the Grad-CAM Secondary Capture; the figure is
answered images over the wall time from the first poll to the last answer.

    .venv/bin/python benchmarks/route_benchmark.py --studies 40
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "tests")]

log = logging.getLogger("route_benchmark")


def studies(n: int) -> list[bytes]:
    """n copies of RG1 (a real CR chest radiograph), each its own patient, study, series and instance."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    source = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    out = []
    for i in range(n):
        source.PatientID = f"BENCH-{i}"
        source.StudyInstanceUID, source.SeriesInstanceUID = generate_uid(), generate_uid()
        source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        buf = io.BytesIO()
        source.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=40, help="studies per run (default 40)")
    parser.add_argument("--workers", type=int, default=2, help="router workers (default 2, one per core)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("radflow.pacs.router").setLevel(logging.WARNING)
    from orthanc import Orthanc, skip_reason
    from serving_benchmark import Server, build_model

    from radflow.components.push.layout import LINEAGE_DIR
    from radflow.components.train.train import KERAS_MODEL_FILE
    from radflow.pacs.connection import PacsConfig
    from radflow.pacs.router import RouteConfig, Router

    if skip_reason():
        print(skip_reason(), file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as work:
        saved_model = build_model(work, "baseline_cnn")
        base = os.path.join(work, "serving", "radflow")
        shutil.copytree(saved_model, os.path.join(base, "1"))
        os.makedirs(os.path.join(base, "1", LINEAGE_DIR))
        shutil.copy(os.path.join(os.path.dirname(saved_model), KERAS_MODEL_FILE),
                    os.path.join(base, "1", LINEAGE_DIR, KERAS_MODEL_FILE))
        with Server(base, None) as server:
            for label, grad_cam in (("SR + Grad-CAM SC", True), ("SR only", False)):
                folder = os.path.join(work, f"orthanc-{grad_cam}")
                os.makedirs(folder)
                pacs = Orthanc(folder).start()
                try:
                    for data in studies(args.studies):
                        pacs.upload(data)
                    config = RouteConfig(
                        pacs=PacsConfig(pacs.dicomweb, credentials_file=pacs.credentials_file()),
                        serving=f"127.0.0.1:{server.grpc_port}", model_base_path=base if grad_cam else "",
                        state_dir=os.path.join(folder, "route"), since="20000101", lookback_days=0,
                        workers=args.workers, poll_s=0.5)
                    router = Router(config)
                    load = os.getloadavg()
                    started = time.monotonic()
                    router.run(once=True)
                    wall = time.monotonic() - started
                    done = router.ledger.counts()["done"]
                    assert done == args.studies, router.ledger.counts()
                    print(f"{label}: {done} studies in {wall:.1f} s = {done / wall:.2f} studies/s "
                          f"({args.workers} workers; load average before {load[0]:.2f}, after "
                          f"{os.getloadavg()[0]:.2f}; {os.cpu_count()} cores)", flush=True)
                finally:
                    pacs.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
