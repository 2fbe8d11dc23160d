"""Options of the evaluate stage; light to import, so compiling the pipeline needs no TensorFlow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from annotated_types import Interval

from radflow.config_types import Fraction, NonNegative, Positive

ThresholdMethod = Literal["target_sensitivity", "youden", "fixed"]


@dataclass(frozen=True)
class EvaluateConfig:
    # Operating point, chosen on the validation split only (binary models).
    threshold_method: ThresholdMethod = "target_sensitivity"  # target_sensitivity | youden | fixed
    target_sensitivity: Fraction = 0.95  # target_sensitivity: share of validation positives the threshold must catch
    fixed_threshold: Fraction = 0.5  # fixed: the threshold itself
    # Absolute gates on the test split; None or 0 disables a gate (KFP parameters cannot carry None, so the
    # defaults use 0). With no enabled gate nothing is blessed.
    min_roc_auc: Fraction | None = 0.85  # test ROC AUC at or above this
    min_sensitivity: Fraction | None = 0.8  # test sensitivity (recall) at the operating point at or above this
    min_specificity: Fraction | None = 0.0  # test specificity at the operating point at or above this
    min_roc_auc_ci_lower: Fraction | None = 0.75  # lower bound of the test ROC AUC confidence interval at or above this
    # Comparison with the production model (the highest version under serving_root) on the same test images.
    max_regression: Fraction = 0.02  # a gated metric may fall at most this much below production's
    # Confidence intervals: a bootstrap over patients.
    bootstrap_resamples: Positive = 1000  # resamples; the interval's own noise shrinks with more
    ci_level: Annotated[float, Interval(gt=0, lt=1)] = 0.95  # coverage of the intervals
    calibration_bins: Positive = 10  # equal-width probability bins of the reliability curve and ECE
    # Model card and push.
    explain_images: NonNegative = 3  # test images shown with Grad-CAM, each for correct and for incorrect predictions
    canary_images: Positive = 8  # encoded test images kept, with their scores, as push's infra-validation requests
    batch_size: Positive = 64  # images per call to the serving signature
    seed: int = 0  # bootstrap resampling
