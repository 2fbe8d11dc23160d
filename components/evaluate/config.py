"""Options of the evaluate stage; light to import, so compiling the pipeline needs no TensorFlow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from annotated_types import Interval

from radflow.config_types import Fraction, NonNegative, Positive

ThresholdMethod = Literal["target_sensitivity", "youden", "fixed"]

ThresholdSource = Literal["val", "oof"]
THRESHOLD_SOURCES = ("val", "oof")


@dataclass(frozen=True)
class EvaluateConfig:
    # Operating point, never chosen on test (binary models; multi-class models decide by the highest score).
    threshold_method: ThresholdMethod = "target_sensitivity"  # target_sensitivity | youden | fixed
    target_sensitivity: Fraction = 0.95  # target_sensitivity: the share of positives the threshold must catch
    fixed_threshold: Fraction = 0.5  # fixed: the threshold itself
    # Where the threshold is chosen: "val", or "oof": the out-of-fold predictions of train's cv_folds
    # models over train+val, more data than val alone (needs train.cv_folds >= 2).
    threshold_source: ThresholdSource = "val"
    # Absolute gates on the test split; 0 disables a gate, and with none enabled nothing is blessed.
    # The defaults suit a screening aid that puts studies in front of a radiologist: it must find most
    # disease (sensitivity) without flooding the worklist with normal studies (specificity), and both
    # must hold at the lower end of their patient-bootstrap 95% CI too, so a small or lucky test split
    # cannot pass on its point estimate. For more than two classes, sensitivity and specificity are
    # each class's own (one vs rest), every class gated: the weakest class decides, never the average.
    min_roc_auc: Fraction = 0.85  # test ROC AUC (macro one-vs-rest for more than two classes)
    min_roc_auc_ci_lower: Fraction = 0.75  # lower end of its CI
    min_sensitivity: Fraction = 0.85  # sensitivity at the operating point: at most 15% of disease missed
    min_sensitivity_ci_lower: Fraction = 0.70  # lower end of its CI
    min_specificity: Fraction = 0.70  # specificity at the operating point: at most 30% of normals flagged
    min_specificity_ci_lower: Fraction = 0.50  # lower end of its CI
    # Comparison with the production model (the live version under serving_root) on the same test images:
    # for every gated metric, the paired patient-bootstrap CI of candidate minus production must stay above
    # -max_regression (a non-inferiority margin; 0.05 is a common one for sensitivity and specificity).
    max_regression: Fraction = 0.05
    # Confidence intervals: a bootstrap over patients.
    bootstrap_resamples: Positive = 1000  # resamples; the interval's own noise shrinks with more
    ci_level: Annotated[float, Interval(gt=0, lt=1)] = 0.95  # coverage of the intervals
    calibration_bins: Positive = 10  # equal-width probability bins of the reliability curve and ECE
    # Model card and push.
    explain_images: NonNegative = 3  # test images shown with Grad-CAM, each for correct and for incorrect predictions
    error_analysis_images: NonNegative = 8  # the test images the model got most wrong, false negatives first
    canary_images: Positive = 8  # encoded test images kept, with their scores, as push's infra-validation requests
    batch_size: Positive = 64  # images per call to the serving signature
    seed: int = 0  # bootstrap resampling

    def __post_init__(self):
        if self.threshold_source not in THRESHOLD_SOURCES:
            raise ValueError(f"threshold_source must be one of {THRESHOLD_SOURCES}, got {self.threshold_source!r}")
        for name in ("target_sensitivity", "min_roc_auc", "min_roc_auc_ci_lower", "min_sensitivity",
                     "min_sensitivity_ci_lower", "min_specificity", "min_specificity_ci_lower", "ci_level"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
