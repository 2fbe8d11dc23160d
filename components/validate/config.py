"""Options of the validate stage; light to import, so compiling the pipeline needs no TensorFlow."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal, get_args

import radflow.pipeline
from radflow.config_types import Fraction, NonNegative

# Curated schemas live in the repository and are installed with radflow.pipeline.
CURATED_DIR = os.path.join(os.path.dirname(radflow.pipeline.__file__), "schema")
SHIPPED_SCHEMAS = ("chest_xray",)  # curated schemas radflow ships; `radflow schema freeze` never replaces them

RESULT_FILE = "validation.json"  # written last by validate: a schema beside it belongs to a finished run
# What to do when a curated schema was frozen for other labels; `radflow run` repeats it as its last line.
INFER_SCHEMA_ADVICE = ("rerun with --schema infer to infer a schema from train (in a config: validate.schema_name: "
                       "''), then keep it with `radflow schema freeze RUN --name NAME`; or name a schema frozen "
                       "for this dataset")

BLOCK, WARN = "block", "warn"
Action = Literal["block", "warn"]
ACTIONS = get_args(Action)


@dataclass(frozen=True)
class DriftThresholds:
    """How far two statistics may differ before a comparison counts as drift.

    Args:
        max_js_divergence: numeric features: Jensen-Shannon divergence (base 2, so 0..1) of their histograms.
        max_linf_distance: categorical features (label_name, source_format): the largest change in any value's share.
    """

    max_js_divergence: Fraction = 0.1  # a clearly visible histogram change; same-source splits of 100+ images are below
    max_linf_distance: Fraction = 0.1  # 0.1 = a class's share moved by 10 points, e.g. 25% NORMAL -> 35%


@dataclass(frozen=True)
class ValidateConfig:
    schema_name: str = "chest_xray"  # curated schema pipeline/schema/<name>.pbtxt; when it is absent, infer from train
    schema_path: str = ""  # an explicit schema (.pbtxt path or gs:// URI) to validate against; overrides schema_name
    fail_on_anomalies: bool = True  # raise DataValidationError (after writing the outputs) on any anomaly
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)  # drift and skew limits
    drift_action: Action = BLOCK  # this run's train vs the last blessed run's train over a threshold: block or warn
    skew_action: Action = WARN  # train vs val/test over a threshold: block or warn (Kaggle's test set has its own mix)
    # A comparison with fewer examples on a side is reported, never acted on: small histograms differ by
    # chance (two same-source samples of 50 average JS 0.10, of 100 0.05, of 500 0.02).
    min_examples: NonNegative = 100
    # Shortcuts: a per-image metadata feature (format, bit depth, size, DICOM manufacturer/view, intensity)
    # that alone ranks a class at this one-feature ROC AUC or above in train+val is reported by name.
    shortcut_auc: Fraction = 0.8
    shortcut_action: Action = WARN  # warn (the default: a shortcut can be benign) or block
    runner: str = "DirectRunner"  # or DataflowRunner, FlinkRunner, SparkRunner
    beam_args: tuple[str, ...] = ()  # extra Beam pipeline options, e.g. ("--project=p", "--region=r")
