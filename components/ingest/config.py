"""Options of the ingest stage; light to import, so compiling the pipeline needs no TensorFlow."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IngestConfig:
    image_size: int = 224  # height and width of the stored, standardised images
    channels: int = 1  # 1 stores grayscale; colour inputs are converted
    val_fraction: float = 0.1  # share of non-test patients held out for validation
    test_fraction: float = 0.15  # share of patients held out for test when the layout has no test/ folder
    seed: int = 0  # split salt: a patient's split depends only on its id and this seed
    labels: tuple[str, ...] = ()  # class names in label order; empty = sorted class folder names
    max_quarantined_fraction: float = 0.1  # fail the run when more inputs than this are unreadable
    # Key of the patient-id hash in the examples. Set it per deployment (e.g. from a secret) and
    # keep it away from the data: without it, a patient_key cannot be linked back to a patient.
    patient_key_secret: str = ""
    runner: str = "DirectRunner"  # or DataflowRunner, FlinkRunner, SparkRunner
    beam_args: tuple[str, ...] = ()  # extra Beam pipeline options, e.g. ("--project=p", "--region=r")
