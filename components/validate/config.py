"""Options of the validate stage; light to import, so compiling the pipeline needs no TensorFlow."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ValidateConfig:
    schema_path: str = ""  # a curated schema (pbtxt) to validate against; empty = infer one from train
    fail_on_anomalies: bool = True  # raise DataValidationError (after writing the outputs) on any anomaly
    runner: str = "DirectRunner"  # or DataflowRunner, FlinkRunner, SparkRunner
    beam_args: tuple[str, ...] = ()  # extra Beam pipeline options, e.g. ("--project=p", "--region=r")
