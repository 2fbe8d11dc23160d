"""Options of the class_balance stage; light to import, so compiling the pipeline needs no TensorFlow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

CLASS_WEIGHTS, OVERSAMPLE, NONE = "class_weights", "oversample", "none"
Strategy = Literal["class_weights", "oversample", "none"]
STRATEGIES = get_args(Strategy)


@dataclass(frozen=True)
class ClassBalanceConfig:
    # class_weights: weight the loss by n_total / (n_classes * n_c); oversample: train draws every class
    # equally often in tf.data (sampling_weights); none: train on the data as it is.
    strategy: Strategy = CLASS_WEIGHTS  # the usual choice for moderate imbalance: keeps all data, no repeated images
