"""Options of the class_balance stage; light to import, so compiling the pipeline needs no TensorFlow."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClassBalanceConfig:
    strategy: str = "class_weights"  # class_weights: weight the loss by n_total / (n_classes * n_c); none: ignore
