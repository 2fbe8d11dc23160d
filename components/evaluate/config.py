"""Options of the evaluate stage; light to import, so compiling the pipeline needs no TensorFlow."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvaluateConfig:
    min_roc_auc: float | None = 0.85  # bless only at or above this test ROC AUC; None disables the gate
    threshold: float = 0.5  # decision threshold on the positive-class score (binary models)
    batch_size: int = 64  # images per call to the serving signature
